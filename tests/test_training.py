"""main.py end to end on the synthetic set: learnability, exact resume, the CLI and its errors."""
import os
import subprocess
import sys

import pytest
import torch

import dataset
import inference
import main
from checkpoints import load_checkpoint
from conftest import ROOT


def make_args(tmp_path, *extra):
    return main.parse_args(["--checkpoint-dir", str(tmp_path / "checkpoint"), "--log-dir",
                            str(tmp_path / "logs"), "--cache-dir", str(tmp_path / "cache"),
                            "--run-name", "run", "-j", "2", *extra])


def test_a_few_epochs_on_the_synthetic_set_lift_val_auc_well_above_chance(tmp_path):
    trainer = main.Trainer(make_args(tmp_path, "--epochs", "3"))
    result, interrupted = trainer.train(progress=False)
    assert not interrupted
    assert result["auc_judd"] > 0.65
    for name in ("best.pth", "final_model.pth"):
        assert (tmp_path / "checkpoint" / "run" / name).is_file()
    assert (tmp_path / "checkpoint" / "run" / "features" / "conv1_filters.png").is_file()


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(tmp_path,
                                                                               small_synthetic):
    flags = ("--epochs", "2", "--checkpoint-frequency", "1", "--batch-size", "64")
    straight = main.Trainer(make_args(tmp_path / "a", *flags))
    straight.train(progress=False)

    first = main.Trainer(make_args(tmp_path / "b", "--epochs", "1", *flags[2:]))
    first.train(progress=False)
    saved = tmp_path / "b" / "checkpoint" / "run" / "epoch_1.pth"
    resumed = main.Trainer(make_args(tmp_path / "b", *flags, "--resume", str(saved)))
    assert (resumed.epoch, resumed.step) == (1, first.step)
    resumed.train(progress=False)

    assert resumed.step == straight.step
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_fixation_point_positives_reach_the_training_batches(tmp_path, small_synthetic):
    trainer = main.Trainer(make_args(tmp_path, "--positives", "fixation-points"))
    index, rel, labels, _, _ = trainer.epoch_samples()
    for i, (v, u) in zip(index[labels == 1].tolist(), rel[labels == 1].tolist()):
        points = trainer.train_set.fixations[i]
        height, width = points.shape
        assert points[int(v * height), int(u * width)]  # a recorded fixation of that image


def test_fp16_steps_use_a_grad_scaler_that_skips_overflowing_steps(tmp_path, small_synthetic):
    from MrCNN import MrCNN
    torch.manual_seed(0)
    model = MrCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    crops, target = torch.rand(4, 3, 3, 42, 42), torch.tensor([1.0, 0.0, 1.0, 0.0])
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)  # scaled loss overflows fp32
    main.train_step(model, optimizer, torch.nn.BCEWithLogitsLoss(), crops, target, "fp16",
                    scaler=scaler)
    assert scaler.get_scale() == 2.0 ** 99  # overflow seen: the scale backs off ...
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # ... no step
    scaler = torch.amp.GradScaler("cpu")
    main.train_step(model, optimizer, torch.nn.BCEWithLogitsLoss(), crops, target, "fp16",
                    scaler=scaler)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())

    trainer = main.Trainer(make_args(tmp_path, "--precision", "fp16"))
    assert trainer.scaler is not None and trainer.state_dict()["scaler_state"]["scale"] > 0
    assert main.Trainer(make_args(tmp_path, "--precision", "bf16")).scaler is None


def test_ema_weights_are_validated_saved_and_resumed(tmp_path, small_synthetic):
    flags = ("--epochs", "1", "--batch-size", "64", "--ema-decay", "0.9")
    trainer = main.Trainer(make_args(tmp_path, *flags))
    ema = [p.detach().clone() for p in trainer.ema_model.parameters()]
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    trainer.step = 1000  # past the warm-up: the full decay applies
    trainer.update_ema()
    for before, after in zip(ema, trainer.ema_model.parameters()):
        torch.testing.assert_close(after, before + 0.1)  # (1 - 0.9) of the way

    trainer = main.Trainer(make_args(tmp_path, *flags))
    trainer.train(progress=False)
    assert trainer.evaluated_model is trainer.ema_model
    state = load_checkpoint(tmp_path / "checkpoint" / "run" / "final_model.pth")
    for name, value in trainer.ema_model.state_dict().items():  # checkpoints load on the CPU
        assert torch.equal(state["model_state"][name], value.cpu()), name
        assert torch.equal(state["train_model_state"][name],
                           trainer.model.state_dict()[name].cpu())
    assert not torch.equal(state["model_state"]["fusion.out.weight"],
                           state["train_model_state"]["fusion.out.weight"])
    resumed = main.Trainer(make_args(tmp_path, *flags, "--resume",
                                     str(tmp_path / "checkpoint" / "run" / "final_model.pth")))
    for a, b in zip(resumed.model.parameters(), trainer.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(resumed.ema_model.parameters(), trainer.ema_model.parameters()):
        assert torch.equal(a, b)


def test_init_from_starts_a_new_run_from_the_shipped_weights(tmp_path, small_synthetic):
    shipped = ROOT / "checkpoint" / "pretrained" / "MrCNN.pth"
    trainer = main.Trainer(make_args(tmp_path, "--init-from", str(shipped)))
    state = load_checkpoint(shipped)
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value.cpu(), state["model_state"][name].float(), msg=name)
    assert trainer.model.input_mean.tolist() == pytest.approx(state["normalisation"]["mean"])
    assert (trainer.epoch, trainer.step) == (0, 0) and not trainer.optimizer.state


def test_resume_takes_the_runs_own_flags_as_defaults(tmp_path, small_synthetic):
    flags = ("--model", "MrCNNs", "--lr-schedule", "cosine", "--weight-decay", "0.001",
             "--labels", "map", "--uniform-locations-per-image", "5", "--epochs", "1",
             "-j", "1")
    main.Trainer(make_args(tmp_path, *flags)).train(progress=False)
    saved = tmp_path / "checkpoint" / "run" / "final_model.pth"
    args = main.parse_args(["--resume", str(saved), "--epochs", "2"])
    assert (args.model, args.lr_schedule, args.weight_decay) == ("MrCNNs", "cosine", 0.001)
    assert (args.labels, args.uniform_locations_per_image) == ("map", 5)
    assert args.epochs == 2  # as given
    assert args.worker_count == os.cpu_count()  # this machine's, not the run's -j 1
    resumed = main.Trainer(args)
    assert resumed.epoch == 1 and resumed.run_name == "run"


def test_init_from_takes_dropout_from_the_command_line_and_records_it(tmp_path, small_synthetic):
    shipped = ROOT / "checkpoint" / "pretrained" / "MrCNN.pth"
    assert load_checkpoint(shipped)["model_options"]["dropout"] == 0.5
    trainer = main.Trainer(make_args(tmp_path, "--init-from", str(shipped), "--dropout", "0.1"))
    rates = {m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.1}
    assert trainer.state_dict()["model_options"] == {"dropout": 0.1, "batch_norm": False}
    with pytest.raises(SystemExit, match="was trained without --batch-norm"):
        main.Trainer(make_args(tmp_path, "--init-from", str(shipped), "--batch-norm"))


def test_colour_jitter_reaches_the_training_batches_within_its_range(tmp_path, small_synthetic):
    trainer = main.Trainer(make_args(tmp_path, "--colour-jitter", "0.3", "--no-flip"))
    index, rel, labels, flip, jitter = trainer.epoch_samples()
    assert jitter.shape == (len(labels), 3) and jitter.min() >= 0.7 and jitter.max() <= 1.3
    assert jitter.std() > 0.1
    jittered = trainer.batch_crops(index[:8], rel[:8], flip[:8], jitter[:8])
    plain = dataset.cut_crops(trainer.train_scales, index[:8], rel[:8])
    torch.testing.assert_close(jittered, dataset.colour_jitter(plain, jitter[:8]))
    assert not torch.allclose(jittered, plain)


def test_map_labels_and_uniform_locations_reach_the_training_targets(tmp_path, small_synthetic):
    trainer = main.Trainer(make_args(tmp_path, "--labels", "map", "--fixations-per-image", "4",
                                     "--non-fixations-per-image", "4",
                                     "--uniform-locations-per-image", "8"))
    index, rel, labels, flip, jitter = trainer.epoch_samples()
    assert len(labels) == 16 * len(trainer.train_set)
    maps = trainer.train_set.maps
    pixel = (rel.cpu() * torch.tensor(maps.shape[1:])).floor().long()
    expected = maps[index.cpu(), pixel[:, 0], pixel[:, 1]].float() / 255
    torch.testing.assert_close(labels.cpu(), expected)
    assert ((labels > 0.1) & (labels < 0.9)).any()  # graded targets, not just 0 / 1


def test_location_jitter_moves_the_crops_and_keeps_the_labels(tmp_path, small_synthetic):
    flags = ("--labels", "map", "--uniform-locations-per-image", "40")
    plain = main.Trainer(make_args(tmp_path / "a", *flags)).epoch_samples()
    jittered = main.Trainer(make_args(tmp_path / "b", *flags, "--location-jitter", "0.05")
                            ).epoch_samples()
    for name, k in (("index", 0), ("labels", 2), ("flip", 3)):
        assert torch.equal(plain[k], jittered[k]), name
    (rel, moved) = plain[1], jittered[1]
    inside = ((rel > 0.2) & (rel < 0.8)).all(1)  # far from the clamped borders
    shift = (moved - rel)[inside]
    assert len(shift) > 500
    assert 0.045 < shift.std().item() < 0.055 and abs(shift.mean().item()) < 0.005


def test_a_teacher_turns_its_dense_maps_into_the_training_targets(tmp_path, small_synthetic):
    shipped = str(ROOT / "checkpoint" / "pretrained" / "MrCNN.pth")
    trainer = main.Trainer(make_args(tmp_path, "--teacher", shipped, "--teacher", shipped,
                                     "--teacher-weight", "0.75", "--no-flip",
                                     "--precision", "fp32"))
    teacher = main.model_from_checkpoint(load_checkpoint(shipped))
    index, rel, labels, _, _ = trainer.epoch_samples()
    first = (index == index[0]).nonzero().squeeze(1)[:5]
    one_image = [s[index[0]:index[0] + 1] for s in trainer.train_set.scales]
    grid = inference.saliency_grid(teacher, one_image, precision=trainer.precision)[0]
    teacher_values = inference.sample_maps(grid[None], torch.zeros(5, dtype=torch.long),
                                           rel[first].cpu())
    mixed = labels[first].cpu()
    hard = (mixed - 0.75 * teacher_values) / 0.25  # the 0 / 1 labels the teacher is mixed with
    torch.testing.assert_close(hard, hard.round(), atol=1e-3, rtol=0)
    assert not torch.allclose(mixed, mixed.round())


def test_teacher_maps_are_cached_and_an_unreadable_cache_file_is_recomputed(tmp_path,
                                                                           small_synthetic):
    shipped = str(ROOT / "checkpoint" / "pretrained" / "MrCNNs.pth")
    flags = ("--teacher", shipped, "--precision", "fp32")
    first = main.Trainer(make_args(tmp_path, *flags)).teacher_maps
    [cached] = (tmp_path / "cache" / "teacher_maps").glob("*.pt")
    torch.testing.assert_close(torch.load(cached, weights_only=True), first)

    torch.save(torch.full_like(first, 0.25), cached)  # a stand-in that only the cache can give
    assert torch.equal(main.Trainer(make_args(tmp_path, *flags)).teacher_maps,
                       torch.full_like(first, 0.25))

    cached.write_bytes(b"not a tensor")
    torch.testing.assert_close(main.Trainer(make_args(tmp_path, *flags)).teacher_maps, first)
    torch.testing.assert_close(torch.load(cached, weights_only=True), first)

    other = str(ROOT / "checkpoint" / "pretrained" / "MrCNN.pth")  # another teacher, own entry
    other_maps = main.Trainer(make_args(tmp_path, "--teacher", other, "--precision", "fp32")
                              ).teacher_maps
    assert len(list(cached.parent.glob("*.pt"))) == 2 and not torch.allclose(other_maps, first)


def run_main(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def test_default_command_trains_on_synthetic_data_and_writes_logs_and_checkpoints(tmp_path):
    result = run_main(tmp_path, "--epochs", "1", "-j", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SYNTHETIC" in result.stderr
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert list((tmp_path / "checkpoint").rglob("final_model.pth"))


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--learning-rate", "-0.1"], "--learning-rate must be positive"),
    (["--model", "VGG"], "unknown --model"),
    (["--data-dir", "does/not/exist"], "does not exist"),
    (["--batch-size", "100000"], "larger than"),
    (["--ema-decay", "1.5"], "--ema-decay must be in [0, 1)"),
    (["--fixation-threshold", "0.05"], "--fixation-threshold must be in [0.1, 1)"),
    (["--resume", "a.pth", "--init-from", "b.pth"], "exclude each other"),
    (["--init-from", "missing.pth"], "missing.pth does not exist"),
    (["--uniform-locations-per-image", "5"], "needs --labels map"),
    (["--teacher", "missing.pth"], "missing.pth does not exist"),
    (["--teacher-weight", "2"], "--teacher-weight must be in [0, 1]"),
    (["--location-jitter", "-0.1"], "--location-jitter must be in [0, 0.5)"),
    (["--resume", str(ROOT / "checkpoint" / "pretrained" / "MrCNN.pth")],
     "holds weights only (a shipped model), not a run to resume. Use --init-from"),
])
def test_bad_arguments_exit_with_one_clear_line(tmp_path, args, message):
    result = run_main(tmp_path, *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


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


def test_a_nan_loss_stops_the_run_with_a_message_and_keeps_earlier_checkpoints(tmp_path,
                                                                                small_synthetic):
    trainer = main.Trainer(make_args(tmp_path, "--epochs", "2", "--batch-size", "64"))
    trainer.loss_fn = lambda logits, target: (logits * float("nan")).mean()
    with pytest.raises(SystemExit, match="loss became nan"):
        trainer.train(progress=False)
    assert not (tmp_path / "checkpoint" / "run" / "final_model.pth").exists()


def test_a_failing_torch_compile_falls_back_to_eager_training(tmp_path, small_synthetic,
                                                              monkeypatch, capsys):
    def broken_compile(model):
        def compiled(*args):
            raise RuntimeError("no C++ compiler found")
        return compiled
    monkeypatch.setattr(main.torch, "compile", broken_compile)
    trainer = main.Trainer(make_args(tmp_path, "--epochs", "1", "--batch-size", "64",
                                     "--compile"))
    result, interrupted = trainer.train(progress=False)
    assert not interrupted and trainer.step == 11 and trainer.compiled_model is None
    assert "torch.compile failed (RuntimeError: no C++ compiler found)" in capsys.readouterr().err
    assert 0 <= result["auc_judd"] <= 1
