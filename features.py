"""What a run shows in TensorBoard: each scale's input crops beside their conv activations, the
conv1 filters, validation images beside their fixation density and predicted map, and the
hyper-parameters against the metrics best.pth kept. Activations are captured with forward
hooks, so the models hold no visualisation state; pictures are also written as PNGs."""
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from dataset import SCALES, printable
from files import failure_cause, write_atomically


SAMPLES_PER_LABEL = 2  # feature pictures: this many fixation and non-fixation samples
VAL_PICTURES = 3  # validation pictures: the first this many val images, by name


def record_activations(stream, crops):
    """Each convolution's output in ``stream`` for ``crops`` ([B, 3, 42, 42], normalised),
    captured with forward hooks (the model keeps no such state): {'conv1': [B, C, H, W], ...}."""
    activations, handles = {}, []
    convs = [m for m in stream.features if isinstance(m, nn.Conv2d)]
    for k, conv in enumerate(convs, 1):
        handles.append(conv.register_forward_hook(
            lambda module, inputs, output, name=f"conv{k}":
            activations.setdefault(name, output.detach().float().cpu())))
    try:
        with torch.no_grad():
            stream.features(crops)
    finally:
        for handle in handles:
            handle.remove()
    return activations


def image_grid(tiles, columns):
    """float [N, H, W] -> [rows * (H+1), columns * (W+1)] in [0, 1], each tile min-max scaled;
    a constant tile is mid-grey (a black one would look like a bug)."""
    n, h, w = tiles.shape
    lo = tiles.reshape(n, -1).min(1).values.view(n, 1, 1)
    span = tiles.reshape(n, -1).max(1).values.view(n, 1, 1) - lo
    tiles = torch.where(span > 1e-8, (tiles - lo) / span.clamp_min(1e-8), 0.5)
    rows = math.ceil(n / columns)
    grid = torch.ones(rows * (h + 1), columns * (w + 1))
    for k in range(n):
        r, c = divmod(k, columns)
        grid[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = tiles[k]
    return grid


def pick_samples(labels, per_label=SAMPLES_PER_LABEL):
    """Indices of the first ``per_label`` fixation (label > 0.5) and non-fixation samples of a
    batch's labels [B], fixations first."""
    fixated = labels > 0.5
    return (fixated.nonzero()[:per_label, 0].tolist()
            + (~fixated).nonzero()[:per_label, 0].tolist())


def save_feature_maps(model, crops, labels, writer, folder, step):
    """What each scale's stream makes of a batch ([B, 3 scales, 3, 42, 42] crops in [0, 1],
    labels [B]): for a few samples of both labels (``pick_samples``), the input crop beside the
    first 16 channels of conv1, conv2 and conv3, as TensorBoard figures tagged
    features/scale<S>/sample<j>_<label> and PNGs of that name in ``folder``; and the conv1
    filters of every stream."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    picks = pick_samples(labels)
    chosen = crops[picks].float()
    normalised = model.normalise(chosen)
    for s, size in enumerate(SCALES):
        activations = record_activations(model.stream(s), normalised[:, s])
        for j, i in enumerate(picks):
            label = "fixation" if labels[i] > 0.5 else "non_fixation"
            fig, axes = plt.subplots(1, 4, figsize=(10, 2.9), dpi=80)
            # a fixed layout: tight_layout would draw the figure once more to measure it
            fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.8, wspace=0.08)
            axes[0].imshow(chosen[j, s].permute(1, 2, 0).cpu().clamp(0, 1).numpy())
            axes[0].set_title(f"input crop, {size}x{size} copy")
            for ax, (name, act) in zip(axes[1:], activations.items()):
                ax.imshow(image_grid(act[j, :16], columns=4).numpy(), cmap="viridis")
                ax.set_title(f"{name}: 16 of {act.shape[1]} channels")
            for ax in axes:
                ax.axis("off")
            fig.suptitle(f"scale {size}, sample {j}: {label.replace('_', '-')} location "
                         f"(label {float(labels[i]):.2f})")
            fig.canvas.draw()  # once, for both the PNG and TensorBoard
            pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
            plt.close(fig)
            write_atomically(folder / f"scale{size}_sample{j}_{label}.png",
                             Image.fromarray(pixels).save)
            writer.add_image(f"features/scale{size}/sample{j}_{label}", pixels, step,
                             dataformats="HWC")
    model.train(was_training)
    save_filters(model, writer, folder, step)


def save_filters(model, writer, folder, step):
    """The conv1 filters of each stream (one for MrCNNs) as a TensorBoard image and a PNG."""
    for s, size in enumerate(SCALES[:1] if model.shared_stream else SCALES):
        filters = model.stream(s).conv1.weight.detach().float().cpu()  # [96, 3, 7, 7]
        lo, hi = filters.min(), filters.max()
        tiles = torch.ones(3, 8 * 8, 12 * 8)  # 8 rows of 12 filters, 1-pixel gaps
        for k, f in enumerate((filters - lo) / (hi - lo).clamp_min(1e-12)):
            r, c = divmod(k, 12)
            tiles[:, r * 8: r * 8 + 7, c * 8: c * 8 + 7] = f
        name = "conv1_filters" if model.shared_stream else f"conv1_filters_scale{size}"
        writer.add_image(f"features/{name}", tiles, step)
        picture = Image.fromarray((tiles.permute(1, 2, 0).numpy() * 255).astype("uint8")).resize(
            (12 * 8 * 4, 8 * 8 * 4), Image.NEAREST)
        write_atomically(folder / f"{name}.png", picture.save)


def side_by_side(image, density, saliency):
    """uint8 [3, S, S] image, [S, S] fixation density and a [G, G] map (any range) -> float
    [3, S, 3 S + 8] in [0, 1]: the three side by side at the image's size, 4-pixel white gaps."""
    size = image.shape[-1]
    grey = lambda x: (x / max(float(x.max()), 1e-8)).expand(3, -1, -1)
    upsampled = torch.nn.functional.interpolate(saliency.float().cpu()[None, None],
                                                size=(size, size), mode="bilinear")[0]
    gap = torch.ones(3, size, 4)
    return torch.cat([image.float() / 255, gap, grey(density.float()[None]), gap,
                      grey(upsampled - upsampled.min())], dim=2)


def ensure_log_dir(log_dir):
    """Create ``log_dir`` (TensorBoard events go to <log_dir>/<run>) if needed; SystemExit
    with one line where it cannot be, before a run folder exists."""
    try:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"error: cannot write TensorBoard events to {log_dir} "
                         f"({failure_cause(error, Path(log_dir).parent)}). Pass a writable "
                         f"--log-dir.")


def log_validation(writer, model, results, maps, val_set, folder, step):
    """A validation in TensorBoard: ``results`` ({name: value}) as val/ scalars; for the first
    VAL_PICTURES val images by name, image | fixation density | predicted map side by side,
    tagged val/<image name> (the slider compares epochs); the conv1 filters."""
    for key, value in results.items():
        writer.add_scalar(f"val/{key}", value, step)
    for i in sorted(range(len(val_set)), key=lambda i: val_set.names[i])[:VAL_PICTURES]:
        writer.add_image(f"val/{printable(val_set.names[i])}", side_by_side(
            val_set.scales[0][i], val_set.maps[i], maps[i]), step)
    save_filters(model, writer, folder, step)


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
