"""Checkpoint files: atomic writes, safe loading, and rebuilding a model from one.

A checkpoint is a dict of tensors and primitives only (so ``torch.load(weights_only=True)``
reads it): ``model`` (name), ``model_state``, ``model_options`` (dropout, batch_norm),
``normalisation`` ({'mean': [3], 'std': [3]}), ``args`` (the command-line arguments as a dict),
``command`` (the ``python main.py ...`` line that started the run), ``data`` (what it trained
on), ``epoch``, ``step``, ``best_metric`` (val ``best_metric_name``: auc_shuffled, or
auc_judd where val holds one image), and for resuming ``optimizer_state``,
``scheduler_state``, ``scaler_state`` (fp16), ``rng_state`` and ``epoch_progress``; shipped
models may add ``post_processing`` and ``training_note``.
"""
import os
import pickle
import random
import re
import socket
import zipfile
from pathlib import Path

import numpy as np
import torch

from files import WriteError, write_atomically
from models import MODELS, build_model


LOCK_FILE = ".lock"  # in a run folder: the pid and host of the process writing it


class CheckpointError(Exception):
    """A checkpoint that cannot be used: the message says which file and why."""


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically (``files.write_atomically``): a crash or a full
    disk mid-write leaves any previous file at ``path`` intact. Returns ``path``; WriteError
    where it cannot be written."""
    return write_atomically(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path):
    """Read a checkpoint dict with ``weights_only=True``; raises CheckpointError if unusable."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file. Pass a .pth file "
                              f"inside it (e.g. {path / 'best.pth'}).")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist. Train one with main.py or "
                              f"pass the path of a .pth file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure here means an unusable file
        raise CheckpointError(f"{path} is not a loadable checkpoint: {_why_unloadable(path, error)}")
    if not isinstance(state, dict) or "model_state" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a Mr-CNN checkpoint (no 'model' / 'model_state'). "
                              f"Pass a file written by main.py.")
    return state


def _why_unloadable(path, error):
    """The cause of a failed ``torch.load(path, weights_only=True)``, said for a user (torch's
    own message suggests ``weights_only=False``, which is exactly what must not be done)."""
    if path.stat().st_size == 0:
        return "the file is empty. Copy it again, or pass another .pth file written by main.py."
    if not zipfile.is_zipfile(path):
        return ("torch.save writes a zip archive and this file is not one (another kind of "
                "file, or a copy or download that did not finish). Pass a .pth file written "
                "by main.py.")
    if isinstance(error, pickle.UnpicklingError):  # the safe unpickler refused what it holds
        named = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(error))
        what = f" ({named.group(1)})" if named else ""
        return (f"it holds Python objects{what} that a safe load refuses, as unpickling them "
                f"could run code. Pass a file written by main.py: it holds tensors and plain "
                f"values only.")
    first_line = (str(error).strip().splitlines() or [""])[0][:160]
    return (f"the file is damaged ({type(error).__name__}: {first_line}). Copy it again, or "
            f"pass another .pth file written by main.py.")


def load_resumable(path, batch_size):
    """A checkpoint of a run that ``main.py --resume`` can continue with ``batch_size``;
    raises CheckpointError for a shipped (weights-only) model or a run stopped inside an epoch
    of another batch size (its remaining batches would not be the same)."""
    state = load_checkpoint(path)
    if "optimizer_state" not in state:
        raise CheckpointError(f"{path} holds weights only (a shipped model), not a run to "
                              f"resume. Use --init-from {path} to start a new run from its "
                              f"weights.")
    saved = state.get("args", {}).get("batch_size")
    if state.get("epoch_progress", {}).get("batch") and saved != batch_size:
        raise CheckpointError(f"{path} stopped inside an epoch of batch size {saved}; resume it "
                              f"with that --batch-size (change it when starting a new run).")
    return state


def model_from_checkpoint(state, path="checkpoint", expected_model=None, options=None):
    """Build the model a checkpoint dict describes and load its weights (on the CPU).

    ``options`` (dropout, batch_norm) replace the checkpoint's ``model_options`` if given.
    Raises CheckpointError when the checkpoint is of another model than ``expected_model``
    or its weights do not fit.
    """
    name = state["model"]
    if name not in MODELS:
        raise CheckpointError(f"{path} holds a model named {name!r}, which this project does not "
                              f"define (it has {', '.join(MODELS)}). Pass a checkpoint written "
                              f"by main.py.")
    if expected_model is not None and name != expected_model:
        raise CheckpointError(f"{path} holds a {name} checkpoint, not {expected_model}. Pass "
                              f"--model {name} or another checkpoint.")
    try:
        model = build_model(name, **(state.get("model_options", {}) if options is None
                                     else options))
        model.load_state_dict(state["model_state"])
    except (ValueError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"{path}: weights do not fit {name} "
                              f"({str(error).splitlines()[0][:200]}).")
    broken = [key for key, value in model.state_dict().items()
              if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken or not (model.input_std > 0).all():
        what = f"non-finite values in {', '.join(broken[:3])}" if broken else "an input_std <= 0"
        raise CheckpointError(f"{path} holds {what}: its maps would be meaningless. Use an "
                              f"earlier checkpoint of the run.")
    return model.float()


def held_out_fold(state):
    """The cross-validation fold that the run behind checkpoint ``state`` held out (main.py
    --fold K), or None for a run on the 803/100/100 split (which trains on parts of every fold).
    A model may only be scored on, or feed a run (teacher, --init-from) that holds out, what
    its own run held out."""
    return state.get("args", {}).get("fold")


def protocol_name(fold):
    """'--fold K', or 'the 803/100/100 split' for None (``held_out_fold``'s values)."""
    return "the 803/100/100 split" if fold is None else f"--fold {fold}"


def lock_run_dir(run_dir):
    """Make this process the one writer of ``run_dir``: run_dir/.lock holds its pid and host.
    SystemExit naming the holder where another live process on this host holds it (or one on
    another host); a lock whose process has ended is taken over, and this process's own lock
    is kept. ``release_run_dir`` gives it up."""
    path, me = Path(run_dir) / LOCK_FILE, f"{os.getpid()} {socket.gethostname()}"
    for _ in range(3):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = path.read_text().split()
            except OSError:
                continue  # released meanwhile
            pid, host = (int(holder[0]), holder[1]) if len(holder) == 2 and \
                holder[0].isdigit() else (0, socket.gethostname())
            if holder == me.split():
                return
            if host == socket.gethostname() and not _alive(pid):
                path.unlink(missing_ok=True)  # left by a killed process: take it over
                continue
            raise SystemExit(f"error: {run_dir} is being written by process {pid} on {host} "
                             f"(lock file {path}); wait for that run to end or stop it. (A "
                             f"lock left by a process that has ended is taken over.)")
        except OSError as error:
            raise SystemExit(f"error: cannot write to run folder {run_dir} "
                             f"({error.strerror}). Pass a writable --checkpoint-dir.")
        with os.fdopen(descriptor, "w") as handle:
            handle.write(me)
        return
    raise SystemExit(f"error: cannot take the lock {path} of run folder {run_dir}; try again.")


def stopped_at_once(run_dir):
    """The line for a run stopped at once (Ctrl-C while it was being built, or a second one
    while it saved): what ``run_dir`` (None before it existed) keeps, and how to go on."""
    if run_dir is None:
        return "interrupted before training started: nothing was saved"
    kept = sorted(Path(run_dir).glob("*.pth"), key=lambda p: p.stat().st_mtime)
    if not kept:
        return (f"interrupted again before a first checkpoint was written: {run_dir} holds "
                f"none; start the run anew")
    return (f"interrupted again while saving: {run_dir} keeps {', '.join(p.name for p in kept)} "
            f"(each whole); continue with --resume {kept[-1]}")


def release_run_dir(run_dir):
    """Give up this process's lock of ``run_dir`` (``lock_run_dir``), if it holds it."""
    path = Path(run_dir) / LOCK_FILE
    try:
        if path.read_text().split() == [str(os.getpid()), socket.gethostname()]:
            path.unlink()
    except OSError:
        pass


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def new_run_dir(checkpoint_dir, name, numbered=True):
    """Create checkpoint_dir/name for a new run and return it. The folder belongs to this run
    alone: when it exists, ``numbered`` tries name-2, name-3, ...; otherwise SystemExit."""
    for attempt in range(1, 100 if numbered else 2):
        folder = Path(checkpoint_dir) / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            folder.mkdir(parents=True)  # atomic: two runs started together get two folders
            lock_run_dir(folder)
            return folder
        except FileExistsError:
            continue
        except OSError as error:
            raise SystemExit(f"error: cannot create run folder {folder} ({error.strerror}). "
                             f"Pass a writable --checkpoint-dir.")
    folder = Path(checkpoint_dir) / name
    saved = sorted(folder.glob("*.pth"), key=lambda p: p.stat().st_mtime)
    if saved:
        raise SystemExit(f"error: run folder {folder} already exists; pass another --run-name, "
                         f"or continue that run with --resume {saved[-1]} (its newest "
                         f"checkpoint).")
    raise SystemExit(f"error: run folder {folder} already exists and holds no checkpoint (a run "
                     f"stopped before its first epoch ended leaves such a folder): remove it, or "
                     f"pass another --run-name.")


# The resume rules. NOT_RESUMED: how a run was started and on which machine, not taken from
# the checkpoint. FIXED_ON_RESUME: what a run's saved state (weights, optimiser, schedule,
# data, RNG) was built with: a resumed run cannot change it, and would otherwise ignore the new
# value while recording it.
NOT_RESUMED = ("resume", "init_from", "worker_count")
FIXED_ON_RESUME = ("model", "batch_norm", "dropout", "optimizer", "learning_rate",
                   "weight_decay", "lr_schedule", "fold", "seed")


def refuse_changed_flags(args, saved):
    """SystemExit naming every FIXED_ON_RESUME flag of ``args`` (main.py's arguments) that
    differs from ``saved``, the resumed run's own arguments."""
    shown = lambda v: "on" if v is True else "off" if v is False else "none" if v is None else v
    changed = [f"--{k.replace('_', '-')} {shown(getattr(args, k))} (the run's: {shown(saved[k])})"
               for k in FIXED_ON_RESUME if k in saved and getattr(args, k) != saved[k]]
    if changed:
        raise SystemExit(f"error: --resume continues {args.resume} as it was built, so it "
                         f"cannot change {', '.join(changed)}. Start a new run with "
                         f"--init-from {args.resume} for that.")


def refuse_going_back(path, state, run_dir):
    """SystemExit if ``run_dir`` already holds a checkpoint of the run from a later step than
    ``state`` (loaded from ``path``): resuming the older one would overwrite it."""
    for later in (run_dir / name for name in ("interrupted.pth", "last.pth", "final_model.pth")):
        if not later.is_file() or later.resolve() == Path(path).resolve():
            continue
        try:
            saved = load_checkpoint(later)
        except CheckpointError:
            continue
        if saved.get("step", 0) > state["step"]:
            raise SystemExit(f"error: {later} is from a later point of this run (epoch "
                             f"{saved.get('epoch')}, step {saved['step']}) than {path} (epoch "
                             f"{state['epoch']}, step {state['step']}); resuming the older one "
                             f"would overwrite it. Resume {later}, or start a new run from "
                             f"{path} with --init-from {path} --run-name NEW.")


def resumed_args(path):
    """The arguments of the run saved in checkpoint ``path`` that resuming it takes as its
    defaults (all but NOT_RESUMED); SystemExit if the file cannot be loaded."""
    try:
        saved = load_checkpoint(path).get("args", {})
    except CheckpointError as error:
        raise SystemExit(f"error: {error}")
    return {k: v for k, v in saved.items() if k not in NOT_RESUMED}


def resume_dir(args, state):
    """The run folder that resuming ``state`` (main.py's ``args.resume``) writes to: the folder
    the checkpoint is in, wherever it was moved (never another run's folder of the same name),
    once the resume rules allow it: SystemExit where ``args`` changes what the run was built
    with, or where the folder holds a later checkpoint of the run."""
    refuse_changed_flags(args, state.get("args", {}))
    run_dir = Path(args.resume).parent
    lock_run_dir(run_dir)  # before anything else reads what another writer may be changing
    refuse_going_back(args.resume, state, run_dir)
    return run_dir


def model_to_continue(source, source_path, args):
    """The model of checkpoint ``source`` (from ``source_path``) for main.py's ``args``: with
    --resume as it was built; with --init-from its weights, with --dropout (it has no weights)
    and the same --batch-norm (it has). SystemExit naming the problem if it cannot be."""
    options = {"dropout": args.dropout, "batch_norm": args.batch_norm}
    if args.resume:
        options = source.get("model_options", options)
    elif source.get("model_options", {}).get("batch_norm", False) != args.batch_norm:
        raise SystemExit(f"error: {source_path} was trained "
                         f"{'with' if not args.batch_norm else 'without'} --batch-norm; pass "
                         f"the same to --init-from it.")
    try:
        return model_from_checkpoint(source, source_path, args.model, options)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None


def refuse_leaks(sources, fold):
    """SystemExit if a checkpoint that feeds a run (``sources``: (flag, path, state) of its
    --init-from and --teachers) trained on the images that the run (--fold ``fold``, None for
    the 803/100/100 split) holds out: it would leak them into the run's training."""
    for flag, path, state in sources:
        if held_out_fold(state) != fold:
            raise SystemExit(f"error: {flag} {path} comes from a run on "
                             f"{protocol_name(held_out_fold(state))}, which trained on images "
                             f"that this run ({protocol_name(fold)}) holds out. Use one from a "
                             f"run on {protocol_name(fold)}.")


def capture_rng(sampler):
    """The torch, NumPy, Python and CUDA RNG states and ``sampler``'s (a torch.Generator), as
    tensors and lists (so that ``weights_only=True`` loads them)."""
    return {"torch": torch.get_rng_state(), "sampler": sampler.get_state(),
            "numpy": np.random.get_state()[1].tolist(), "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state, sampler):
    """Put back the RNG states ``capture_rng`` returned, ``sampler``'s included."""
    sampler.set_state(state["sampler"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Keys a shipped model keeps: what test.py needs and where the weights came from.
SHIPPED_KEYS = ("model", "model_state", "model_options", "normalisation", "args", "epoch",
                "step", "best_metric", "best_metric_name", "run_name", "data",
                "post_processing")


def shipped_state(state, note, path="checkpoint"):
    """A training checkpoint dict -> the dict to ship: parameters as fp16 (half the size;
    buffers such as the input normalisation stay as they are), no optimiser, scheduler, RNG
    or raw EMA state, plus ``command`` and ``training_note``. CheckpointError (naming ``path``)
    where ``state`` is not a usable checkpoint of a model of this project."""
    shipped = {key: state[key] for key in SHIPPED_KEYS if key in state}
    parameters = {name for name, _ in model_from_checkpoint(state, path).named_parameters()}
    shipped["model_state"] = {name: value.half() if name in parameters else value
                              for name, value in state["model_state"].items()}
    shipped["command"] = state.get("command", "")
    shipped["training_note"] = note
    return shipped


def main(argv=None):
    """``python checkpoints.py ship SRC DST --note TEXT``: write SRC's shippable form to DST."""
    import argparse
    import sys
    parser = argparse.ArgumentParser(description="Make a training checkpoint shippable.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ship = sub.add_parser("ship", help="fp16 weights and metadata only (e.g. for "
                          "checkpoint/pretrained/); then run test.py --tune-post-processing")
    ship.add_argument("source", help="checkpoint written by main.py (e.g. best.pth)")
    ship.add_argument("destination", help="file to write")
    ship.add_argument("--note", default="", help="how and where it was trained")
    args = parser.parse_args(argv)
    if Path(args.destination).resolve() == Path(args.source).resolve():
        sys.exit(f"error: shipping {args.source} onto itself would replace the checkpoint it "
                 f"reads; name a new destination file.")
    try:
        state = shipped_state(load_checkpoint(args.source), args.note, args.source)
        save_checkpoint(state, args.destination)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    except WriteError as error:
        sys.exit(f"error: {error}. Pass a writable destination.")
    size = Path(args.destination).stat().st_size / 1e6
    print(f"wrote {args.destination} ({size:.1f} MB): {state['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
