"""Train Mr-CNN / Mr-CNNs (Liu et al., CVPR 2015) to predict eye fixations.

    python main.py                                   # synthetic set if data/MIT1003 is absent
    python main.py --data-dir ../shared/data/MIT1003 --model MrCNNs
    python main.py --resume checkpoint/<run>/epoch_5.pth

Reads the data (MIT1003 layout, the coursework's .pth.tar files, or the built-in synthetic
set), trains with per-epoch freshly drawn fixation / non-fixation locations, validates with
AUC-Judd and shuffled AUC of dense maps, logs to TensorBoard and writes checkpoints under
checkpoint/<run>/.
"""
import argparse
import copy
import hashlib
import math
import os
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import dataset
import metrics
from checkpoints import (CheckpointError, load_checkpoint, model_from_checkpoint,
                         save_checkpoint)
from inference import autocast_context, blur_map, predict_maps, sample_maps
from MrCNN import build_model

DEFAULT_DATA_DIR = "data/MIT1003"
SYNTHETIC_SIZES = {"train": 64, "val": 16}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TEACHER_CACHE_VERSION = 1  # bump when predict_maps changes what it returns


# Flags a resumed run does not take from its checkpoint: how it was started, and this machine.
NOT_RESUMED = ("resume", "init_from", "worker_count")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train Mr-CNN / Mr-CNNs on MIT1003.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="MrCNN", help="MrCNN (three streams) or MrCNNs "
                        "(one shared stream)")
    parser.add_argument("--data-dir", default=None, help=f"MIT1003 folder (ALLSTIMULI/, "
                        f"ALLFIXATIONMAPS/) or a folder of the coursework's .pth.tar files; "
                        f"when not given, {DEFAULT_DATA_DIR} if it exists, else a built-in "
                        f"synthetic set")
    parser.add_argument("--learning-rate", type=float, default=0.001, help="learning rate")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size")
    parser.add_argument("--epochs", type=int, default=20, help="epochs to train")
    parser.add_argument("--val-frequency", type=int, default=1, help="validate every N epochs")
    parser.add_argument("--checkpoint-frequency", type=int, default=5,
                        help="write epoch_N.pth every N epochs")
    parser.add_argument("-j", "--worker-count", type=int, default=os.cpu_count(),
                        help="processes for decoding images and torch threads")
    parser.add_argument("--log-dir", default="logs", help="TensorBoard log folder")
    parser.add_argument("--checkpoint-dir", default="checkpoint", help="checkpoint folder")
    parser.add_argument("--cache-dir", default=".cache", help="resized-image cache folder")
    parser.add_argument("--run-name", default=None, help="run folder name (default: model, "
                        "optimiser, lr, batch size and time)")
    parser.add_argument("--resume", default=None, metavar="PATH",
                        help="continue the run saved in this checkpoint")
    parser.add_argument("--init-from", default=None, metavar="PATH",
                        help="start a new run from this checkpoint's weights and input "
                             "normalisation (fine-tuning: fresh optimiser, epoch 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: cuda if available")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="autocast precision; auto: bf16 where the hardware has it")
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout probability")
    parser.add_argument("--batch-norm", action="store_true", help="BatchNorm after each conv "
                        "(not in the paper)")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "sgd"),
                        help="adam, or sgd with the paper's momentum schedule")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum at epoch 1")
    parser.add_argument("--final-momentum", type=float, default=0.99,
                        help="SGD momentum at the last epoch (linear schedule)")
    parser.add_argument("--weight-decay", type=float, default=2e-4, help="weight decay")
    parser.add_argument("--ema-decay", type=float, default=0.0,
                        help="validate and save an exponential moving average of the weights "
                             "with this decay per step (e.g. 0.998); 0: off")
    parser.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"),
                        help="learning-rate schedule over the epochs")
    parser.add_argument("--max-norm", type=float, default=0.0, help="clip the L2 norm of "
                        "each conv1 filter to this after every step (paper: 0.1; 0: off)")
    parser.add_argument("--fixations-per-image", type=int, default=10,
                        help="fixation locations drawn per image and epoch")
    parser.add_argument("--non-fixations-per-image", type=int, default=20,
                        help="non-fixation locations drawn per image and epoch")
    parser.add_argument("--negatives", default="uniform", choices=("uniform", "centre-matched"),
                        help="where non-fixation locations are drawn: uniformly, or as often "
                             "as fixations fall there across the training images")
    parser.add_argument("--positives", default="map-peak", choices=("map-peak", "fixation-points"),
                        help="where fixation locations are drawn: where the fixation map is "
                             "above 0.9 of its maximum, or among the recorded human fixations")
    parser.add_argument("--fixation-threshold", type=float, default=dataset.FIXATION_THRESHOLD,
                        help="with --positives map-peak: fixation locations are where the map "
                             "exceeds this fraction of its maximum")
    parser.add_argument("--labels", default="binary", choices=("binary", "map"),
                        help="training targets: 1 for fixation and 0 for non-fixation "
                             "locations (the paper), or the fixation map's value there in [0, 1]")
    parser.add_argument("--uniform-locations-per-image", type=int, default=0,
                        help="with --labels map: locations drawn uniformly over the image per "
                             "image and epoch, on top of the fixation and non-fixation ones")
    parser.add_argument("--teacher", action="append", default=[], metavar="PATH",
                        help="distil: train towards the mean fixation probability that these "
                             "checkpoints (repeat the flag for an ensemble) give each training "
                             "location on their dense maps")
    parser.add_argument("--teacher-weight", type=float, default=1.0,
                        help="with --teacher: target = w * teacher + (1 - w) * label")
    parser.add_argument("--teacher-blur", type=float, default=0.0,
                        help="with --teacher: Gaussian blur of the teachers' maps, sigma as a "
                             "fraction of the image size (0: none)")
    parser.add_argument("--location-jitter", type=float, default=0.0, metavar="S",
                        help="cut each training crop at a location moved by a Gaussian of std S "
                        "(fraction of the image size) from the one whose label it learns")
    parser.add_argument("--freeze-locations", action="store_true",
                        help="draw the training locations once instead of every epoch")
    parser.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    parser.add_argument("--colour-jitter", type=float, default=0.0, metavar="S",
                        help="random saturation, contrast and brightness factors in "
                             "[1 - S, 1 + S] per training sample; 0: off")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model for training; falls back to eager mode "
                             "if compiling fails (slower than eager on a 2-core CPU, see README)")
    parser.add_argument("--inference", default="fcn", choices=("fcn", "crops"),
                        help="dense-inference mode for validation")
    parser.add_argument("--val-images", type=int, default=0,
                        help="validate on the first N val images only (0: all)")
    parser.add_argument("--log-frequency", type=int, default=20,
                        help="read the loss from the device every N steps")
    args = parser.parse_args(argv)
    if args.resume and Path(args.resume).is_file():
        # The resumed run's own flags become the defaults: only what changes (--epochs) is given.
        try:
            saved = load_checkpoint(args.resume).get("args", {})
        except CheckpointError as error:
            raise SystemExit(f"error: {error}")
        parser.set_defaults(**{key: value for key, value in saved.items()
                               if key in vars(args) and key not in NOT_RESUMED})
        args = parser.parse_args(argv)
    return args


def check_args(args):
    """Reject impossible settings with one clear message."""
    problems = []
    if args.model not in ("MrCNN", "MrCNNs"):
        problems.append(f"unknown --model {args.model!r}: choose MrCNN or MrCNNs")
    if args.epochs < 1:
        problems.append(f"--epochs must be at least 1 (got {args.epochs})")
    if not args.learning_rate > 0:
        problems.append(f"--learning-rate must be positive (got {args.learning_rate})")
    if args.batch_size < 1:
        problems.append(f"--batch-size must be at least 1 (got {args.batch_size})")
    if not 0 <= args.dropout < 1:
        problems.append(f"--dropout must be in [0, 1) (got {args.dropout})")
    if not 0 <= args.colour_jitter < 1:
        problems.append(f"--colour-jitter must be in [0, 1) (got {args.colour_jitter})")
    if not 0.1 <= args.fixation_threshold < 1:
        problems.append(f"--fixation-threshold must be in [0.1, 1) (above the non-fixation "
                        f"threshold; got {args.fixation_threshold})")
    if args.uniform_locations_per_image < 0:
        problems.append(f"--uniform-locations-per-image must be at least 0 "
                        f"(got {args.uniform_locations_per_image})")
    elif args.uniform_locations_per_image and args.labels != "map":
        problems.append("--uniform-locations-per-image needs --labels map: a uniformly drawn "
                        "location is neither a fixation nor a non-fixation")
    if not 0 <= args.teacher_weight <= 1:
        problems.append(f"--teacher-weight must be in [0, 1] (got {args.teacher_weight})")
    if not 0 <= args.teacher_blur < 0.5:
        problems.append(f"--teacher-blur must be in [0, 0.5) (got {args.teacher_blur})")
    if not 0 <= args.location_jitter < 0.5:
        problems.append(f"--location-jitter must be in [0, 0.5) (got {args.location_jitter})")
    if not 0 <= args.ema_decay < 1:
        problems.append(f"--ema-decay must be in [0, 1) (got {args.ema_decay})")
    if args.resume and args.init_from:
        problems.append("--resume and --init-from exclude each other: --resume continues a "
                        "run, --init-from starts a new one from its weights")
    for flag in ("val_frequency", "checkpoint_frequency", "log_frequency"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag.replace('_', '-')} must be at least 1")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


def pick_device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available; use --device cpu")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                        (name if name != "auto" else "cpu"))


def pick_precision(name, device):
    """'auto' -> bf16 on a GPU or CPU with native bf16 support, else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.backends.mkldnn.is_available() and \
        torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def load_data(args):
    """-> (train SaliencySet, val SaliencySet, description). Exits with a message on bad input."""
    data_dir = args.data_dir
    if data_dir is None and not Path(DEFAULT_DATA_DIR, dataset.STIMULI).is_dir():
        print(f"note: no --data-dir given and {DEFAULT_DATA_DIR} holds no MIT1003, so this run "
              f"trains on a built-in SYNTHETIC saliency set ({SYNTHETIC_SIZES['train']} train / "
              f"{SYNTHETIC_SIZES['val']} val scenes). For the real thing, download MIT1003 "
              f"(see README) into {DEFAULT_DATA_DIR} or pass --data-dir.", file=sys.stderr)
        train = dataset.load_synthetic(SYNTHETIC_SIZES["train"], seed=args.seed)
        val = dataset.load_synthetic(SYNTHETIC_SIZES["val"], seed=args.seed + 10_000)
        return train, val, "synthetic"
    data_dir = data_dir or DEFAULT_DATA_DIR
    if dataset.is_coursework_dir(data_dir):
        return (dataset.load_coursework(data_dir, "train"),
                dataset.load_coursework(data_dir, "val"), f"coursework files in {data_dir}")
    train = dataset.load_mit(data_dir, "train", args.cache_dir, args.worker_count,
                             ground_truth=args.positives == "fixation-points")
    val = dataset.load_mit(data_dir, "val", args.cache_dir, args.worker_count)
    return train, val, f"MIT1003 at {data_dir}"


class FeatureRecorder:
    """Forward hooks that keep the output of every conv layer of one stream (first call only)."""

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


def save_feature_maps(model, recorder, writer, folder, step):
    """Write conv1 filters and the recorded activations (first 4 crops) as TB images and PNGs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    folder.mkdir(parents=True, exist_ok=True)
    filters = model.stream(0).conv1.weight.detach().float().cpu()  # [96, 3, 7, 7]
    lo, hi = filters.min(), filters.max()
    rgb = ((filters - lo) / (hi - lo)).permute(0, 2, 3, 1)
    fig, axes = plt.subplots(8, 12, figsize=(6, 4))
    for ax, f in zip(axes.flat, rgb):
        ax.imshow(f.numpy(), interpolation="nearest")
        ax.axis("off")
    fig.savefig(folder / "conv1_filters.png", dpi=120)
    plt.close(fig)
    writer.add_images("features/conv1_filters", rgb.permute(0, 3, 1, 2), step)
    for name, act in recorder.activations.items():
        for crop in range(min(4, act.shape[0])):
            channels = act[crop, :32]
            grid = image_grid(channels, columns=8)
            writer.add_image(f"features/{name}_crop{crop}", grid, step)
            plt.imsave(folder / f"{name}_crop{crop}.png", grid[0].numpy(), cmap="viridis")


def capture_rng():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
            "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def momentum_at(args, epoch):
    """Paper's SGD momentum: linear from --momentum (epoch 0) to --final-momentum (last)."""
    if args.epochs <= 1:
        return args.momentum
    return args.momentum + (args.final_momentum - args.momentum) * epoch / (args.epochs - 1)


def make_optimizer(args, model):
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate,
                                    momentum=args.momentum, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate,
                                     weight_decay=args.weight_decay)
    if args.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    return optimizer, scheduler


def clip_conv1(model, max_norm):
    """Scale every conv1 filter whose L2 norm exceeds ``max_norm`` back onto that norm."""
    with torch.no_grad():
        for stream in model.streams:
            w = stream.conv1.weight
            norms = w.flatten(1).norm(dim=1).clamp_min(1e-12)
            w.mul_((max_norm / norms).clamp(max=1.0).view(-1, 1, 1, 1))


def train_step(model, optimizer, loss_fn, crops, target, precision, max_norm=0.0, scaler=None):
    """One optimisation step on a batch; returns (logits, loss) as device tensors (no sync).

    crops: float [B, 3, 3, 42, 42] in [0, 1]; target: float [B] of 0/1; precision: autocast
    'fp32', 'bf16' or 'fp16' (the loss is computed in fp32). scaler: a torch.amp.GradScaler
    for fp16 (its small gradients would underflow unscaled; a step whose gradients overflow is
    skipped), or None.
    """
    with autocast_context(crops.device, precision):
        logits = model(crops)
    loss = loss_fn(logits.float(), target)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    if max_norm > 0:
        clip_conv1(model, max_norm)
    return logits, loss


# Where the current epoch stands (batches done, the sampler's state when it began, running
# sums), saved in checkpoints so that an interrupted epoch resumes exactly.
EPOCH_START = {"batch": 0, "sampler_state": None, "loss_sum": 0.0, "correct": 0.0, "seen": 0}


class Trainer:
    """Holds the run's state; ``train()`` runs the epochs, ``validate()`` scores the val set."""

    def __init__(self, args):
        self.args = args
        self.device = pick_device(args.device)
        self.precision = pick_precision(args.precision, self.device)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        random.seed(args.seed)
        self.resume_state = load_checkpoint(args.resume) if args.resume else None
        weights_from = args.resume or args.init_from
        weights_state = self.resume_state or (load_checkpoint(args.init_from)
                                              if args.init_from else None)
        # A resumed run keeps its model options; --init-from takes --dropout from the command
        # line (dropout has no weights) but cannot change --batch-norm (it has).
        self.model_options = {"dropout": args.dropout, "batch_norm": args.batch_norm}
        if self.resume_state is not None:
            self.model_options = dict(self.resume_state.get("model_options", self.model_options))
        elif weights_state is not None:
            saved = weights_state.get("model_options", {}).get("batch_norm", False)
            if saved != args.batch_norm:
                raise SystemExit(f"error: {args.init_from} was trained "
                                 f"{'with' if saved else 'without'} --batch-norm; pass the same "
                                 f"to --init-from it.")
        if weights_state is not None:  # checked before the data is read
            try:
                self.model = model_from_checkpoint(weights_state, weights_from, args.model,
                                                   self.model_options)
            except CheckpointError as error:
                raise SystemExit(f"error: {error}")
        if self.resume_state is not None and "optimizer_state" not in self.resume_state:
            raise SystemExit(f"error: {args.resume} holds weights only (a shipped model), not a "
                             f"run to resume. Use --init-from {args.resume} to start a new run "
                             f"from its weights.")
        self.train_set, self.val_set, self.data_description = load_data(args)
        if args.val_images:
            self.val_set = self.val_set.subset(list(range(min(args.val_images,
                                                               len(self.val_set)))))
        n_train = (len(self.train_set.samples[1]) if self.train_set.samples is not None else
                   len(self.train_set) * (args.fixations_per_image + args.non_fixations_per_image
                                          + args.uniform_locations_per_image))
        if args.batch_size > n_train:
            raise SystemExit(f"error: --batch-size {args.batch_size} is larger than the "
                             f"{n_train} training samples per epoch; use a smaller batch")
        if weights_state is None:
            self.model = build_model(args.model, **self.model_options)
            mean, std = self.train_set.pixel_mean_std()
            self.model.input_mean.copy_(mean)
            self.model.input_std.copy_(std)
        self.model.to(self.device)
        self.ema_model = None
        if args.ema_decay > 0:
            self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
            if self.resume_state is not None and "train_model_state" in self.resume_state:
                self.model.load_state_dict(self.resume_state["train_model_state"])
        self.optimizer, self.scheduler = make_optimizer(args, self.model)
        self.scaler = (torch.amp.GradScaler(self.device.type) if self.precision == "fp16"
                       else None)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.compiled_model = torch.compile(self.model) if args.compile else None
        self.generator = torch.Generator().manual_seed(args.seed)
        self.epoch, self.step, self.best_metric = 0, 0, -math.inf
        self.epoch_progress = dict(EPOCH_START)
        self.stop_requested = False
        self.run_name = args.run_name or time.strftime(
            f"{args.model}_{args.optimizer}_lr{args.learning_rate:g}_bs{args.batch_size}_%Y%m%d-%H%M%S")
        if self.resume_state is not None:
            state = self.resume_state
            self.optimizer.load_state_dict(state["optimizer_state"])
            self.scheduler.load_state_dict(state["scheduler_state"])
            if self.scaler is not None and state.get("scaler_state"):
                self.scaler.load_state_dict(state["scaler_state"])
            self.epoch, self.step = state["epoch"], state["step"]
            self.best_metric = state["best_metric"]
            self.run_name = args.run_name or state.get("run_name", self.run_name)
            self.generator.set_state(state["rng_state"]["sampler"])
            restore_rng(state["rng_state"])
            self.epoch_progress = state.get("epoch_progress", self.epoch_progress)
        self.run_dir = Path(args.checkpoint_dir) / self.run_name
        self.train_scales = [dataset.pad_images(s).to(self.device) for s in self.train_set.scales]
        self.frozen_locations = None
        self.negative_weights = (dataset.fixation_prior(self.train_set.maps)
                                 if args.negatives == "centre-matched"
                                 and self.train_set.samples is None
                                 else None)
        self.positive_locations = (dataset.fixation_point_locations(self.train_set.fixations)
                                   if args.positives == "fixation-points"
                                   and self.train_set.samples is None
                                   else None)
        self.teacher_maps = self.teacher_predictions() if args.teacher else None
        val_generator = torch.Generator().manual_seed(12345)
        self.val_locations = (dataset.sample_locations(self.val_set.maps, val_generator)
                              if len(self.val_set) else None)
        self.val_scales = [dataset.pad_images(s).to(self.device) for s in self.val_set.scales]

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """Everything a resume needs; ``model_state`` holds the weights that validation scored
        (the moving average with --ema-decay, whose raw weights go in ``train_model_state``)."""
        mean, std = self.model.input_mean.cpu(), self.model.input_std.cpu()
        extra = {} if self.ema_model is None else {"train_model_state": self.model.state_dict()}
        return {"model": self.args.model, "model_state": self.evaluated_model.state_dict(),
                **extra,
                "model_options": dict(self.model_options),
                "normalisation": {"mean": mean.tolist(), "std": std.tolist()},
                "optimizer_state": self.optimizer.state_dict(),
                "scheduler_state": self.scheduler.state_dict(),
                "scaler_state": None if self.scaler is None else self.scaler.state_dict(),
                "epoch": self.epoch, "step": self.step, "best_metric": self.best_metric,
                "args": {k: v for k, v in vars(self.args).items()},
                "run_name": self.run_name, "data": self.data_description,
                "rng_state": {**capture_rng(), "sampler": self.generator.get_state()},
                "epoch_progress": dict(self.epoch_progress)}

    @property
    def evaluated_model(self):
        """The model that validation scores and checkpoints ship: the EMA one, if any."""
        return self.model if self.ema_model is None else self.ema_model

    @torch.no_grad()
    def update_ema(self):
        """Move the EMA weights towards the current ones (a shorter average while young)."""
        decay = min(self.args.ema_decay, (1 + self.step) / (10 + self.step))
        ema = list(self.ema_model.parameters())
        torch._foreach_lerp_(ema, list(self.model.parameters()), 1 - decay)
        for ema_buffer, buffer in zip(self.ema_model.buffers(), self.model.buffers()):
            ema_buffer.copy_(buffer)

    def save(self, name):
        save_checkpoint(self.state_dict(), self.run_dir / name)
        return self.run_dir / name

    # ------------------------------------------------------------------ training
    def teacher_predictions(self):
        """Mean dense map of the --teacher checkpoints over the training images, blurred by
        --teacher-blur: float [N, S, S] fixation probabilities (S = 200 with blur, else 50)."""
        args = self.args
        if self.train_set.samples is not None:
            raise SystemExit("error: --teacher needs whole training images (the MIT1003 "
                             "layout), not the coursework's pre-cut crops")
        # the cache key of every teacher's maps starts from the same training images
        images = hashlib.sha1(f"{TEACHER_CACHE_VERSION} {self.device.type} {self.precision} "
                              f"{self.train_set.names}".encode())
        for scale in self.train_set.scales:
            images.update(np.ascontiguousarray(scale.numpy()))  # no copy if contiguous
        total = None
        for path in args.teacher:
            maps = self.teacher_maps_of(path, images)
            total = maps if total is None else total + maps
        mean = total / len(args.teacher)
        if args.teacher_blur > 0:
            mean = torch.stack([blur_map(m, args.teacher_blur) for m in mean])
        return mean

    def teacher_maps_of(self, path, images_digest):
        """One teacher's dense maps of the training images, float [N, 50, 50] probabilities.

        Computing them takes minutes on a CPU, so they are kept in <cache-dir>/teacher_maps/,
        keyed by ``images_digest`` (a hashlib object over the training images, the device type
        and the precision) and the teacher file's bytes: a later run with the same teacher
        reads them back (a file that fails to load is recomputed)."""
        cached = None
        try:
            digest = images_digest.copy()
            digest.update(Path(path).read_bytes())
            cached = Path(self.args.cache_dir) / "teacher_maps" / f"{digest.hexdigest()[:20]}.pt"
            maps = torch.load(cached, weights_only=True)
            if maps.shape[0] == len(self.train_set):
                print(f"teacher {path}: dense maps read from {cached}", flush=True)
                return maps
        except Exception:  # not cached yet, an unreadable cache file, or an unreadable teacher
            pass           # file (load_checkpoint below says what is wrong with it)
        try:
            teacher = model_from_checkpoint(load_checkpoint(path), path).to(self.device)
        except CheckpointError as error:
            raise SystemExit(f"error: {error}")
        maps = torch.stack(predict_maps(teacher, self.train_set, precision=self.precision)).cpu()
        print(f"teacher {path}: dense maps of {len(maps)} training images", flush=True)
        if cached is not None:
            try:
                save_checkpoint(maps, cached)
            except OSError as error:
                warnings.warn(f"could not cache teacher maps in {cached}: {error}")
        return maps

    def draw_locations(self, generator):
        """dataset.sample_locations over the training maps with this run's settings."""
        args = self.args
        return dataset.sample_locations(
            self.train_set.maps, generator, args.fixations_per_image,
            args.non_fixations_per_image, self.negative_weights, self.positive_locations,
            args.fixation_threshold, args.uniform_locations_per_image, args.labels == "map")

    def epoch_samples(self):
        """(image index, relative location, label, flip, colour factors [M, 3] or None) for one
        epoch, shuffled, moved to the device once per epoch (for the coursework's pre-cut
        crops: sample index, None, ...). Drawn here, not per batch, so that a run resumed
        mid-epoch sees the same augmentation."""
        if self.train_set.samples is not None:
            labels = self.train_set.samples[1]
            index, rel = torch.arange(len(labels)), None
        elif self.args.freeze_locations:
            if self.frozen_locations is None:  # from the seed alone, so a resumed run has them
                self.frozen_locations = self.draw_locations(
                    torch.Generator().manual_seed(self.args.seed))
            index, rel, labels = self.frozen_locations
        else:
            index, rel, labels = self.draw_locations(self.generator)
        if self.teacher_maps is not None and rel is not None:
            w = self.args.teacher_weight
            labels = w * sample_maps(self.teacher_maps, index, rel) + (1 - w) * labels
        order = torch.randperm(len(labels), generator=self.generator)
        flip = (torch.rand(len(labels), generator=self.generator) < 0.5) & (not self.args.no_flip)
        jitter = None
        if self.args.colour_jitter > 0:
            jitter = 1 + self.args.colour_jitter * (
                2 * torch.rand(len(labels), 3, generator=self.generator) - 1)
            jitter = jitter.to(self.device)
        if rel is not None:
            rel = rel[order]
            if self.args.location_jitter > 0:  # drawn last, so the other draws stay as they were
                # label from the drawn location, crop from a nearby one: the model cannot tell
                # locations a few pixels apart, which smooths its map
                shift = torch.randn(rel.shape, generator=self.generator)
                rel = (rel + self.args.location_jitter * shift).clamp(0, 1 - 1e-6)
        index_device = "cpu" if rel is None else self.device  # pre-cut crops stay in host memory
        return (index[order].to(index_device), None if rel is None else rel.to(self.device),
                labels[order].to(self.device), flip.to(self.device), jitter)

    def batch_crops(self, index, rel, flip, jitter=None):
        if rel is None:  # coursework files: pre-cut crops
            crops = self.train_set.samples[0][index].to(self.device)
            crops = torch.where(flip[:, None, None, None, None], crops.flip(-1), crops)
        else:
            crops = dataset.cut_crops(self.train_scales, index, rel, flip)
        return crops if jitter is None else dataset.colour_jitter(crops, jitter)

    def train_epoch(self, writer, recorder, progress):
        from tqdm import tqdm
        args, model = self.args, self.model
        model.train()
        if args.optimizer == "sgd":
            for group in self.optimizer.param_groups:
                group["momentum"] = momentum_at(args, self.epoch)
        progress_state = self.epoch_progress
        if progress_state["batch"] == 0:  # a fresh epoch (else: resuming an interrupted one)
            progress_state["sampler_state"] = self.generator.get_state()
        else:
            self.generator.set_state(progress_state["sampler_state"])
        index, rel, labels, flip, jitter = self.epoch_samples()
        n_batches = len(labels) // args.batch_size  # drop the ragged last batch
        loss_sum = torch.full((), progress_state["loss_sum"], device=self.device)
        correct = torch.full((), progress_state["correct"], device=self.device)
        seen, logged_loss = progress_state["seen"], float("nan")
        seen_before, start = seen, time.perf_counter()
        bar = tqdm(range(progress_state["batch"], n_batches), desc=f"epoch {self.epoch + 1}/"
                   f"{args.epochs}", leave=False, disable=not progress, unit="batch")
        for b in bar:
            sl = slice(b * args.batch_size, (b + 1) * args.batch_size)
            crops = self.batch_crops(index[sl], None if rel is None else rel[sl], flip[sl],
                                     None if jitter is None else jitter[sl])
            target = labels[sl]
            # the first step runs eagerly: the feature recorder's hooks watch it
            step_model = model if self.compiled_model is None or recorder else self.compiled_model
            try:
                logits, loss = train_step(step_model, self.optimizer, self.loss_fn, crops,
                                          target, self.precision, args.max_norm, self.scaler)
            except Exception as error:  # noqa: BLE001 - any compiler failure: go on eagerly
                if step_model is model:
                    raise
                print(f"warning: torch.compile failed ({type(error).__name__}: "
                      f"{str(error).strip()[:200]}); training goes on without --compile",
                      file=sys.stderr)
                self.compiled_model = None
                logits, loss = train_step(model, self.optimizer, self.loss_fn, crops, target,
                                          self.precision, args.max_norm, self.scaler)
            if recorder is not None:
                recorder.remove()
                save_feature_maps(model, recorder, writer, self.run_dir / "features", self.step)
                recorder = None
            if self.ema_model is not None:
                self.update_ema()
            loss_sum += loss.detach() * len(target)
            correct += ((logits.detach() > 0) == (target > 0.5)).sum()
            seen += len(target)
            self.step += 1
            if self.stop_requested:  # Ctrl-C / SIGTERM: stop between steps, never inside one
                progress_state.update(batch=b + 1, loss_sum=float(loss_sum),
                                      correct=float(correct), seen=seen)
                raise KeyboardInterrupt
            if self.step % args.log_frequency == 0:  # the only host syncs of the loop
                logged_loss = float(loss.detach())
                if not math.isfinite(logged_loss):
                    raise FloatingPointError(f"loss became {logged_loss} at step {self.step}")
                grad_norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()
                                                    if p.grad is not None]))
                writer.add_scalar("train/loss", logged_loss, self.step)
                writer.add_scalar("train/grad_norm", float(grad_norm), self.step)
                bar.set_postfix(loss=f"{logged_loss:.4f}")
        elapsed = time.perf_counter() - start
        mean_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"loss became {mean_loss} in epoch {self.epoch + 1}")
        accuracy = float(correct) / max(seen, 1)
        writer.add_scalar("train/epoch_loss", mean_loss, self.step)
        writer.add_scalar("train/accuracy", accuracy, self.step)
        writer.add_scalar("train/learning_rate", self.optimizer.param_groups[0]["lr"], self.step)
        writer.add_scalar("train/epoch_seconds", elapsed, self.step)
        rate = (seen - seen_before) / elapsed
        writer.add_scalar("train/samples_per_second", rate, self.step)
        self.scheduler.step()
        self.epoch_progress = dict(EPOCH_START)
        return {"loss": mean_loss, "accuracy": accuracy, "seconds": elapsed,
                "samples_per_s": rate}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, writer=None, progress=True):
        """Val loss on fixed val locations, and AUC-Judd / shuffled AUC of dense maps."""
        model = self.evaluated_model
        model.eval()
        index, rel, labels = self.val_locations
        total = 0.0
        with autocast_context(self.device, self.precision):
            for chunk in torch.arange(len(labels)).split(1024):
                crops = dataset.cut_crops(self.val_scales, index[chunk].to(self.device),
                                          rel[chunk].to(self.device))
                logits = model(crops).float()
                total += float(self.loss_fn(logits, labels[chunk].to(self.device))) * len(chunk)
        maps = predict_maps(model, self.val_set, self.args.inference, self.precision)
        # scored in this process: forking one that runs TensorBoard's and torch's threads
        # can deadlock the child on a lock held at the fork
        means, _ = metrics.evaluate_dataset(maps, self.val_set.fixations, self.val_set.densities,
                                            names=("auc_judd", "auc_shuffled"), workers=1)
        result = {"loss": total / len(labels), **means}
        if writer is not None:
            for key, value in result.items():
                writer.add_scalar(f"val/{key}", value, self.step)
            shown = torch.stack([m / max(m.max(), 1e-8) for m in maps[:4]]).unsqueeze(1)
            writer.add_images("val/predicted_maps", shown, self.step)
        return result

    # ------------------------------------------------------------------ loop
    def train(self, progress=True):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm
        args = self.args
        writer = SummaryWriter(str(Path(args.log_dir) / self.run_name))
        recorder = FeatureRecorder(self.model.stream(0)) if self.step == 0 else None
        last_val = {}
        interrupted = False

        def on_stop_signal(signum, frame):
            if self.stop_requested:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.stop_requested = True
            print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a "
                  f"checkpoint (press Ctrl-C again to stop at once)", file=sys.stderr)
        previous_handlers = {s: signal.signal(s, on_stop_signal)
                             for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            print(f"run {self.run_name}: {args.model} on {self.data_description} "
                  f"({len(self.train_set)} train / {len(self.val_set)} val images), "
                  f"{self.device} {self.precision}; checkpoints in {self.run_dir}", flush=True)
            epochs = tqdm(range(self.epoch, args.epochs), desc="training", unit="epoch",
                          disable=not progress, initial=self.epoch, total=args.epochs)
            for _ in epochs:
                result = self.train_epoch(writer, recorder, progress)
                recorder = None
                self.epoch += 1
                line = (f"epoch {self.epoch}/{args.epochs}: loss {result['loss']:.4f} acc "
                        f"{result['accuracy']:.3f} {result['seconds']:.1f}s "
                        f"({result['samples_per_s']:.0f} samples/s)")
                if self.epoch % args.val_frequency == 0 or self.epoch == args.epochs:
                    val_start = time.perf_counter()
                    last_val = self.validate(writer, progress)
                    line += (f" | val loss {last_val['loss']:.4f} AUC-Judd "
                             f"{last_val['auc_judd']:.4f} sAUC {last_val['auc_shuffled']:.4f} "
                             f"{time.perf_counter() - val_start:.1f}s")
                    if last_val["auc_shuffled"] > self.best_metric:
                        self.best_metric = last_val["auc_shuffled"]
                        self.save("best.pth")
                if self.epoch % args.checkpoint_frequency == 0:
                    self.save(f"epoch_{self.epoch}.pth")
                # flushed: with stdout redirected to a file, a line would otherwise wait
                # in the buffer for hours (and land after later stderr messages)
                tqdm.write(line) if progress else print(line, flush=True)
                if self.stop_requested:  # the signal came during validation or saving
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            interrupted = True
            path = self.save("interrupted.pth")
            print(f"\ninterrupted: saved {path} (epoch {self.epoch}, step {self.step}); resume "
                  f"with --resume {path}", file=sys.stderr)
        except FloatingPointError as error:
            writer.close()
            raise SystemExit(f"error: {error}. Training stopped; the last good checkpoints in "
                             f"{self.run_dir} are kept. Try a lower --learning-rate.")
        finally:
            for s, handler in previous_handlers.items():
                signal.signal(s, handler)
        if not interrupted:
            self.save("final_model.pth")
            hparams = {k: v for k, v in vars(args).items()
                       if isinstance(v, (int, float, str, bool))}
            final = {f"hparam/val_{k}": v for k, v in last_val.items()}
            writer.add_hparams(hparams, final or {"hparam/val_auc_shuffled": float("nan")},
                               run_name=".")
        writer.close()
        return last_val, interrupted


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    torch.set_num_threads(max(1, args.worker_count or 1))
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    dataset.show_warnings_plainly()
    try:
        trainer = Trainer(args)
    except (dataset.DatasetError, CheckpointError) as error:
        raise SystemExit(f"error: {error}")
    if trainer.epoch >= args.epochs:
        raise SystemExit(f"error: {args.resume} already finished epoch {trainer.epoch}; pass a "
                         f"larger --epochs to continue")
    result, interrupted = trainer.train(progress=sys.stderr.isatty())
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
