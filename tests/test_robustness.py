"""Bad input, interruption and resume: clear messages, nothing lost, nothing silently wrong."""
import json
import os
import signal
import subprocess
import sys
import threading
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import metrics
import main
import optimisation
from checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from conftest import PRETRAINED, ROOT, copy_run, load_test_py, make_args, write_mit_folder



# ----------------------------------------------------------------------------- datasets
def test_awkward_files_in_a_dataset_are_converted_skipped_or_resized_with_a_warning(tmp_path):
    data = tmp_path / "mini"
    names = ["cmyk", "corrupt", "grey16", "no_fixations", "ok", "small_map"]
    write_mit_folder(data, names, size=(48, 64))
    stimuli, maps = data / dataset.STIMULI, data / dataset.MAPS
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).convert("CMYK").save(
        stimuli / "cmyk.jpeg")
    (stimuli / "corrupt.jpeg").write_bytes((stimuli / "corrupt.jpeg").read_bytes()[:150])
    (stimuli / "grey16.jpeg").unlink()
    Image.fromarray(rng.integers(0, 65535, (48, 64)).astype(np.uint16)).save(stimuli / "grey16.png")
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(maps / "no_fixations_fixMap.jpg")
    density = np.zeros((24, 32), np.uint8)
    density[5:10, 5:10] = 255
    Image.fromarray(density).save(maps / "small_map_fixMap.jpg")

    with pytest.warns(UserWarning) as caught:
        loaded = dataset.load_mit(data, "all", cache_dir=tmp_path / "cache", workers=1,
                                  progress=False)
    messages = " | ".join(str(w.message) for w in caught)
    assert loaded.names == ["cmyk", "grey16", "ok", "small_map"]
    assert "corrupt.jpeg" in messages and "skipped" in messages
    assert "no_fixations: fixation map has no fixated pixel" in messages
    assert "small_map: fixation map is 32x24, the image 64x48" in messages
    grey = loaded.scales[0][loaded.names.index("grey16")]
    assert torch.equal(grey[0], grey[1]) and grey.float().std() > 10  # 16-bit -> 8-bit grey
    small = loaded.names.index("small_map")
    assert loaded.densities[small].shape == (24, 32)  # metrics resize predictions to it
    assert loaded.maps[small].float().mean() > 0  # the training map was resized to the image


def test_a_split_that_lists_a_skipped_image_says_how_many_images_it_scores(tmp_path, monkeypatch):
    data = tmp_path / "mini"
    write_mit_folder(data, ["a", "b", "c", "d"], size=(48, 64))
    corrupt = data / dataset.STIMULI / "b.jpeg"
    corrupt.write_bytes(corrupt.read_bytes()[:150])
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "mit1003_test.txt").write_text("a\nb\nc\n")
    monkeypatch.setattr(dataset, "SPLIT_DIR", splits)
    with pytest.warns(UserWarning) as caught:
        loaded = dataset.load_mit(data, "test", cache_dir=tmp_path / "cache", workers=1,
                                  progress=False)
    assert loaded.names == ["a", "c"]
    messages = " | ".join(str(w.message) for w in caught)
    assert "split test: 1 of the 3 images it lists were skipped" in messages
    assert "cover 2 images" in messages


def test_maps_without_stimuli_are_listed_by_name(tmp_path):
    data = tmp_path / "mini"
    write_mit_folder(data, ["a", "b", "c", "d"])
    for name in ("b", "d"):
        (data / dataset.STIMULI / f"{name}.jpeg").unlink()
    with pytest.raises(dataset.DatasetError, match="2 fixation maps without a stimulus, e.g. b, d"):
        dataset.mit_layout_names(data)


def test_a_corrupt_cache_is_rebuilt_and_an_edited_dataset_is_re_read(tmp_path):
    data, cache = tmp_path / "mini", tmp_path / "cache"
    write_mit_folder(data, ["a", "b"])
    first = dataset.load_mit(data, "all", cache_dir=cache, workers=1, progress=False)
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    (folder / "scale250.npy").write_bytes(b"\x93NUMPY garbage")  # e.g. a disk that filled up
    again = dataset.load_mit(data, "all", cache_dir=cache, workers=1, progress=False)
    assert torch.equal(again.scales[1], first.scales[1])

    white = np.full((48, 64, 3), 255, np.uint8)
    Image.fromarray(white).save(data / dataset.STIMULI / "a.jpeg")
    os.utime(data / dataset.STIMULI / "a.jpeg", ns=(1, 10 ** 18))
    edited = dataset.load_mit(data, "all", cache_dir=cache, workers=1, progress=False)
    assert edited.scales[0][0].float().mean() > 250  # the new pixels, not the cached ones
    assert not list(cache.glob(".*.tmp*"))  # no half-written cache left behind


def test_the_cache_follows_every_file_it_reads_and_never_keeps_a_failure(tmp_path):
    data, cache = tmp_path / "mini", tmp_path / "cache"
    write_mit_folder(data, ["a", "b"])
    first = dataset.load_mit(data, "all", cache_dir=cache, workers=1, progress=False)
    moved = np.zeros((48, 64), np.uint8)
    moved[30:40, 40:50] = 255  # the fixations move: an edited fixation map
    Image.fromarray(moved).save(data / dataset.MAPS / "a_fixMap.jpg")
    edited = dataset.load_mit(data, "all", cache_dir=cache, workers=1, progress=False)
    assert not torch.equal(edited.maps[0], first.maps[0])
    assert edited.maps[0][300:, 250:].float().mean() > edited.maps[0][:150, :150].float().mean()

    stimulus = data / dataset.STIMULI / "b.jpeg"
    stimulus.chmod(0o000)  # a passing read error (root reads anyway: then nothing to check)
    try:
        readable = os.access(stimulus, os.R_OK)
        with pytest.warns(UserWarning) if not readable else nullcontext():
            during = dataset.load_mit(data, "all", cache_dir=cache, workers=1, progress=False)
    finally:
        stimulus.chmod(0o644)
    assert during.names == (["a", "b"] if readable else ["a"])
    after = dataset.load_mit(data, "all", cache_dir=cache, workers=1, progress=False)
    assert after.names == ["a", "b"]  # the image is back once it reads again


def test_a_cached_skip_is_retried_when_the_file_reads_again(tmp_path, monkeypatch):
    data, cache = tmp_path / "mini", tmp_path / "cache"
    write_mit_folder(data, ["a", "b"])
    real_open = dataset.open_rgb

    def flaky_open(path):
        if Path(path).name == "b.jpeg":
            raise dataset.DatasetError(f"cannot read image {path}: I/O error.")
        return real_open(path)
    monkeypatch.setattr(dataset, "open_rgb", flaky_open)
    with pytest.warns(UserWarning, match="b.jpeg"):
        assert dataset.load_mit(data, "all", cache_dir=cache, workers=1,
                                progress=False).names == ["a"]
    monkeypatch.undo()
    assert dataset.load_mit(data, "all", cache_dir=cache, workers=1,
                            progress=False).names == ["a", "b"]


@pytest.mark.parametrize("damage", ["nan", "inf", "zero_std"])
def test_a_checkpoint_with_broken_numbers_is_refused_by_every_script(tmp_path, damage):
    state = load_checkpoint(PRETRAINED / "MrCNNs.pth")
    if damage == "zero_std":
        state["model_state"]["input_std"] = torch.zeros(3)
    else:
        state["model_state"]["fusion.out.weight"][0, 0] = float(damage)
    path = tmp_path / "broken.pth"
    save_checkpoint(state, path)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    for script, args in (("test.py", ["--checkpoint", str(path), "--images", str(image),
                                      "--output-dir", str(tmp_path / "out")]),
                         ("main.py", ["--init-from", str(path), "--model", "MrCNNs",
                                      "--data-dir", "synthetic"])):
        result = run_script(tmp_path, script, *args)
        assert result.returncode != 0 and "Traceback" not in result.stderr, script
        assert "would be meaningless" in result.stderr, script
    assert not (tmp_path / "out" / "x_saliency.png").exists()


def test_tuning_post_processing_writes_a_new_file_and_never_the_evaluated_one(tmp_path):
    shipped = PRETRAINED / "MrCNN.pth"
    result = run_script(tmp_path, "test.py", "--checkpoint", str(shipped),
                        "--tune-post-processing", str(shipped))
    assert result.returncode != 0 and "would overwrite the checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "a_file").write_text("not a folder")  # found before a minute of tuning
    result = run_script(tmp_path, "test.py", "--checkpoint", str(shipped),
                        "--tune-post-processing", str(tmp_path / "a_file" / "tuned.pth"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (f"cannot write to folder {tmp_path / 'a_file'} (a file stands where a folder is "
            f"needed). Pass a writable --tune-post-processing." in result.stderr)
    (tmp_path / "tuned.pth").write_bytes(b"a file the user made")
    result = run_script(tmp_path, "test.py", "--checkpoint", str(shipped),
                        "--tune-post-processing", str(tmp_path / "tuned.pth"))
    assert result.returncode != 0 and "exists, and it writes a new file" in result.stderr
    assert (tmp_path / "tuned.pth").read_bytes() == b"a file the user made"


# ----------------------------------------------------------------------------- checkpoints
def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "run" / "best.pth"
    save_checkpoint({"model": "MrCNN", "model_state": {"w": torch.ones(3)}}, path)

    def crash_mid_write(state, file):
        with open(file, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", crash_mid_write)
    from files import WriteError
    with pytest.raises(WriteError, match="best.pth \\(the disk is full\\)"):
        save_checkpoint({"model": "MrCNN", "model_state": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["best.pth"]


class Unlisted:
    """A class that a weights-only load does not know."""


@pytest.mark.parametrize("damage, cause", [
    ("truncated", "a copy or download that did not finish"),
    ("empty", "the file is empty"),
    ("python object", "holds Python objects (test_robustness.Unlisted)"),
])
def test_an_unloadable_checkpoint_is_named_with_its_cause_and_never_weights_only_false(
        tmp_path, damage, cause):
    path = tmp_path / "best.pth"
    whole = {"model": "MrCNN", "model_state": {"w": torch.ones(1000)}}
    save_checkpoint(whole | {"extra": Unlisted()} if damage == "python object" else whole, path)
    if damage != "python object":
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2 if damage == "truncated"
                                           else 0])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path} is not a loadable checkpoint: ")
    assert cause in str(error.value) and "weights_only" not in str(error.value)


def run_script(tmp_path, script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def test_starting_from_a_checkpoint_of_the_other_model_is_one_clear_error(tmp_path):
    result = run_script(tmp_path, "main.py", "--model", "MrCNN", "--init-from",
                        str(PRETRAINED / "MrCNNs.pth"), "--data-dir", "synthetic")
    assert result.returncode != 0
    assert "holds a MrCNNs checkpoint, not MrCNN. Pass --model MrCNNs" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_output_dir_that_cannot_be_written_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    result = run_script(tmp_path, "test.py", "--images", str(image), "--output-dir",
                        str(blocker / "maps"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "cannot write to output dir" in result.stderr and "a file stands where" in result.stderr
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("tool, args, message", [
    ("compare_results.py", ["missing_a", "missing_b"], "cannot read missing_a/per_image.csv"),
    ("pack_mit1003.py", ["--data-dir", "missing", "--output-dir", "packed"],
     "data dir missing does not exist"),
    ("export_coursework.py", ["--data-dir", "missing", "--output-dir", "cw"],
     "data dir missing does not exist")])
def test_tools_run_as_scripts_from_anywhere_give_their_own_errors(tmp_path, tool, args, message):
    """python tools/X.py from another folder (not python -m tools.X from the project root)."""
    result = run_script(tmp_path, f"tools/{tool}", *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr
    assert not (tmp_path / "packed").exists() and not (tmp_path / "cw").exists()


# ----------------------------------------------------------------------------- interruption
def test_ctrl_c_mid_epoch_saves_a_checkpoint_that_resumes_to_identical_weights(
        tmp_path, small_synthetic, monkeypatch, capsys):
    # 8 images x 30 samples: 7 steps/epoch; validated at the end only
    flags = ("--epochs", "3", "--batch-size", "32", "--val-frequency", "3")
    main.train(main.build(make_args(tmp_path / "a", *flags)))
    steps = []

    def ctrl_c_during_step_6(*args, **kwargs):
        steps.append(1)
        if len(steps) == 6:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, through the real handler
        return optimisation.train_step(*args, **kwargs)
    monkeypatch.setattr(main, "train_step", ctrl_c_during_step_6)
    _, interrupted = main.train(main.build(make_args(tmp_path / "b", *flags)))
    assert interrupted and len(steps) == 6  # the step in flight finished, no more
    monkeypatch.setattr(main, "train_step", optimisation.train_step)
    saved = tmp_path / "b" / "checkpoint" / "run" / "interrupted.pth"
    state = load_checkpoint(saved)
    assert (state["epoch"], state["step"], state["epoch_progress"]["batch"]) == (0, 6, 6)
    assert not (saved.parent / "final_model.pth").exists()
    capsys.readouterr()
    main.train(main.build(make_args(tmp_path / "b", *flags, "--resume", str(saved))))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert ["min left" in line for line in lines] == [False, True, False]  # 1 was 1 step of 7
    straight = load_checkpoint(tmp_path / "a" / "checkpoint" / "run" / "final_model.pth")
    resumed = load_checkpoint(saved.parent / "final_model.pth")
    assert resumed["step"] == straight["step"] == 21
    for name, value in straight["model_state"].items():
        assert torch.equal(value, resumed["model_state"][name]), name
    with pytest.raises(SystemExit, match="stopped inside an epoch of batch size 32"):
        main.build(make_args(tmp_path / "b", "--epochs", "3", "--batch-size", "16",
                             "--resume", str(saved)))


def test_sigint_to_a_training_process_saves_and_exits_cleanly(tmp_path):
    # stdout is a pipe, as with `python main.py > log`: its lines must come as they are printed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--epochs", "50",
                                "--data-dir", "synthetic", "-j", "1", "--run-name", "r",
                                "--fixations-per-image", "1", "--non-fixations-per-image", "2",
                                "--batch-size", "32"],  # 3 steps an epoch
                               cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(240, process.kill)  # a line stuck in a buffer fails, not hangs
    watchdog.start()
    try:
        first_line = process.stdout.readline()  # printed once the signal handlers are in place
        assert first_line.startswith("run r"), first_line
        epoch_line = process.stdout.readline()
        assert epoch_line.startswith("epoch 1/50") and process.poll() is None, epoch_line
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "SIGINT: stopping after this step" in stderr and "resume with --resume" in stderr
    assert "Traceback" not in stderr
    state = load_checkpoint(tmp_path / "checkpoint" / "r" / "interrupted.pth")
    assert state["step"] > 0 and json.dumps(state["args"])  # resumable, primitives only


# ----------------------------------------------------------------------------- round two
def test_two_stimuli_with_one_name_are_refused(tmp_path):
    data = tmp_path / "mini"
    write_mit_folder(data, ["a", "b"])
    Image.open(data / dataset.STIMULI / "a.jpeg").save(data / dataset.STIMULI / "a.png")
    with pytest.raises(dataset.DatasetError, match="two stimuli named a \\(a.jpeg and a.png\\)"):
        dataset.mit_layout_names(data)


def test_images_are_read_upright_and_float_images_keep_their_brightness(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # a bright left edge, stored sideways with an EXIF rotation
    stored = Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90)  # 40 x 20
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = np.asarray(dataset.open_rgb(tmp_path / "phone.jpg"))
    assert upright.shape == (20, 40, 3)
    assert upright[:, :10].mean() > 200 and upright[:, 30:].mean() < 50
    grey = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    Image.fromarray(grey, mode="F").save(tmp_path / "float.tif")
    read = np.asarray(dataset.open_rgb(tmp_path / "float.tif"))[..., 0]
    assert read.max() == 255 and abs(read.mean() - 127.5) < 2  # not black


def test_maps_of_a_datasets_own_images_never_go_into_the_dataset(tmp_path):
    write_mit_folder(tmp_path / "mini", ["a", "b", "c"])
    stimuli = tmp_path / "mini" / dataset.STIMULI
    result = run_script(tmp_path, "test.py", "--images", str(stimuli), "--output-dir",
                        str(stimuli))
    assert result.returncode != 0 and "maps written there would break the dataset" in \
        result.stderr
    assert sorted(p.name for p in stimuli.iterdir()) == ["a.jpeg", "b.jpeg", "c.jpeg"]


def test_maps_never_overwrite_the_images_they_come_from(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(photos / f"{name}.png")
    Image.fromarray(np.full((20, 20, 3), 9, np.uint8)).save(photos / "a_saliency.png")
    before = (photos / "a_saliency.png").read_bytes()
    result = run_script(tmp_path, "test.py", "--images", str(photos),
                        str(photos / "a_saliency.png"), "--output-dir", str(photos))
    assert result.returncode != 0 and "would overwrite the input" in result.stderr
    assert (photos / "a_saliency.png").read_bytes() == before and "Traceback" not in result.stderr
    result = run_script(tmp_path, "test.py", "--images", str(photos), "--output-dir", str(photos))
    assert result.returncode == 0, result.stderr  # earlier maps in the folder are not inputs
    assert "a_saliency_saliency" not in result.stdout and (photos / "b_overlay.png").exists()


def test_ground_truth_of_another_size_than_its_image_is_scored_and_drawn(tmp_path, monkeypatch):
    data = tmp_path / "mini"
    write_mit_folder(data, ["a", "b", "c"], size=(48, 64))
    for name, suffixes in (("a", ("_fixMap.jpg", "_fixPts.jpg")), ("b", ("_fixMap.jpg",))):
        small = np.zeros((24, 32), np.uint8)  # b: a small density beside full-size points
        small[5:10, 5:10] = 255
        for suffix in suffixes:
            Image.fromarray(small).save(data / dataset.MAPS / f"{name}{suffix}")
    result = run_script(tmp_path, "test.py", "--data-dir", str(data), "--split", "all",
                        "--checkpoint", str(PRETRAINED / "MrCNNs.pth"), "--save-maps",
                        "--cache-dir", str(tmp_path / "cache"), "--output-dir",
                        str(tmp_path / "out"), "-j", "1")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-1500:]
    assert (tmp_path / "out" / "best_worst.png").is_file()
    assert Image.open(tmp_path / "out" / "maps" / "a.png").size == (32, 24)  # the truth's size


def test_an_unwritable_cache_dir_is_one_clear_line_and_leaves_nothing_behind(tmp_path):
    data = tmp_path / "mini"
    write_mit_folder(data, ["a", "b"])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(dataset.DatasetError, match="cannot write the image cache in"):
        dataset.load_mit(data, "all", cache_dir=blocker / "cache", workers=1, progress=False)
    assert blocker.read_text() == "not a folder"


def test_ctrl_c_before_training_starts_is_one_line(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(dataset, "load_training_data", interrupted)
    with pytest.raises(SystemExit, match="interrupted before training started"):
        main.main(["--data-dir", "synthetic", "--checkpoint-dir", str(tmp_path / "ck")])


def test_fixation_maps_without_any_non_fixated_pixel_are_one_clear_error(tmp_path):
    data = tmp_path / "uniform"
    write_mit_folder(data, ["a", "b", "c"])
    for path in (data / dataset.MAPS).glob("*_fixMap.jpg"):  # 255 everywhere: nothing < 0.1
        Image.fromarray(np.full((48, 64), 255, np.uint8)).save(path)
    result = run_script(tmp_path, "main.py", "--data-dir", str(data), "--epochs", "1",
                        "--batch-size", "8", "--checkpoint-dir", str(tmp_path / "ck"),
                        "--cache-dir", str(tmp_path / "cache"), "-j", "1")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-800:]
    assert "no training image (of 1) has both fixated pixels" in result.stderr


def test_another_eye_tracking_dataset_trains_and_scores_on_a_split_of_its_own(tmp_path):
    data = tmp_path / "mydata"
    write_mit_folder(data, [f"scene{i:02d}" for i in range(20)])
    common = ["--cache-dir", str(tmp_path / "cache"), "-j", "1"]
    result = run_script(tmp_path, "main.py", "--data-dir", str(data), "--epochs", "1",
                        "--batch-size", "32", "--checkpoint-dir", str(tmp_path / "ck"), *common)
    assert result.returncode == 0, result.stderr[-1500:]
    assert "gets a split of its own: 16 train / 2 val / 2 test images" in result.stderr
    assert "(16 train / 2 val images)" in result.stdout
    with pytest.warns(UserWarning, match="split of its own"):
        parts = {s: set(dataset.split_names(s, dataset.mit_layout_names(data)[0]))
                 for s in ("train", "val", "test")}
    assert sum(map(len, parts.values())) == 20 and len(set().union(*parts.values())) == 20
    with pytest.raises(dataset.DatasetError, match="is not MIT1003, and the cross-validation "
                                                   "folds .* are MIT1003's"):
        dataset.split_names("fold3/train", dataset.mit_layout_names(data)[0], data)
    [final] = (tmp_path / "ck").rglob("final_model.pth")
    result = run_script(tmp_path, "test.py", "--data-dir", str(data), "--checkpoint", str(final),
                        "--output-dir", str(tmp_path / "out"), *common)
    assert result.returncode == 0, result.stderr[-1500:]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["n_images"] == 2


def test_a_checkpoint_write_that_fails_mid_run_is_one_line_and_keeps_the_last_good_one(
        tmp_path, small_synthetic, monkeypatch):
    import checkpoints
    real_save, calls = torch.save, []

    def disk_full_on_the_third_write(state, file):
        calls.append(file)
        if len(calls) == 3:  # torch reports a failed write as RuntimeError, not OSError
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(state, file)
    monkeypatch.setattr(checkpoints.torch, "save", disk_full_on_the_third_write)
    with pytest.raises(SystemExit, match="cannot write .*best.pth .* Free some space"):
        main.train(main.build(make_args(tmp_path, "--epochs", "3", "--batch-size", "64")))
    run_dir = tmp_path / "checkpoint" / "run"
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 1  # the last good one, intact
    assert not list(run_dir.glob(".*.tmp*"))  # no half-written file left behind


def test_a_second_ctrl_c_while_saving_names_the_checkpoints_that_were_kept(
        tmp_path, small_synthetic, monkeypatch):
    import checkpoints
    real_save = checkpoints.save_checkpoint

    def ctrl_c_after_last_then_again(state, path):
        if Path(path).name == "interrupted.pth":
            raise KeyboardInterrupt  # the second Ctrl-C, before anything was written
        real_save(state, path)
        if Path(path).name == "last.pth":
            raise KeyboardInterrupt  # the first, just after epoch 1's checkpoints
    monkeypatch.setattr(main, "save_checkpoint", ctrl_c_after_last_then_again)
    with pytest.raises(SystemExit) as exit_:
        main.main(["--data-dir", "synthetic", "--checkpoint-dir", str(tmp_path / "ck"),
                   "--cache-dir", str(tmp_path / "cache"), "--log-dir", str(tmp_path / "logs"),
                   "--run-name", "run", "--epochs", "2", "--batch-size", "64"])
    message, run_dir = str(exit_.value), tmp_path / "ck" / "run"
    assert message.startswith("interrupted again while saving") and "nothing was saved" \
        not in message and f"--resume {run_dir / 'last.pth'}" in message
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 1 and \
        not (run_dir / "interrupted.pth").exists()


def test_ctrl_c_while_worker_processes_score_maps_prints_no_traceback(tmp_path):
    """Ctrl-C reaches every process of the terminal's group: the workers leave it to the parent,
    which stops the pool, so the user sees the script's one line and not one traceback each."""
    script = tmp_path / "score.py"
    script.write_text(f"""import sys
sys.path.insert(0, {str(ROOT)!r})
import numpy as np
import metrics
rng = np.random.default_rng(0)
saliency, fixations = rng.random((768, 1024)), rng.random((768, 1024)) > 0.999
print("scoring", flush=True)
try:
    metrics.evaluate_dataset([saliency] * 2000, [fixations] * 2000, [saliency] * 2000, workers=2)
except KeyboardInterrupt:
    sys.exit("stopped")
""")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout.readline() == "scoring\n"
    threading.Event().wait(3)  # the pool is scoring by now (2000 images take minutes)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1 and stderr.strip() == "stopped", stderr


# ----------------------------------------------------------------------------- run folders
def test_a_moved_run_resumes_in_its_own_folder_never_over_a_run_of_the_same_name(
        tmp_path, small_synthetic, shared_runs):
    """The run's checkpoint names --checkpoint-dir/run (here tmp_path/checkpoint/run), where an
    unrelated run of that name now lives; the moved run resumes where its file is."""
    moved = copy_run(shared_runs["one_epoch"], tmp_path / "elsewhere" / "run")
    run_dir = copy_run(shared_runs["one_epoch"], tmp_path / "checkpoint" / "run")
    unrelated = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
    main.train(main.build(make_args(tmp_path, "--epochs", "2", "--batch-size", "64",
                                    "--resume", str(moved / "last.pth"))))
    assert load_checkpoint(moved / "final_model.pth")["epoch"] == 2
    assert {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()} \
        == unrelated
    assert not (moved / ".lock").exists()  # released when the run ended


def test_one_writer_per_run_folder_and_a_dead_writers_lock_is_taken_over(
        tmp_path, small_synthetic, shared_runs):
    import checkpoints
    run_dir = copy_run(shared_runs["one_epoch"], tmp_path / "checkpoint" / "run")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".lock").write_text(f"{other.pid} {__import__('socket').gethostname()}")
        with pytest.raises(SystemExit, match=f"is being written by process {other.pid}"):
            main.build(make_args(tmp_path, "--epochs", "2", "--batch-size", "64", "--resume",
                                 str(run_dir / "last.pth")))
    finally:
        other.kill()
        other.wait()
    # that process has ended: its lock is taken over, and the run resumes
    run = main.build(make_args(tmp_path, "--epochs", "2", "--batch-size", "64", "--resume",
                               str(run_dir / "last.pth")))
    assert (run_dir / ".lock").read_text().split()[0] == str(os.getpid())
    checkpoints.release_run_dir(run["dir"])
    assert not (run_dir / ".lock").exists()


def test_a_failed_write_keeps_the_previous_file_leaves_no_part_and_says_why(tmp_path):
    import errno
    from files import WriteError, write_atomically, write_text
    path = write_text(tmp_path / "out" / "metrics.json", "{}")  # creates the folder

    def disk_fills_mid_write(tmp):
        tmp.write_text('{"half": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    def torch_style_failure(tmp):  # words without 'file', 'disk' or an errno
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64\nmore")
    torch_words = "([enforce fail at inline_container.cc:603] . unexpected pos 64)"
    for write, cause in ((disk_fills_mid_write, "(the disk is full)"),
                         (torch_style_failure, torch_words)):
        with pytest.raises(WriteError) as error:
            write_atomically(path, write)
        assert str(error.value) == f"cannot write {path} {cause}"
        assert path.read_text() == "{}" and [p.name for p in path.parent.iterdir()] == [path.name]
    (tmp_path / "a_file").write_text("")
    with pytest.raises(WriteError, match="cannot write .*a_file/x.png"):
        write_text(tmp_path / "a_file" / "x.png", "")


def test_test_py_on_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)).save(photo)
    real_save = Image.Image.save

    def disk_full_on_the_overlay(image, file, *args, **kwargs):
        if "overlay" in str(file):
            Path(file).write_bytes(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(image, file, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "save", disk_full_on_the_overlay)
    with pytest.raises(SystemExit) as exit_:
        load_test_py().main(["--images", str(photo), "--output-dir", str(tmp_path / "maps"),
                             "--grid-size", "10"])
    message = str(exit_.value)
    assert message.startswith("error: cannot write ") and "photo_overlay.png (the disk is full)" \
        in message and "\n" not in message
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["photo_saliency.png"]


def test_shipping_a_checkpoint_of_an_unknown_model_is_one_clear_line(tmp_path):
    from checkpoints import save_checkpoint
    source = save_checkpoint({"model": "ResNet50", "model_state": {}}, tmp_path / "other.pth")
    result = run_script(tmp_path, "checkpoints.py", "ship", str(source), "out.pth")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "holds a model named 'ResNet50', which this project does not define" in result.stderr
    assert not (tmp_path / "out.pth").exists()


def test_more_workers_than_cores_is_said_once_and_a_fitting_count_is_not(monkeypatch):
    import warnings
    import devices
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with pytest.warns(UserWarning, match=r"-j 1000 is more than the 2 CPU cores .* -j 2 is"):
        assert devices.checked_worker_count(1000) == 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert devices.checked_worker_count(2) == 2


def test_training_images_without_locations_are_named_and_too_few_samples_are_refused(
        tmp_path, small_synthetic, monkeypatch):
    """An image whose map has no fixated (or no non-fixated) pixel gives no training location:
    a warning names it; a batch larger than what the other images give is refused before a
    run folder exists (it would train zero steps); no image with locations is refused."""
    real_load = dataset.load_synthetic

    def flat_maps_but_one(n_images, seed):
        scenes = real_load(n_images, seed)
        if n_images == 8:  # the training scenes
            scenes.maps[1:] = 255  # uniform: nothing below 0.1 of the maximum
        return scenes
    monkeypatch.setattr(dataset, "load_synthetic", flat_maps_but_one)
    args = make_args(tmp_path, "--batch-size", "64")  # 1 image x 30 locations < 64
    with pytest.warns(UserWarning, match="7 of the 8 training images give no training location "
                                         "and are left out of training"):
        with pytest.raises(SystemExit, match="larger than the 30 training samples per epoch"):
            main.build(args)
    assert not (tmp_path / "checkpoint").exists()
    untrainable = real_load(3, 0)
    untrainable.maps[:] = 0
    with pytest.raises(dataset.DatasetError, match="no training image \\(of 3\\)"):
        dataset.refuse_untrainable(untrainable)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file names as raw bytes")
def test_a_name_that_is_not_utf8_and_one_near_the_length_limit_are_scored_and_written(tmp_path):
    data, long_name = tmp_path / "data", "x" * 240  # 245 bytes with .jpeg, 253 as a saliency PNG
    write_mit_folder(data, ["a", "b", "c", long_name])
    for folder, suffix in ((dataset.STIMULI, ".jpeg"), (dataset.MAPS, "_fixMap.jpg"),
                           (dataset.MAPS, "_fixPts.jpg")):  # a Latin-1 'café'
        os.rename(data / folder / f"a{suffix}", os.fsencode(data / folder) + b"/caf\xe9" +
                  suffix.encode())
    common = ("--data-dir", "data", "--cache-dir", "cache", "--split", "all", "-j", "1")
    first = run_script(tmp_path, "test.py", *common, "--grid-size", "10", "--save-maps",
                       "--output-dir", "out")
    again = run_script(tmp_path, "test.py", *common, "--maps", "out/maps", "--output-dir",
                       "again")
    for result in (first, again):
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-999:]
    written = {os.fsencode(p.name) for p in (tmp_path / "out" / "maps").iterdir()}
    assert written == {b"caf\xe9.png", b"b.png", b"c.png", long_name.encode() + b".png"}
    scored = metrics.read_per_image(tmp_path / "again" / "per_image.csv")["maps"]
    assert os.fsencode(next(n for n in scored if n.startswith("caf"))) == b"caf\xe9"
    assert len(scored) == 4


@pytest.mark.parametrize("args, message", [
    (["--agreement", "-3"], "--agreement must be at least 1 (got -3)"),
    (["--agreement", "2", "--checkpoint", "missing.pth"], "checkpoint missing.pth does not exist"),
    (["--agreement", "2", "--data-dir", "nowhere"], "nowhere"),
    (["--agreement", "5", "--data-dir", "mini"], "asks for more images than the 1 of the val")])
def test_bench_agreement_with_bad_input_is_one_line(tmp_path, monkeypatch, args, message):
    import warnings
    import bench
    write_mit_folder(tmp_path / "mini", ["a", "b", "c"])  # a split of its own: 1 val image
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dataset, "SPLIT_DIR", ROOT / "splits")
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(PRETRAINED / "MrCNN.pth")]
    with pytest.raises(SystemExit) as exit_, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "mini is not MIT1003")  # its split of its own
        bench.main(args)
    assert str(exit_.value).startswith("error: ") and message in str(exit_.value)
    assert "\n" not in str(exit_.value)


def test_a_log_dir_that_cannot_be_created_is_one_line_before_a_run_folder_exists(
        tmp_path, small_synthetic):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        main.build(make_args(tmp_path, "--log-dir", str(tmp_path / "a_file")))
    assert str(exit_.value) == (f"error: cannot write TensorBoard events to {tmp_path / 'a_file'}"
                                f" (a file stands where a folder is needed). Pass a writable "
                                f"--log-dir.")
    assert not (tmp_path / "checkpoint").exists()
