"""Checkpoint files: atomic writes, safe loading, and rebuilding a model from one.

A checkpoint is a dict of tensors and primitives only (so ``torch.load(weights_only=True)``
reads it): ``model`` (name), ``model_state``, ``model_options`` (dropout, batch_norm),
``normalisation`` ({'mean': [3], 'std': [3]}), ``args`` (the command-line arguments as a dict),
``epoch``, ``step``, ``best_metric``, and for resuming ``optimizer_state``,
``scheduler_state``, ``scaler_state`` (fp16), ``rng_state`` and, with --ema-decay,
``train_model_state`` (the raw weights; ``model_state`` then holds their moving average);
shipped models may add ``post_processing``.
"""
import os
from pathlib import Path

import torch

from MrCNN import build_model


class CheckpointError(Exception):
    """A checkpoint that cannot be used: the message says which file and why."""


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A crash mid-write leaves any previous file at ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path):
    """Read a checkpoint dict with ``weights_only=True``; raises CheckpointError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist. Train one with main.py or "
                              f"pass the path of a .pth file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every unpickling failure means the same to users
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise CheckpointError(f"{path} is not a loadable checkpoint ({type(error).__name__}: "
                              f"{first_line}). Only files written by main.py are accepted; "
                              f"pickles that would run code are refused.")
    if not isinstance(state, dict) or "model_state" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a Mr-CNN checkpoint (no 'model' / 'model_state'). "
                              f"Pass a file written by main.py.")
    return state


def model_from_checkpoint(state, path="checkpoint", expected_model=None):
    """Build the model a checkpoint dict describes and load its weights (on the CPU).

    Raises CheckpointError when the checkpoint is of another model than ``expected_model``
    or its weights do not fit.
    """
    name = state["model"]
    if expected_model is not None and name != expected_model:
        raise CheckpointError(f"{path} holds a {name} checkpoint, not {expected_model}. Pass "
                              f"--model {name} or another checkpoint.")
    try:
        model = build_model(name, **state.get("model_options", {}))
        model.load_state_dict(state["model_state"])
    except (ValueError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"{path}: weights do not fit {name} "
                              f"({str(error).splitlines()[0][:200]}).")
    return model.float()
