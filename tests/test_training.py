"""main.py end to end on the synthetic set: learnability, exact resume, distillation targets,
the command line and its errors, and tools/train_folds.sh."""
import argparse
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import distil
import features
import inference
import main
import optimisation
from checkpoints import (CheckpointError, load_checkpoint, model_from_checkpoint,
                         refuse_changed_flags, save_checkpoint)
from conftest import PRETRAINED, ROOT, copy_run, make_args, write_mit_folder


def weights(path):
    return load_checkpoint(path)["model_state"]


def test_the_original_projects_flags_keep_their_meaning(tmp_path, small_synthetic, capsys):
    """--model, --learning-rate, --batch-size, --epochs, --val-frequency, --checkpoint-frequency,
    -j/--worker-count and --log-dir, as the coursework project's users type them."""
    assert main.parse_args([]).checkpoint_frequency == 5  # the original's default
    assert main.main(["--data-dir", "synthetic", "--checkpoint-dir", str(tmp_path / "ck"),
                      "--run-name", "r", "--model", "MrCNNs", "--learning-rate", "0.002",
                      "--batch-size", "48", "--epochs", "3", "--val-frequency", "2",
                      "--checkpoint-frequency", "2", "-j", "1",
                      "--log-dir", str(tmp_path / "tb")]) == 0
    assert torch.get_num_threads() == 1
    lines = capsys.readouterr().out.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [("val loss" in line) for line in epochs] == [False, True, True]  # 2, and the last
    run_dir = tmp_path / "ck" / "r"
    assert sorted(p.name for p in run_dir.glob("*.pth")) == [
        "best.pth", "epoch2.pth", "final_model.pth", "last.pth"]
    state = load_checkpoint(run_dir / "epoch2.pth")
    assert (state["epoch"], state["model"], state["args"]["learning_rate"]) == (2, "MrCNNs", 0.002)
    per_epoch = dataset.SYNTHETIC_SIZES["train"] * 30 // 48  # 30 locations a scene, whole batches
    assert state["step"] == 2 * per_epoch
    assert list((tmp_path / "tb" / "r").glob("events.out.tfevents.*"))
    assert not list(run_dir.glob("events.out.*"))
    torch.set_num_threads(os.cpu_count())


def test_help_lists_at_most_32_options_with_the_original_flags_among_them(tmp_path):
    result = run_main(tmp_path, "--help")
    options = [line.split()[0].rstrip(",") for line in result.stdout.splitlines()
               if line.startswith("  -")]
    assert result.returncode == 0 and len(options) <= 32
    for flag in ("--model", "--learning-rate", "--batch-size", "--epochs", "--val-frequency",
                 "--checkpoint-frequency", "-j", "--log-dir"):
        assert flag in options, flag


def test_tensorboard_shows_labelled_features_inputs_beside_maps_and_result_changing_hparams(
        tmp_path, small_synthetic):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    run = main.build(make_args(tmp_path, "--epochs", "1", "--batch-size", "64", "--model",
                               "MrCNNs", "--batch-norm"))
    main.train(run)
    events = EventAccumulator(str(tmp_path / "logs" / "run"), size_guidance={"images": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    for size in dataset.SCALES:  # MrCNNs: the shared stream on each scale
        assert {f"features/scale{size}/sample0_fixation", f"features/scale{size}/sample1_fixation",
                f"features/scale{size}/sample2_non_fixation",
                f"features/scale{size}/sample3_non_fixation"} <= images
    assert "features/conv1_filters" in images  # one stream, one set of filters
    shown = sorted(run["val_set"].names)[:3]
    for name in shown:  # image | fixation density | prediction, at the image's size
        [picture] = events.Images(f"val/{name}")
        assert (picture.width, picture.height) == (3 * 400 + 8, 400)
    assert not [tag for tag in images if tag.startswith("val/") and tag[4:] not in shown]
    content = events.PluginTagToContent("hparams")
    run_row = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    assert set(run_row.hparams) == {*features.HPARAMS, "data", "teachers"}
    assert run_row.hparams["batch_norm"].string_value == "true"
    assert run_row.hparams["fold"].string_value == "none"
    assert run_row.hparams["data"].string_value == "synthetic"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {
        "best/val_loss", "best/val_auc_judd", "best/val_auc_shuffled", "best/epoch"}


def test_a_constant_activation_is_drawn_mid_grey():
    grid = features.image_grid(torch.stack([torch.full((4, 4), 3.0), torch.arange(16.0).view(
        4, 4)]), columns=2)
    assert torch.all(grid[:4, :4] == 0.5)
    assert grid[:4, 5:9].min() == 0 and grid[:4, 5:9].max() == 1


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(
        tmp_path, small_synthetic, shared_runs):
    saved = copy_run(shared_runs["one_epoch"], tmp_path / "checkpoint" / "run") / "last.pth"
    run = main.build(make_args(tmp_path, "--epochs", "2", "--batch-size", "64", "--resume",
                               str(saved)))
    assert (run["epoch"], run["step"]) == (1, load_checkpoint(saved)["step"])
    main.train(run)
    straight = weights(shared_runs["two_epochs"] / "final_model.pth")
    resumed = weights(saved.parent / "final_model.pth")
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


def test_a_resumed_run_keeps_its_data_when_data_mit1003_appears(tmp_path, small_synthetic,
                                                                 monkeypatch, shared_runs):
    """A run started without --data-dir (no data/MIT1003: the synthetic set) resumes on the
    synthetic set once data/MIT1003 exists, and ends as a straight run of the same flags."""
    monkeypatch.chdir(tmp_path)
    flags = ["--checkpoint-dir", "ck", "--cache-dir", "cache", "--run-name", "s", "-j", "2",
             "--batch-size", "64"]
    assert main.main([*flags, "--epochs", "1"]) == 0
    write_mit_folder(tmp_path / "data" / "MIT1003", ["a", "b", "c"])  # a user adds data
    assert main.main(["--resume", "ck/s/last.pth", "--epochs", "2", "-j", "2"]) == 0
    straight = weights(shared_runs["two_epochs"] / "final_model.pth")
    resumed = weights("ck/s/final_model.pth")
    assert all(torch.equal(value, resumed[name]) for name, value in straight.items())
    assert not (tmp_path / "cache").exists()  # MIT1003 was never read


def _train_one_epoch_on_a_tiny_mit_folder(tmp_path):
    """-> (the data folder, last.pth of a one-epoch run on it)."""
    data = tmp_path / "data"
    write_mit_folder(data, [f"img{i}" for i in range(6)])
    main.train(main.build(main.parse_args([
        "--data-dir", str(data), "--checkpoint-dir", str(tmp_path / "ck"), "--cache-dir",
        str(tmp_path / "cache"), "--run-name", "r", "-j", "1", "--batch-size", "16",
        "--epochs", "1"])))
    return data, tmp_path / "ck" / "r" / "last.pth"


def test_a_val_split_of_one_image_picks_the_best_epoch_by_auc_judd_and_says_so(tmp_path,
                                                                               monkeypatch):
    """sAUC needs other images' fixations: with one val image it is NaN, which never beats the
    best so far, so best.pth was never written."""
    monkeypatch.setattr(dataset, "SPLIT_DIR", ROOT / "splits")  # not tiny_splits: MIT1003's
    data = tmp_path / "data"
    write_mit_folder(data, ["a", "b", "c"])  # a split of its own: 1 train / 1 val / 1 test
    with pytest.warns(UserWarning) as caught:  # and that the folder gets a split of its own
        run = main.build(main.parse_args([
            "--data-dir", str(data), "--checkpoint-dir", str(tmp_path / "ck"), "--cache-dir",
            str(tmp_path / "cache"), "--run-name", "r", "-j", "1", "--batch-size", "8",
            "--epochs", "1"]))
    assert any("the val split holds 1 image, too few for sAUC: best.pth and --patience go by "
               "val AUC-Judd" in str(warning.message) for warning in caught)
    last_val, _ = main.train(run)
    best = load_checkpoint(tmp_path / "ck" / "r" / "best.pth")
    assert math.isnan(last_val["auc_shuffled"]) and best["best_metric_name"] == "auc_judd"
    assert best["best_metric"] == last_val["auc_judd"] and best["epoch"] == 1


def test_resuming_a_run_whose_data_changed_is_one_clear_error(tmp_path):
    data, last = _train_one_epoch_on_a_tiny_mit_folder(tmp_path)
    density = np.zeros((48, 64), np.uint8)
    density[30:40, 30:40] = 255
    Image.fromarray(density).save(data / dataset.MAPS / "img0_fixMap.jpg")  # an edited map
    with pytest.raises(SystemExit, match="changed since the run started"):
        main.build(main.parse_args(["--resume", str(last), "--epochs", "2"]))


def test_a_run_resumes_on_a_copy_of_its_data_with_other_file_times(tmp_path):
    data, last = _train_one_epoch_on_a_tiny_mit_folder(tmp_path)
    copy = tmp_path / "scratch" / "MIT1003"  # e.g. staged onto a cluster node's local disk
    shutil.copytree(data, copy)
    for file in copy.rglob("*.jp*g"):
        os.utime(file, ns=(10**18, 10**18))
    before = dataset.load_training_data(data, cache_dir=tmp_path / "cache")[2]
    after = dataset.load_training_data(copy, cache_dir=tmp_path / "cache")[2]
    assert before["cache_key"] != after["cache_key"]  # the file times did change ...
    run = main.build(main.parse_args(["--resume", str(last), "--data-dir", str(copy),
                                      "--epochs", "2"]))
    assert run["epoch"] == 1  # ... and the same content resumes


def test_a_checkpoint_from_before_content_keys_is_checked_by_file_times(tmp_path):
    data, last = _train_one_epoch_on_a_tiny_mit_folder(tmp_path)
    state = torch.load(last, weights_only=True)
    del state["data"]["content_key"]
    torch.save(state, last)
    resume = lambda: main.build(main.parse_args(["--resume", str(last), "--epochs", "2"]))
    assert resume()["epoch"] == 1
    os.utime(data / dataset.MAPS / "img0_fixMap.jpg", ns=(10**18, 10**18))
    with pytest.raises(SystemExit, match="changed since the run started"):
        resume()


@pytest.fixture(autouse=True)
def tiny_splits(monkeypatch, tmp_path_factory):
    """Split files for write_mit_folder's img0..img5: train img0-img5, val img0-img1."""
    folder = tmp_path_factory.mktemp("splits")
    (folder / "mit1003_train.txt").write_text("\n".join(f"img{i}" for i in range(6)))
    (folder / "mit1003_val.txt").write_text("img0\nimg1\n")
    monkeypatch.setattr(dataset, "SPLIT_DIR", folder)


def test_fp16_steps_use_a_grad_scaler_that_skips_overflowing_steps(tmp_path, small_synthetic):
    from MrCNN import MrCNN
    torch.manual_seed(0)
    model = MrCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    crops, target = torch.rand(4, 3, 3, 42, 42), torch.tensor([1.0, 0.0, 1.0, 0.0])
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)  # scaled loss overflows fp32
    optimisation.train_step(model, optimizer, crops, target, "fp16", scaler=scaler)
    assert scaler.get_scale() == 2.0 ** 99  # overflow seen: the scale backs off ...
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # ... no step
    scaler = torch.amp.GradScaler("cpu")
    optimisation.train_step(model, optimizer, crops, target, "fp16", scaler=scaler)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert main.build(make_args(tmp_path / "a", "--precision", "fp16"))["scaler"] is not None
    assert main.build(make_args(tmp_path / "b", "--precision", "bf16"))["scaler"] is None


def test_init_from_starts_a_new_run_from_the_shipped_weights(tmp_path, small_synthetic):
    shipped = PRETRAINED / "MrCNN.pth"
    run = main.build(make_args(tmp_path, "--init-from", str(shipped)))
    state = load_checkpoint(shipped)
    for name, value in run["model"].state_dict().items():
        torch.testing.assert_close(value.cpu(), state["model_state"][name].float(), msg=name)
    assert (run["epoch"], run["step"]) == (0, 0) and not run["optimizer"].state


def test_resume_takes_the_runs_own_flags_as_defaults(tmp_path, small_synthetic):
    flags = ("--model", "MrCNNs", "--lr-schedule", "cosine", "--weight-decay", "0.001",
             "--non-fixations-per-image", "12", "--epochs", "1", "-j", "1")
    main.train(main.build(make_args(tmp_path, *flags)))
    saved = tmp_path / "checkpoint" / "run" / "final_model.pth"
    args = main.parse_args(["--resume", str(saved), "--epochs", "2"])
    assert (args.model, args.lr_schedule, args.weight_decay) == ("MrCNNs", "cosine", 0.001)
    assert (args.non_fixations_per_image, args.data_dir) == (12, "synthetic")
    assert args.epochs == 2  # as given
    assert args.worker_count == os.cpu_count()  # this machine's, not the run's -j 1
    run = main.build(args)
    assert run["epoch"] == 1 and run["name"] == "run"


def test_resuming_a_checkpoint_that_the_run_has_gone_past_is_refused_and_overwrites_nothing(
        tmp_path, small_synthetic, shared_runs):
    flags = ("--batch-size", "64", "--epochs", "3")
    run_dir = copy_run(shared_runs["one_epoch"], tmp_path / "checkpoint" / "run")
    shutil.copy(run_dir / "last.pth", run_dir / "interrupted.pth")  # a stop at epoch 1 ...
    later = load_checkpoint(run_dir / "last.pth")  # ... that was resumed and went on
    save_checkpoint(later | {"epoch": 2, "step": 2 * later["step"]}, run_dir / "last.pth")
    before = {p.name: p.read_bytes() for p in run_dir.glob("*.pth")}
    with pytest.raises(SystemExit, match=r"last.pth is from a later point of this run \(epoch 2"):
        main.build(make_args(tmp_path, *flags, "--resume", str(run_dir / "interrupted.pth")))
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.pth")} == before
    assert main.build(make_args(tmp_path, *flags, "--resume",
                                str(run_dir / "last.pth")))["epoch"] == 2


def test_init_from_takes_dropout_from_the_command_line_and_records_it(tmp_path, small_synthetic):
    shipped = PRETRAINED / "MrCNN.pth"
    assert load_checkpoint(shipped)["model_options"]["dropout"] == 0.5
    run = main.build(make_args(tmp_path, "--init-from", str(shipped), "--dropout", "0.1"))
    rates = {m.p for m in run["model"].modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.1}
    assert main.checkpoint_state(run)["model_options"] == {"dropout": 0.1, "batch_norm": False}
    with pytest.raises(SystemExit, match="was trained without --batch-norm"):
        main.build(make_args(tmp_path / "b", "--init-from", str(shipped), "--batch-norm"))


def test_distillation_targets_are_the_teachers_mean_map_at_every_drawn_location(tmp_path,
                                                                                small_synthetic):
    """The shipped recipe's targets: two teachers, blur 0.03, uniform locations on top."""
    teachers = [str(PRETRAINED / "teachers" / "MrCNN.pth"), str(PRETRAINED / "MrCNNs.pth")]
    run = main.build(make_args(tmp_path, "--teacher", teachers[0], "--teacher", teachers[1],
                               "--teacher-blur", "0.03", "--non-fixations-per-image", "10",
                               "--uniform-locations-per-image", "10", "--precision", "fp32"))
    train_set = run["train_set"]
    generator = torch.Generator().manual_seed(5)
    index, rel, targets, _ = dataset.epoch_samples(train_set, generator, 10, 10, 10,
                                                   run["targets"])
    assert len(targets) == 30 * len(train_set) and torch.isfinite(targets).all()
    grids = [inference.predict_maps(model_from_checkpoint(load_checkpoint(t)), train_set,
                                    precision="fp32") for t in teachers]
    for k in range(0, len(targets), 97):  # independent of teacher_maps: per image, by hand
        i = int(index[k])
        mean = inference.blur_map((grids[0][i] + grids[1][i]) / 2, 0.03)  # [200, 200]
        y, x = (rel[k] * 200 - 0.5).clamp(0, 199).tolist()  # bilinear at pixel centres
        y0, x0 = min(int(y), 198), min(int(x), 198)
        dy, dx = y - y0, x - x0
        expected = ((1 - dy) * (1 - dx) * mean[y0, x0] + (1 - dy) * dx * mean[y0, x0 + 1]
                    + dy * (1 - dx) * mean[y0 + 1, x0] + dy * dx * mean[y0 + 1, x0 + 1])
        assert float(targets[k]) == pytest.approx(float(expected), abs=1e-5)
    assert ((targets > 0.05) & (targets < 0.95)).float().mean() > 0.5  # soft, not 0 / 1


def test_teacher_maps_are_cached_and_an_unreadable_cache_file_is_recomputed(tmp_path,
                                                                           small_synthetic):
    train_set = dataset.load_synthetic(6, seed=0)
    device, cache = torch.device("cpu"), tmp_path / "cache"
    path = str(PRETRAINED / "MrCNNs.pth")
    shipped = [(path, load_checkpoint(path))]
    first = distil.teacher_maps(shipped, train_set, cache, device, "fp32")
    [cached] = (cache / "teacher_maps").glob("*.pt")
    torch.testing.assert_close(torch.load(cached, weights_only=True), first)
    torch.save(torch.full_like(first, 0.25), cached)  # a stand-in that only the cache can give
    assert torch.equal(distil.teacher_maps(shipped, train_set, cache, device, "fp32"),
                       torch.full_like(first, 0.25))
    cached.write_bytes(b"not a tensor")
    torch.testing.assert_close(distil.teacher_maps(shipped, train_set, cache, device, "fp32"),
                               first)
    path = str(PRETRAINED / "MrCNN.pth")
    other = distil.teacher_maps([(path, load_checkpoint(path))], train_set, cache, device,
                                "fp32")
    assert len(list(cached.parent.glob("*.pt"))) == 2 and not torch.allclose(other, first)


def test_a_run_draws_the_same_random_numbers_whether_its_teacher_maps_are_cached_or_not(
        tmp_path):
    """Dropout and everything else after the teacher maps come from the global RNG: a cold and a
    warm cache must leave it in the same state, or two runs of one command differ."""
    train_set = dataset.load_synthetic(4, seed=0)
    path = str(PRETRAINED / "MrCNNs.pth")
    teachers = [(path, load_checkpoint(path))]
    after = []
    for _ in range(2):  # the first call fills the cache, the second reads it
        torch.manual_seed(0)
        distil.teacher_maps(teachers, train_set, tmp_path, torch.device("cpu"), "fp32")
        after.append(torch.rand(8))
    assert len(list((tmp_path / "teacher_maps").glob("*.pt"))) == 1
    assert torch.equal(after[0], after[1])


def test_a_new_run_never_shares_its_folder_with_another_run(tmp_path, small_synthetic):
    args = make_args(tmp_path, "--run-name", "same")
    first = main.build(args)
    with pytest.raises(SystemExit, match="already exists and holds no checkpoint"):
        main.build(make_args(tmp_path, "--run-name", "same"))
    (first["dir"] / "last.pth").write_bytes(b"")
    with pytest.raises(SystemExit, match="pass another --run-name, or continue that run with "
                                         "--resume .*same/last.pth"):
        main.build(make_args(tmp_path, "--run-name", "same"))
    args.run_name = None  # default names: same flags, same second -> numbered folders
    folders = {main.build(args)["dir"] for _ in range(2)}
    assert len(folders) == 2 and first["dir"] not in folders


def run_main(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--learning-rate", "-0.1"], "--learning-rate must be in"),
    (["--weight-decay", "-1"], "--weight-decay must be in"),
    (["--fixations-per-image", "-3"], "--fixations-per-image must be at least 1"),
    (["--seed", "-1"], "--seed must be in [0, 4294967296)"),
    (["--fold", "10"], "--fold must be in 0..9"),
    (["--run-name", "../elsewhere"], "--run-name must be a folder name, not a path"),
    (["--run-name", "a/b"], "--run-name must be a folder name, not a path"),
    (["--model", "VGG"], "invalid choice"),
    (["--data-dir", "does/not/exist"], "does not exist"),
    (["--batch-size", "100000"], "larger than"),
    (["--resume", "a.pth", "--init-from", "b.pth"], "exclude each other"),
    (["--init-from", "missing.pth"], "missing.pth does not exist"),
    (["--uniform-locations-per-image", "5"], "needs --teacher"),
    (["--teacher", "missing.pth"], "missing.pth does not exist"),
    (["--teacher-blur", "-0.1"], "--teacher-blur must be in [0, 0.5)"),
    (["--resume", str(PRETRAINED / "MrCNN.pth")],
     "holds weights only (a shipped model), not a run to resume. Use --init-from"),
    (["--resume", str(PRETRAINED / "MrCNNs.pth"), "--model", "MrCNN"],
     "holds weights only"),
])
def test_bad_arguments_exit_with_one_clear_line(tmp_path, monkeypatch, capsys, args, message):
    """In the test's process (any exception but SystemExit fails it); the SIGINT and
    first-command tests run main.py as a process."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main.main(["--data-dir", "synthetic", *args])
    code = exit_.value.code
    said = (code if isinstance(code, str) else "") + capsys.readouterr().err  # or argparse's
    assert code not in (0, None) and message in said
    assert not (tmp_path / "checkpoint").exists()  # a refused run leaves no folder


@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "sgd"], "--optimizer sgd (the run's: adam)"),  # was a KeyError
    (["--learning-rate", "0.01", "--lr-schedule", "cosine"],  # were ignored, yet recorded
     "--learning-rate 0.01 (the run's: 0.001), --lr-schedule cosine (the run's: constant)"),
    (["--batch-norm", "--dropout", "0.2"], "--batch-norm on (the run's: off), --dropout 0.2"),
    (["--fold", "3"], "--fold 3 (the run's: none)"),
    (["--seed", "5"], "--seed 5 (the run's: 0)")])
def test_resume_refuses_flags_that_its_saved_state_fixes(tmp_path, flags, message):
    saved = tmp_path / "last.pth"
    save_checkpoint({"model": "MrCNN", "model_state": {}, "optimizer_state": {},
                     "args": vars(main.parse_args(["--data-dir", "synthetic"]))}, saved)
    with pytest.raises(SystemExit, match=f"cannot change {re.escape(message)}"):
        main.build(main.parse_args(["--resume", str(saved), *flags, "--epochs", "30"]))
    allowed = main.parse_args(["--resume", str(saved), "--epochs", "30", "--patience", "3",
                               "--batch-size", "64", "--momentum", "0.95"])
    refuse_changed_flags(allowed, load_checkpoint(saved)["args"])  # no SystemExit


def test_a_teacher_or_start_that_trained_on_the_held_out_images_is_refused(tmp_path):
    fold3 = load_checkpoint(PRETRAINED / "MrCNN.pth")
    fold3["args"] = {**fold3["args"], "fold": 3}
    torch.save(fold3, tmp_path / "fold3.pth")
    shipped, fold3 = str(PRETRAINED / "MrCNN.pth"), str(tmp_path / "fold3.pth")
    for args, message in (
            (["--fold", "3", "--teacher", shipped], f"--teacher {shipped} comes from a run on "
             "the 803/100/100 split, which trained on images that this run (--fold 3) holds out"),
            (["--init-from", fold3], f"--init-from {fold3} comes from a run on --fold 3, which "
             "trained on images that this run (the 803/100/100 split) holds out"),
            (["--fold", "4", "--init-from", fold3, "--teacher", fold3], "(--fold 4) holds out"),
            # the same fold passes (synthetic data has no folds: the next check stops it)
            (["--fold", "3", "--init-from", fold3, "--teacher", fold3], "--fold needs the MIT")):
        result = run_main(tmp_path, "--data-dir", "synthetic", *args)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    result = run_main(tmp_path, "--resume", str(path))
    assert result.returncode != 0 and "not a loadable checkpoint" in result.stderr
    assert "pwned" not in result.stdout and "Traceback" not in result.stderr
    for name, reduced in (("calls os.system", (os.system, ("echo pwned",))),
                          ("holds a Namespace", (argparse.Namespace, ()))):
        Evil.__reduce__ = lambda self, reduced=reduced: reduced
        torch.save({"model": "MrCNN", "model_state": {}, "x": Evil()}, tmp_path / "evil.pth")
        with pytest.raises(CheckpointError) as error:  # a refusal, not a damaged file
            load_checkpoint(tmp_path / "evil.pth")
        assert "that a safe load refuses" in str(error.value) and "damaged" not in \
            str(error.value), name


def test_patience_stops_a_run_once_val_sauc_stalls_and_a_resumed_run_stays_stopped(
        tmp_path, small_synthetic, monkeypatch, capsys):
    scores, real_validate = iter([0.70, 0.65, 0.99]), main.validate

    def scripted_validate(*args):  # the real validation, with a scripted val sAUC
        result, maps = real_validate(*args)
        return {**result, "auc_shuffled": next(scores)}, maps
    monkeypatch.setattr(main, "validate", scripted_validate)
    main.train(main.build(make_args(tmp_path, "--epochs", "3", "--patience", "1",
                                    "--batch-size", "64")))
    run_dir = tmp_path / "checkpoint" / "run"
    assert load_checkpoint(run_dir / "final_model.pth")["epoch"] == 2  # no gain at 2
    assert load_checkpoint(run_dir / "best.pth")["epoch"] == 1
    assert "stopped early" in capsys.readouterr().out
    resumed = main.build(main.parse_args(["--resume", str(run_dir / "last.pth")]))
    main.train(resumed)  # out of patience already: nothing more is trained
    assert resumed["epoch"] == 2 and next(scores) == 0.99


def test_a_nan_loss_stops_the_run_with_a_message_and_keeps_earlier_checkpoints(tmp_path,
                                                                                small_synthetic,
                                                                                monkeypatch):
    def nan_step(model, optimizer, crops, target, *args):
        logits, loss = optimisation.train_step(model, optimizer, crops, target, *args)
        return logits, loss * float("nan")
    monkeypatch.setattr(main, "train_step", nan_step)
    with pytest.raises(SystemExit, match="loss became nan"):
        main.train(main.build(make_args(tmp_path, "--epochs", "2", "--batch-size", "64")))
    assert not (tmp_path / "checkpoint" / "run" / "final_model.pth").exists()


def test_the_first_command_of_the_readme_trains_the_synthetic_set_in_an_empty_folder(tmp_path):
    """python main.py, nothing else: 3 epochs of the synthetic set lift val AUC-Judd well above
    chance, and every output lands where the README says."""
    result = run_main(tmp_path, "-j", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SYNTHETIC" in result.stderr and "epochs 1-3 on synthetic" in result.stdout
    lines = result.stdout.splitlines()
    assert "min left" in lines[1]  # the first epoch line says how long
    assert lines[3].startswith("epoch 3/3") and "done in" in lines[3]  # the last, how long it took
    assert float(re.search(r"AUC-Judd ([\d.]+)", lines[3])[1]) > 0.65
    [run_dir] = (tmp_path / "checkpoint").iterdir()
    for name in ("best.pth", "last.pth", "final_model.pth", "features/conv1_filters_scale250.png",
                 "features/scale150_sample0_fixation.png"):
        assert (run_dir / name).is_file(), name
    state = load_checkpoint(run_dir / "final_model.pth")
    assert state["data"]["source"] == "synthetic" and state["epoch"] == 3
    assert list((tmp_path / "logs" / run_dir.name).glob("events.out.*"))  # as the original
    assert not (tmp_path / ".cache").exists()  # nothing decoded: no dataset was read


FAKE_PYTHON = """import json, sys
from pathlib import Path
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[0] == "main.py":  # a fold run: finish it, unless it is the fold told to fail
    run = (Path(args[args.index("--resume") + 1]).parent if "--resume" in args else
           Path(args[args.index("--checkpoint-dir") + 1]) / args[args.index("--run-name") + 1])
    if run.name == {failing!r}:
        sys.exit(1)
    run.mkdir(parents=True, exist_ok=True)
    (run / "final_model.pth").write_text("")
    print(f"run {{run.name}} finished")
if args[0] == "test.py" and "--split" in args:  # a fold scored: its metrics.json
    out = Path(args[args.index("--output-dir") + 1])
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("{{}}")
"""


def run_train_folds(tmp_path, failing="", data="/data/MIT"):
    """tools/train_folds.sh with a stand-in for python that records each call and finishes
    each fold run -> (exit status, stdout and fold logs, [argument lists of the calls])."""
    log, fake = tmp_path / "calls.jsonl", tmp_path / "fake_python"
    fake.write_text(f"#!{sys.executable}\n" + FAKE_PYTHON.format(log=str(log), failing=failing))
    fake.chmod(0o755)
    env = {**os.environ, "PY": str(fake), "NAME": "t", "PARALLEL": "3", "DATA": data,
           "CHECKPOINTS": str(tmp_path / "ck"), "OUT": str(tmp_path / "out")}
    result = subprocess.run(["bash", str(ROOT / "tools" / "train_folds.sh"), "--epochs", "12",
                             "--teacher", "t_fold{K}/best.pth"],
                            env=env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    logs = "".join(p.read_text() for p in sorted((tmp_path / "ck" / "logs_t").glob("*.log")))
    return result.returncode, result.stdout + logs, calls


def test_the_fold_script_skips_finished_folds_resumes_stopped_ones_and_scores_all_ten(tmp_path):
    """Finished folds are skipped, stopped ones resumed from their newest checkpoint (an
    interrupted.pth that a resumed run has since gone past is stale) with their logs kept, new
    ones started with {K} in their arguments replaced by the fold; then the ten are scored."""
    ck = tmp_path / "ck"
    for k, names in ((0, ["final_model.pth"]), (1, ["last.pth", "interrupted.pth"]),
                     (2, ["last.pth"]), (3, ["interrupted.pth", "last.pth"])):
        (ck / f"t_fold{k}").mkdir(parents=True)
        for age, name in enumerate(reversed(names)):  # the last named is the newest
            (ck / f"t_fold{k}" / name).write_text("")
            os.utime(ck / f"t_fold{k}" / name, (1e9 - 100 * age, 1e9 - 100 * age))
    (ck / "logs_t").mkdir()
    (ck / "logs_t" / "fold2.log").write_text("epoch 1/12: before the stop\n")
    status, _, calls = run_train_folds(tmp_path)
    assert status == 0
    assert (ck / "logs_t" / "fold2.log").read_text().splitlines()[:2] == [
        "epoch 1/12: before the stop", "run t_fold2 finished"]  # the resumed fold's log grows
    runs = sorted(call for call in calls if call[0] == "main.py")
    assert runs == sorted(
        [["main.py", "--resume", f"{ck}/t_fold{k}/{name}", "--data-dir", "/data/MIT",
          "--checkpoint-dir", str(ck)]
         for k, name in ((1, "interrupted.pth"), (2, "last.pth"), (3, "last.pth"))]
        + [["main.py", "--data-dir", "/data/MIT", "--fold", str(k), "--run-name", f"t_fold{k}",
            "--checkpoint-dir", str(ck), "--epochs", "12", "--teacher", f"t_fold{k}/best.pth"]
           for k in range(4, 10)])
    out = tmp_path / "out"
    scored = sorted(call for call in calls if call[0] == "test.py" and "--split" in call)
    assert scored == sorted(["test.py", "--data-dir", "/data/MIT", "--checkpoint",
                             f"{ck}/t_fold{k}/best.pth", "--split", f"fold{k}/test",
                             "--output-dir", f"{out}/fold{k}"] for k in range(10))
    assert calls[-1] == ["test.py", "--data-dir", "/data/MIT", "--output-dir", str(out),
                         "--folds", *(f"{out}/fold{k}" for k in range(10))]
    status, _, again = run_train_folds(tmp_path)  # all trained and scored: pooled only
    assert status == 0 and [call[0] for call in again[len(calls):]] == ["-c", "test.py"]


def test_the_fold_script_restarts_a_fold_stopped_before_its_first_checkpoint(tmp_path):
    """A fold killed before it saved anything leaves a folder without a checkpoint: it is set
    aside (kept) and the fold starts anew, unless a live process holds its lock. A data path
    with an apostrophe reaches python as an argument, never pasted into code."""
    ck, data = tmp_path / "ck", "/data/O'Brien's/MIT"
    (ck / "t_fold4" / "features").mkdir(parents=True)
    (ck / "t_fold5").mkdir()
    (ck / "t_fold5" / ".lock").write_text(f"{os.getpid()} {socket.gethostname()}")
    (tmp_path / "out" / "fold7").mkdir(parents=True)  # scored and kept: not trained again
    (tmp_path / "out" / "fold7" / "metrics.json").write_text("{}")
    status, output, calls = run_train_folds(tmp_path, data=data)
    assert calls[0][0] == "-c" and calls[0][-1] == data
    assert status == 1 and "fold 4 had no checkpoint" in output
    assert "fold 5 is being run by process" in output and "fold 5 did not finish" in output
    [stopped] = ck.glob("t_fold4.stopped-*")
    assert (stopped / "features").is_dir()
    started = {call[call.index("--fold") + 1] for call in calls if "--fold" in call}
    assert started == {str(k) for k in range(10) if k not in (5, 7)}
    assert not any("fold7/test" in call for call in calls)


def test_the_fold_script_scores_nothing_while_a_fold_is_unfinished(tmp_path):
    status, stdout, calls = run_train_folds(tmp_path, failing="t_fold4")
    assert status == 1 and "fold 4 did not finish" in stdout
    assert not any("--folds" in call for call in calls)
    assert sum(call[0] == "main.py" for call in calls) == 10
    scored = {call[call.index("--split") + 1] for call in calls if "--split" in call}
    assert scored == {f"fold{k}/test" for k in range(10) if k != 4}  # kept as they finish


FREE_64_MB = """
import os, sys, torch
from devices import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
def resident_mb():
    pages = int(open("/proc/self/statm").read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
before = resident_mb()
activations = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
held = resident_mb() - before
del activations
print(held, resident_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or
                    platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_kept_for_the_next_step_rather_than_handed_back_to_the_kernel():
    """64 MB of activations freed: malloc's defaults give the block back to the kernel (to be
    faulted in again, zeroed, by the next step); kept, it stays in the process for reuse."""
    after_free = {}
    for mode in ("default", "kept"):
        result = subprocess.run([sys.executable, "-c", FREE_64_MB, mode], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        held, after_free[mode] = map(float, result.stdout.split())
        assert held > 60, result.stdout
    assert after_free["default"] < 10 and after_free["kept"] > 60, after_free
