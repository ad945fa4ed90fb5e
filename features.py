"""What the network has learnt, as pictures: conv1 filters and conv activations, written to
TensorBoard and as PNGs. Activations are captured with forward hooks, so the models hold no
visualisation state."""
import math
from pathlib import Path

import torch
from torch import nn


class FeatureRecorder:
    """Forward hooks that keep the first output of every conv layer of one stream."""

    def __init__(self, stream):
        self.activations = {}
        convs = [m for m in stream.features if isinstance(m, nn.Conv2d)]
        self.handles = [conv.register_forward_hook(self._hook(f"conv{i + 1}"))
                        for i, conv in enumerate(convs)]

    def _hook(self, name):
        def hook(module, inputs, output):
            self.activations.setdefault(name, output.detach().float().cpu())
        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()

    def save(self, model, writer, folder, step):
        """Stop recording and write what was recorded (``save_feature_maps``); returns None."""
        self.remove()
        save_feature_maps(model, self.activations, writer, folder, step)


def image_grid(tiles, columns):
    """float [N, H, W] -> [1, rows * (H+1), columns * (W+1)] tile image, each tile min-max scaled."""
    n, h, w = tiles.shape
    lo = tiles.reshape(n, -1).min(1).values.view(n, 1, 1)
    hi = tiles.reshape(n, -1).max(1).values.view(n, 1, 1)
    tiles = (tiles - lo) / (hi - lo).clamp_min(1e-8)
    rows = math.ceil(n / columns)
    grid = torch.ones(rows * (h + 1), columns * (w + 1))
    for k in range(n):
        r, c = divmod(k, columns)
        grid[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = tiles[k]
    return grid.unsqueeze(0)


def save_feature_maps(model, activations, writer, folder, step):
    """Write the first stream's conv1 filters, and ``activations`` ({name: [B, C, H, W]},
    e.g. FeatureRecorder's; first 4 crops, 32 channels) as TensorBoard images and PNGs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder.mkdir(parents=True, exist_ok=True)
    filters = model.stream(0).conv1.weight.detach().float().cpu()  # [96, 3, 7, 7]
    lo, hi = filters.min(), filters.max()
    rgb = ((filters - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1)
    fig, axes = plt.subplots(8, 12, figsize=(6, 4))
    for ax, f in zip(axes.flat, rgb):
        ax.imshow(f.numpy(), interpolation="nearest")
        ax.axis("off")
    fig.savefig(folder / "conv1_filters.png", dpi=120)
    plt.close(fig)
    writer.add_images("features/conv1_filters", rgb.permute(0, 3, 1, 2), step)
    for name, act in activations.items():
        for crop in range(min(4, act.shape[0])):
            grid = image_grid(act[crop, :32], columns=8)
            writer.add_image(f"features/{name}_crop{crop}", grid, step)
            plt.imsave(folder / f"{name}_crop{crop}.png", grid[0].numpy(), cmap="viridis")


def log_validation(writer, model, results, maps, folder, step):
    """A validation in TensorBoard: ``results`` ({name: value}) as val/ scalars, the first 4
    dense maps (float [G, G]) as images, and the conv1 filters (also as a PNG in ``folder``)."""
    for key, value in results.items():
        writer.add_scalar(f"val/{key}", value, step)
    shown = torch.stack([m / max(float(m.max()), 1e-8) for m in maps[:4]]).unsqueeze(1)
    writer.add_images("val/predicted_maps", shown, step)
    save_feature_maps(model, {}, writer, folder, step)


# the settings that change a run's result (no paths, devices or worker counts)
HPARAMS = ("model", "optimizer", "learning_rate", "batch_size", "epochs", "weight_decay",
           "lr_schedule", "max_norm", "dropout", "batch_norm", "fixations_per_image",
           "non_fixations_per_image", "uniform_locations_per_image", "teacher_blur", "seed",
           "fold")


def log_hparams(writer, args, best_val, best_epoch):
    """The run's row of TensorBoard's HPARAMS table: the HPARAMS of ``args`` (booleans as
    true / false, no fold as 'none'), the data set's name and the number of teachers, against
    the validation that best.pth kept (``best_val``, from epoch ``best_epoch``) as best/val_*
    and best/epoch, so that runs compare by what they are judged on."""
    shown = lambda v: str(v).lower() if isinstance(v, bool) else "none" if v is None else v
    hparams = {name: shown(getattr(args, name)) for name in HPARAMS}
    hparams |= {"data": Path(args.data_dir).name, "teachers": len(args.teacher)}
    writer.add_hparams(hparams, {**{f"best/val_{k}": v for k, v in best_val.items()},
                                 "best/epoch": best_epoch}, run_name=".")
