"""Bad input, interruption and resume: clear messages, nothing lost, nothing silently wrong."""
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import main
from checkpoints import load_checkpoint, save_checkpoint
from conftest import ROOT
from test_dataset import write_mit_folder
from test_training import make_args

PRETRAINED = ROOT / "checkpoint" / "pretrained"


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


# ----------------------------------------------------------------------------- checkpoints
def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "run" / "best.pth"
    save_checkpoint({"model": "MrCNN", "model_state": {"w": torch.ones(3)}}, path)

    def crash_mid_write(state, file):
        with open(file, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError):
        save_checkpoint({"model": "MrCNN", "model_state": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["best.pth"]


def run_script(tmp_path, script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def test_resuming_from_a_checkpoint_of_the_other_model_is_one_clear_error(tmp_path):
    result = run_script(tmp_path, "main.py", "--model", "MrCNN", "--resume",
                        str(PRETRAINED / "MrCNNs.pth"))
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
    assert result.returncode != 0 and "cannot write to output dir" in result.stderr
    assert "Traceback" not in result.stderr and blocker.read_text() == "not a folder"


# ----------------------------------------------------------------------------- interruption
def test_ctrl_c_mid_epoch_saves_a_checkpoint_that_resumes_to_identical_weights(tmp_path,
                                                                               small_synthetic):
    flags = ("--epochs", "2", "--batch-size", "64")  # 24 images x 30 samples: 11 steps/epoch
    straight = main.Trainer(make_args(tmp_path / "a", *flags))
    straight.train(progress=False)

    stopped = main.Trainer(make_args(tmp_path / "b", *flags))
    loss_fn = stopped.loss_fn

    def ctrl_c_during_step_16(logits, target):
        if stopped.step == 15:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, through the real handler
        return loss_fn(logits, target)
    stopped.loss_fn = ctrl_c_during_step_16
    _, interrupted = stopped.train(progress=False)
    assert interrupted and stopped.step == 16  # the step in flight finished, no more
    saved = tmp_path / "b" / "checkpoint" / "run" / "interrupted.pth"
    state = load_checkpoint(saved)
    assert (state["epoch"], state["step"], state["epoch_progress"]["batch"]) == (1, 16, 5)
    assert not (saved.parent / "final_model.pth").exists()

    resumed = main.Trainer(make_args(tmp_path / "b", *flags, "--resume", str(saved)))
    resumed.train(progress=False)
    assert resumed.step == straight.step
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_sigint_to_a_training_process_saves_and_exits_cleanly(tmp_path):
    # stdout is a pipe, as with `python main.py > log`: its lines must come as they are printed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--epochs", "50",
                                "-j", "1", "--run-name", "r"], cwd=tmp_path, env=env,
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
