"""Distillation: training targets from the dense maps of trained models (teachers).

With ``main.py --teacher A.pth [--teacher B.pth ...]`` every training location's target is the
mean fixation probability that the teachers' dense maps give it (optionally after a Gaussian
blur of the mean map), instead of the paper's 1 / 0 label. The shipped MrCNN was trained so
(README). Teacher maps take minutes on a CPU, so each teacher's maps of the training images are
cached in ``<cache-dir>/teacher_maps/``.
"""
import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from checkpoints import CheckpointError, model_from_checkpoint, save_checkpoint
from files import WriteError
from inference import blur_map, predict_maps

CACHE_VERSION = 1  # bump when predict_maps changes what it returns


def teacher_maps(teachers, train_set, cache_dir, device, precision, blur_sigma=0.0):
    """Mean dense map of the teachers over every training image.

    teachers: (path, checkpoint state) pairs, as load_checkpoint returns the state;
    train_set: a SaliencySet of whole images; blur_sigma: Gaussian sigma as a fraction of the
    image size (0: none). Returns float [N, S, S] fixation probabilities on the CPU (S = 200
    with a blur, else the 50x50 grid). Raises SystemExit with one line for an unusable teacher.
    """
    # every teacher's cache key starts from the same training images, hashed once
    images = hashlib.sha1(f"{CACHE_VERSION} {device.type} {precision} "
                          f"{train_set.names}".encode(errors="surrogateescape"))
    for scale in train_set.scales:
        images.update(np.ascontiguousarray(scale.numpy()))
    total = sum(_one_teacher(path, state, images, train_set, cache_dir, device, precision)
                for path, state in teachers)
    mean = total / len(teachers)
    if blur_sigma > 0:
        mean = torch.stack([blur_map(m, blur_sigma) for m in mean])
    return mean


def _one_teacher(path, state, images_digest, train_set, cache_dir, device, precision):
    """One teacher's maps, float [N, 50, 50], read from the cache when its key matches (the
    training images, device type, precision and the teacher file's bytes)."""
    # built even when its maps are cached: building draws initial weights from the global RNG,
    # and the run's dropout must not depend on whether the cache was filled
    try:
        teacher = model_from_checkpoint(state, path)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}")
    cached = None
    try:
        digest = images_digest.copy()
        digest.update(Path(path).read_bytes())
        cached = Path(cache_dir) / "teacher_maps" / f"{digest.hexdigest()[:20]}.pt"
        maps = torch.load(cached, weights_only=True)
        if maps.shape[0] == len(train_set):
            print(f"teacher {path}: dense maps read from {cached}", flush=True)
            return maps
    except Exception:  # not cached yet, or an unreadable cache file
        pass
    maps = torch.stack(predict_maps(teacher.to(device), train_set, precision=precision)).cpu()
    print(f"teacher {path}: dense maps of {len(maps)} training images", flush=True)
    if cached is not None:
        try:
            save_checkpoint(maps, cached)
        except WriteError as error:
            warnings.warn(f"could not cache teacher maps: {error}")
    return maps

