"""Train Mr-CNN / Mr-CNNs (Liu et al., CVPR 2015) to predict eye fixations.

    python main.py                                    # data/MIT1003, else a synthetic set
    python main.py --data-dir data/MIT1003 --model MrCNNs
    python main.py --data-dir data/MIT1003 --fold 3   # 10-fold cross-validation, fold 3 held out
    python main.py --resume checkpoint/<run>/interrupted.pth

Each epoch draws fresh fixation / non-fixation locations per training image, trains on their
three-scale crops, then validates with AUC-Judd and shuffled AUC of dense maps. A run writes
checkpoints and feature pictures to checkpoint/<run>/, TensorBoard events to logs/<run>/.
"""
import argparse
import math
import os
import random
import shlex
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
from checkpoints import (CheckpointError, capture_rng, load_checkpoint, load_resumable,
                         model_to_continue, new_run_dir, refuse_leaks, release_run_dir,
                         restore_rng, resume_dir, resumed_args, save_checkpoint,
                         stopped_at_once)
from cli import HelpFormatter, progress as progress_report
from devices import (DEVICES, PRECISIONS, autocast_context, checked_worker_count,
                     keep_freed_memory, pick_device, pick_precision)
from distil import teacher_maps
from features import ensure_log_dir, log_hparams, log_validation, save_feature_maps
from files import WriteError
from inference import predict_maps
from models import MODELS, build_model
from optimisation import FINAL_MOMENTUM, make_optimizer, momentum_at, train_step

DEFAULT_DATA_DIR = "data/MIT1003"
DEFAULT_LOG_DIR = "logs"
LOG_EVERY = 20  # steps between reads of the loss from the device (each read is a sync)
EPOCH_START = {"batch": 0, "sampler_state": None, "loss_sum": 0.0, "correct": 0.0, "seen": 0}
METRIC_LABELS = {"auc_shuffled": "sAUC", "auc_judd": "AUC-Judd"}


def parse_args(argv=None):
    """Command line -> argparse.Namespace; with --resume, the run's own flags are the defaults."""
    p = argparse.ArgumentParser(description="Train Mr-CNN / Mr-CNNs on MIT1003.",
                                formatter_class=HelpFormatter)
    add = p.add_argument
    add("--model", default="MrCNN", choices=MODELS, help="three streams or one shared stream")
    add("--data-dir", help=f"MIT-layout folder, a folder of the coursework's .pth.tar files, or "
        f"'{dataset.SYNTHETIC}' (default: {DEFAULT_DATA_DIR} if it exists, else synthetic)")
    add("--fold", type=int, help="cross-validation: hold out fold K of splits/mit1003_folds10.txt,"
        " validate on fold K+1, train on the other eight (default: the 803/100/100 split)")
    add("--epochs", type=int, help="epochs to train (default: 20; 3 on the synthetic set)")
    add("--batch-size", type=int, default=128, help="training batch size")
    add("--learning-rate", type=float, default=0.001, help="learning rate")
    add("--optimizer", default="adam", choices=("adam", "sgd"), help="adam, or SGD whose "
        f"momentum rises linearly from --momentum to {FINAL_MOMENTUM} (the paper)")
    add("--momentum", type=float, default=0.9, help="SGD momentum at epoch 1")
    add("--weight-decay", type=float, default=2e-4, help="weight decay")
    add("--lr-schedule", default="constant", choices=("constant", "cosine"), help="over epochs")
    add("--max-norm", type=float, default=0.0, help="clip conv1 filter norms (paper: 0.1)")
    add("--dropout", type=float, default=0.5, help="dropout probability")
    add("--batch-norm", action="store_true", help="BatchNorm after each conv (not the paper's)")
    add("--fixations-per-image", type=int, default=10, help="locations where map > 0.9 max")
    add("--non-fixations-per-image", type=int, default=20, help="locations where map < 0.1 max")
    add("--teacher", action="append", default=[], metavar="PATH", help="distil: train towards "
        "the mean dense map of these checkpoints (repeat the flag) instead of 1 / 0 labels")
    add("--teacher-blur", type=float, default=0.0, help="with --teacher: Gaussian blur of the "
        "teachers' mean map, sigma as a fraction of the image size")
    add("--uniform-locations-per-image", type=int, default=0, help="with --teacher: anywhere")
    add("--seed", type=int, default=0, help="seed of everything random")
    add("--device", default="auto", choices=DEVICES, help="auto: cuda if available")
    add("--precision", default="auto", choices=PRECISIONS, help="auto: bf16 if native, or fp32")
    add("-j", "--worker-count", type=int, default=os.cpu_count(), help="processes and threads "
        "(default: all cores)")
    add("--val-frequency", type=int, default=1, help="validate every N epochs")
    add("--checkpoint-frequency", type=int, default=5, help="also keep epoch<N>.pth every N "
        "epochs (0: never)")
    add("--patience", type=int, default=0, help="stop once val sAUC (AUC-Judd if val has one "
        "image) has not improved for N validations (0: run all --epochs)")
    add("--resume", metavar="PATH", help="continue the run saved in this checkpoint")
    add("--init-from", metavar="PATH", help="start a new run from this checkpoint's weights")
    add("--run-name", help="run folder (default: model, optimiser, lr, batch size, fold, time)")
    add("--checkpoint-dir", default="checkpoint", help="runs go to <dir>/<run>/")
    add("--log-dir", default=DEFAULT_LOG_DIR, help="TensorBoard events go to <dir>/<run>/")
    add("--cache-dir", default=".cache", help="resized images and teacher maps")
    args = p.parse_args(argv)
    if args.resume and Path(args.resume).is_file():
        p.set_defaults(**{k: v for k, v in resumed_args(args.resume).items() if k in vars(args)})
        args = p.parse_args(argv)
    return args


def check_args(args):
    """Reject settings the code cannot use, with one line naming every bad flag."""
    problems = [f"--{name.replace('_', '-')} must be at least {low} (got {value})"
                for name, low in (("epochs", 1), ("batch_size", 1), ("fixations_per_image", 1),
                                  ("non_fixations_per_image", 1), ("val_frequency", 1),
                                  ("checkpoint_frequency", 0), ("uniform_locations_per_image", 0),
                                  ("worker_count", 1), ("patience", 0))
                if (value := getattr(args, name)) is not None and value < low]
    for name, low, high, value in (
            ("learning-rate", 0, math.inf, args.learning_rate), ("dropout", 0, 1, args.dropout),
            ("momentum", 0, 1, args.momentum), ("weight-decay", 0, math.inf, args.weight_decay),
            ("max-norm", 0, math.inf, args.max_norm), ("teacher-blur", 0, 0.5, args.teacher_blur),
            ("seed", 0, 2 ** 32, args.seed)):
        if not (low <= value < high and (name != "learning-rate" or value > 0)):
            problems.append(f"--{name} must be in {'(['[name != 'learning-rate']}{low}, {high}) "
                            f"(got {value})")
    if args.fold is not None and not 0 <= args.fold < dataset.N_FOLDS:
        problems.append(f"--fold must be in 0..{dataset.N_FOLDS - 1} (got {args.fold})")
    if args.uniform_locations_per_image and not args.teacher:
        problems.append("--uniform-locations-per-image needs --teacher (no 1 / 0 label)")
    if args.run_name and (Path(args.run_name).name != args.run_name
                          or args.run_name in (".", "..")):
        problems.append(f"--run-name must be a folder name, not a path (got {args.run_name!r}): "
                        f"the run goes to --checkpoint-dir/<run-name>")
    if args.resume and args.init_from:
        problems.append("--resume and --init-from exclude each other: --resume continues a "
                        "run, --init-from starts a new one from its weights")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


def train_one_epoch(run, writer):
    """Train one epoch from batch ``run['progress']['batch']`` on -> (mean loss, accuracy, s,
    samples/s). A requested stop raises KeyboardInterrupt between steps, progress saved."""
    args, model, progress = run["args"], run["model"], run["progress"]
    model.train()
    if args.optimizer == "sgd":
        for group in run["optimizer"].param_groups:
            group["momentum"] = momentum_at(args.momentum, run["epoch"], args.epochs)
    if progress["batch"] == 0:
        progress["sampler_state"] = run["generator"].get_state()
    else:  # resuming an interrupted epoch: draw the same samples again
        run["generator"].set_state(progress["sampler_state"])
    index, rel, labels, flip = dataset.epoch_samples(
        run["train_set"], run["generator"], args.fixations_per_image,
        args.non_fixations_per_image, args.uniform_locations_per_image, run["targets"],
        device=run["device"])
    loss_sum, correct = (torch.full((), progress[k], device=run["device"])
                         for k in ("loss_sum", "correct"))
    seen = seen_before = progress["seen"]
    start, n_batches = time.perf_counter(), len(labels) // args.batch_size  # no ragged batch
    batches = range(progress["batch"], n_batches)
    for b in progress_report(batches, len(batches), f"epoch {run['epoch'] + 1}", "batch", 60):
        sl = slice(b * args.batch_size, (b + 1) * args.batch_size)
        crops = dataset.batch_crops(run["train_set"], run["train_scales"], index[sl],
                                    None if rel is None else rel[sl], flip[sl])
        logits, loss = train_step(model, run["optimizer"], crops, labels[sl], run["precision"],
                                  args.max_norm, run["scaler"])
        if run.pop("show_features", False):  # the first batch: what each scale's stream makes
            save_feature_maps(model, crops, labels[sl], writer, run["dir"] / "features",
                              run["step"])  # of both kinds of location
        loss_sum += loss.detach() * len(logits)
        correct += ((logits.detach() > 0) == (labels[sl] > 0.5)).sum()
        seen += len(logits)
        run["step"] += 1
        if run["stop"]:  # Ctrl-C / SIGTERM: stop between steps, never inside one
            progress.update(batch=b + 1, loss_sum=float(loss_sum), correct=float(correct),
                            seen=seen)
            raise KeyboardInterrupt
        if run["step"] % LOG_EVERY == 0:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at step {run['step']}")
            writer.add_scalar("train/loss", value, run["step"])
    seconds = time.perf_counter() - start
    mean_loss, accuracy = float(loss_sum) / max(seen, 1), float(correct) / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"loss became {mean_loss} in epoch {run['epoch'] + 1}")
    run["scheduler"].step()
    run["progress"] = dict(EPOCH_START)
    return mean_loss, accuracy, seconds, (seen - seen_before) / seconds


@torch.no_grad()
def validate(model, val_set, val_locations, scales, precision):
    """-> ({'loss' at fixed locations, mean 'auc_judd', 'auc_shuffled'}, the 50x50 maps)."""
    model.eval()
    index, rel, labels = val_locations
    total = 0.0
    with autocast_context(labels.device, precision):
        for chunk in torch.arange(len(labels), device=labels.device).split(1024):
            logits = model(dataset.cut_crops(scales, index[chunk], rel[chunk])).float()
            total += float(nn.functional.binary_cross_entropy_with_logits(
                logits, labels[chunk], reduction="sum"))
    maps = predict_maps(model, val_set, precision=precision)
    means, _ = metrics.evaluate_dataset(maps, val_set.fixations, val_set.densities,
                                        names=("auc_judd", "auc_shuffled"), workers=1)
    return {"loss": total / len(labels), **means}, maps


def checkpoint_state(run):
    """Everything a checkpoint holds (tensors and primitives only): see checkpoints.py."""
    model = run["model"]
    return {"model": run["args"].model, "model_state": model.state_dict(),
            "model_options": dict(run["model_options"]),
            "normalisation": {"mean": model.input_mean.tolist(), "std": model.input_std.tolist()},
            "optimizer_state": run["optimizer"].state_dict(),
            "scheduler_state": run["scheduler"].state_dict(),
            "scaler_state": None if run["scaler"] is None else run["scaler"].state_dict(),
            "epoch": run["epoch"], "step": run["step"], "best_metric": run["best"],
            "best_metric_name": run["selected_on"], "best_epoch": run["best_epoch"],
            "best_val": dict(run["best_val"]),
            "args": dict(vars(run["args"])), "command": run["command"], "run_name": run["name"],
            "data": run["data"], "epoch_progress": dict(run["progress"]),
            "rng_state": capture_rng(run["generator"])}


def restore(run, state):
    """Put a resumed run's optimiser, schedule, counters and RNG states back."""
    run["optimizer"].load_state_dict(state["optimizer_state"])
    run["scheduler"].load_state_dict(state["scheduler_state"])
    if run["scaler"] is not None and state.get("scaler_state"):
        run["scaler"].load_state_dict(state["scaler_state"])
    run.update(epoch=state["epoch"], step=state["step"], best=state["best_metric"],
               best_epoch=state.get("best_epoch", state["epoch"]),
               best_val=state.get("best_val", {}),
               progress=state.get("epoch_progress", dict(EPOCH_START)),
               command=state.get("command", run["command"]))
    restore_rng(state["rng_state"], run["generator"])


def build(args, command=""):
    """Everything a run needs, from checked arguments: the data, the model (new, resumed or
    --init-from), optimiser, teacher targets, val locations and the run folder, as a dict."""
    torch.set_num_threads(checked_worker_count(args.worker_count))
    device = pick_device(args.device)
    precision = pick_precision(args.precision, device)
    for seed_everything in (torch.manual_seed, np.random.seed, random.seed):
        seed_everything(args.seed)
    try:  # checkpoints are checked before the (slow) data
        resume_state = load_resumable(args.resume, args.batch_size) if args.resume else None
        init_state = load_checkpoint(args.init_from) if args.init_from else None
        teachers = [(path, load_checkpoint(path)) for path in args.teacher]
        sources = ([("--init-from", args.init_from, init_state)] if init_state else []) + [
            ("--teacher", path, state) for path, state in teachers]
    except CheckpointError as error:
        raise SystemExit(f"error: {error}")
    run_dir = None if resume_state is None else resume_dir(args, resume_state)
    refuse_leaks(sources, args.fold)
    source, source_path = resume_state or init_state, args.resume or args.init_from
    model = None if source is None else model_to_continue(source, source_path, args)
    if args.data_dir is None:  # resolved now, so that a resumed run reads the same data
        args.data_dir = (DEFAULT_DATA_DIR if Path(DEFAULT_DATA_DIR, dataset.STIMULI).is_dir()
                         else dataset.SYNTHETIC)
    try:
        train_set, val_set, data = dataset.load_training_data(
            args.data_dir, args.fold, args.cache_dir, args.worker_count, args.seed,
            expected=None if resume_state is None else resume_state.get("data"))
    except dataset.DatasetError as error:
        raise SystemExit(f"error: {error}")
    if args.epochs is None:
        args.epochs = 3 if data["source"] == dataset.SYNTHETIC else 20
    if resume_state is not None and resume_state["epoch"] >= args.epochs:
        raise SystemExit(f"error: {args.resume} already finished epoch {resume_state['epoch']}; "
                         f"pass a larger --epochs to continue")
    per_epoch = (len(train_set.samples[1]) if train_set.samples is not None else
                 train_set.n_trainable * (args.fixations_per_image + args.non_fixations_per_image
                                          + args.uniform_locations_per_image))
    if args.batch_size > per_epoch:
        raise SystemExit(f"error: --batch-size {args.batch_size} is larger than the {per_epoch} "
                         f"training samples per epoch; use a smaller batch")
    if args.teacher and train_set.samples is not None:
        raise SystemExit("error: --teacher needs whole training images (the MIT1003 layout), "
                         "not the coursework's pre-cut crops")
    if model is None:
        model = build_model(args.model, dropout=args.dropout, batch_norm=args.batch_norm)
        model.input_mean[:], model.input_std[:] = train_set.pixel_mean_std()
    model = model.to(device)
    optimizer, scheduler = make_optimizer(model, args.optimizer, args.learning_rate,
                                          args.weight_decay, args.momentum,
                                          args.lr_schedule, args.epochs)
    targets = (teacher_maps(teachers, train_set, args.cache_dir, device, precision,
                            args.teacher_blur) if args.teacher else None)  # before the folder
    ensure_log_dir(args.log_dir)
    if resume_state is None:
        fold = "" if args.fold is None else f"_fold{args.fold}"
        run_dir = new_run_dir(args.checkpoint_dir, args.run_name or time.strftime(
            f"{args.model}_{args.optimizer}_lr{args.learning_rate:g}_bs{args.batch_size}{fold}"
            f"_%Y%m%d-%H%M%S"), numbered=not args.run_name)
    run = {"args": args, "model": model, "optimizer": optimizer, "scheduler": scheduler,
           "scaler": torch.amp.GradScaler(device.type) if precision == "fp16" else None,
           "model_options": (resume_state or {}).get("model_options") or
           {"dropout": args.dropout, "batch_norm": args.batch_norm},
           "device": device, "precision": precision, "train_set": train_set, "data": data,
           "generator": torch.Generator().manual_seed(args.seed), "name": run_dir.name,
           "dir": run_dir, "epoch": 0, "step": 0, "best": -math.inf, "best_epoch": 0,
           "best_val": {}, "progress": dict(EPOCH_START), "command": command, "stop": False,
           "show_features": resume_state is None,
           "train_scales": [dataset.pad_images(s).to(device) for s in train_set.scales],
           "targets": targets}
    if resume_state is not None:
        restore(run, resume_state)
    run["selected_on"] = "auc_shuffled" if len(val_set) > 1 else "auc_judd"
    if run["selected_on"] != "auc_shuffled":  # sAUC's negatives are other val images' fixations
        warnings.warn("the val split holds 1 image, too few for sAUC: best.pth and --patience "
                      "go by val AUC-Judd instead")
    val_locations = dataset.sample_locations(val_set.maps, torch.Generator().manual_seed(12345))
    return run | {"val_set": val_set, "val_locations": [x.to(device) for x in val_locations],
                  "val_scales": [dataset.pad_images(s).to(device) for s in val_set.scales]}


def train(run):
    """The loop: train an epoch, validate, keep the best, checkpoint; Ctrl-C saves and stops.

    Returns (the last validation's results, whether the run was interrupted)."""
    from torch.utils.tensorboard import SummaryWriter
    args, val_set = run["args"], run["val_set"]

    def save(name):
        return save_checkpoint(checkpoint_state(run), run["dir"] / name)

    def on_stop_signal(signum, frame):
        if run["stop"]:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        run["stop"] = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a "
              f"checkpoint (press Ctrl-C again to stop at once)", file=sys.stderr)
    previous = {s: signal.signal(s, on_stop_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    writer = SummaryWriter(str(Path(args.log_dir) / run["name"]))
    print(f"run {run['name']}: {args.model}, epochs {run['epoch'] + 1}-{args.epochs} on "
          f"{args.data_dir} ({len(run['train_set'])} train / {len(val_set)} val images), "
          f"{run['device']} {run['precision']}; checkpoints in {run['dir']}, TensorBoard events "
          f"in {Path(args.log_dir) / run['name']}", flush=True)
    last_val, interrupted, finished = {}, False, False
    begun, first = time.perf_counter(), run["epoch"]
    partial = run["progress"]["batch"] > 0  # resumed inside an epoch

    def out_of_patience():
        return 0 < args.patience * args.val_frequency <= run["epoch"] - run["best_epoch"]
    try:
        while run["epoch"] < args.epochs and not out_of_patience():
            loss, accuracy, seconds, rate = train_one_epoch(run, writer)
            run["epoch"] += 1
            for key, value in (("epoch_loss", loss), ("accuracy", accuracy),
                               ("learning_rate", run["optimizer"].param_groups[0]["lr"]),
                               ("samples_per_second", rate)):
                writer.add_scalar(f"train/{key}", value, run["step"])
            line = (f"epoch {run['epoch']}/{args.epochs}: loss {loss:.4f} acc {accuracy:.3f} "
                    f"{seconds:.1f}s ({rate:.0f} samples/s)")
            if run["epoch"] % args.val_frequency == 0 or run["epoch"] == args.epochs:
                start = time.perf_counter()
                last_val, maps = validate(run["model"], val_set, run["val_locations"],
                                          run["val_scales"], run["precision"])
                log_validation(writer, run["model"], last_val, maps, val_set,
                               run["dir"] / "features", run["step"])
                line += (f" | val loss {last_val['loss']:.4f} AUC-Judd {last_val['auc_judd']:.4f}"
                         f" sAUC {last_val['auc_shuffled']:.4f} {time.perf_counter() - start:.1f}s")
                if last_val[run["selected_on"]] > run["best"]:
                    run.update(best=last_val[run["selected_on"]], best_epoch=run["epoch"],
                               best_val=dict(last_val))
                    save("best.pth")
            save("last.pth")
            if args.checkpoint_frequency and run["epoch"] % args.checkpoint_frequency == 0:
                save(f"epoch{run['epoch']}.pth")
            if partial:  # the time left is timed on whole epochs only
                begun, first, partial, left = time.perf_counter(), run["epoch"], False, None
            else:
                left = ((time.perf_counter() - begun) / (run["epoch"] - first)
                        * (args.epochs - run["epoch"]))
            done = f"done in {(time.perf_counter() - begun) / 60:.1f} min"
            # flushed: a redirected stdout would hold the line for hours
            print(line if left is None else f"{line} | " + (f"{left / 60:.1f} min left" if left
                                                            else done), flush=True)
            if run["stop"]:  # the signal came during validation or saving
                raise KeyboardInterrupt
        if out_of_patience():
            print(f"stopped early: val {METRIC_LABELS[run['selected_on']]} has not improved for "
                  f"{args.patience} validations (best {run['best']:.4f} at epoch "
                  f"{run['best_epoch']})", flush=True)
        save("final_model.pth")
        finished = True
    except KeyboardInterrupt:
        interrupted = True
        path = save("interrupted.pth")
        print(f"\ninterrupted: saved {path} (epoch {run['epoch']}, step {run['step']}); resume "
              f"with --resume {path}", file=sys.stderr)
    except FloatingPointError as error:
        raise SystemExit(f"error: {error}. Training stopped; the last good checkpoints in "
                         f"{run['dir']} are kept. Try a lower --learning-rate.")
    except WriteError as error:
        raise SystemExit(f"error: {error}. Free some space or pass another --checkpoint-dir, "
                         f"then --resume {run['dir'] / 'last.pth'}.")
    finally:
        release_run_dir(run["dir"])
        for s, handler in previous.items():
            signal.signal(s, handler)
        if finished and run["best_val"]:
            log_hparams(writer, args, run["best_val"], run["best_epoch"])
        writer.close()
    return last_val, interrupted


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    dataset.show_warnings_plainly()
    keep_freed_memory()
    command = shlex.join(["python", "main.py", *(sys.argv[1:] if argv is None else argv)])
    run = {}
    try:
        run = build(args, command)
        return 130 if train(run)[1] else 0
    except dataset.DatasetError as error:  # data that gives no training location
        raise SystemExit(f"error: {error}") from None
    except KeyboardInterrupt:  # before training started, or a second Ctrl-C while saving
        raise SystemExit(stopped_at_once(run.get("dir"))) from None


if __name__ == "__main__":
    sys.exit(main())
