"""Shared test helpers: the project root on sys.path, where the real MIT1003 is (if anywhere),
tiny MIT-layout folders, and main.py arguments that keep every file in a temporary folder."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dataset  # noqa: E402
import main  # noqa: E402

# The real MIT1003, for the few tests that read it: set MIT1003_DIR to its folder.
MIT1003 = Path(os.environ["MIT1003_DIR"]) if os.environ.get("MIT1003_DIR") else None
METRICS_REFERENCE = ROOT / "tests" / "data" / "metrics_reference"
PRETRAINED = ROOT / "checkpoint" / "pretrained"


def load_test_py():
    """test.py as a module, loaded by path (``import test`` would find the standard library's)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_mit1003():
    """The real MIT1003's folder; skips the calling test, with the reason, without it."""
    if MIT1003 is None or not (MIT1003 / dataset.STIMULI).is_dir():
        pytest.skip("the real MIT1003 is not available: set MIT1003_DIR to its folder")
    return MIT1003


def write_mit_folder(root, names, size=(48, 64)):
    """A tiny MIT-layout folder: random stimuli, each with a square of fixations."""
    (root / dataset.STIMULI).mkdir(parents=True)
    (root / dataset.MAPS).mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            root / dataset.STIMULI / f"{name}.jpeg")
        density = np.zeros(size, np.uint8)
        density[10:20, 10:20] = 255
        Image.fromarray(density).save(root / dataset.MAPS / f"{name}_fixMap.jpg")
        Image.fromarray(density).save(root / dataset.MAPS / f"{name}_fixPts.jpg")


def make_args(tmp_path, *extra):
    """main.py's checked arguments for a run on the synthetic set whose files all go under
    tmp_path (never the checkout's data/, checkpoint/ or .cache/)."""
    args = main.parse_args(["--data-dir", "synthetic", "--checkpoint-dir",
                            str(tmp_path / "checkpoint"), "--cache-dir", str(tmp_path / "cache"),
                            "--log-dir", str(tmp_path / "logs"), "--run-name", "run", "-j", "2",
                            *extra])
    main.check_args(args)
    return args


@pytest.fixture(autouse=True)
def logs_in_tmp_path(tmp_path, monkeypatch):
    """TensorBoard events of in-process main.py runs go to tmp_path/logs, never the checkout's
    logs/ (runs in a subprocess work in tmp_path already)."""
    monkeypatch.setattr(main, "DEFAULT_LOG_DIR", str(tmp_path / "logs"))


@pytest.fixture
def small_synthetic(monkeypatch):
    """The synthetic set shrunk to 8 train / 4 val scenes (240 samples an epoch)."""
    monkeypatch.setattr(dataset, "SYNTHETIC_SIZES", {"train": 8, "val": 4})


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory):
    """Two runs on the small synthetic set (``make_args`` with --batch-size 64), trained once
    for every test that reads, moves or resumes such a run: {'one_epoch': the folder of a run
    of one epoch, 'two_epochs': that of a run of two}. The same flags and seed, so a copy of
    'one_epoch' resumed to epoch 2 must end with the weights of 'two_epochs'. Tests copy a
    folder (``copy_run``) before they change anything in it."""
    root = tmp_path_factory.mktemp("shared_runs")
    folders = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataset, "SYNTHETIC_SIZES", {"train": 8, "val": 4})
        for name, epochs in (("one_epoch", "1"), ("two_epochs", "2")):
            args = make_args(root / name, "--epochs", epochs, "--batch-size", "64")
            main.train(main.build(args))
            folders[name] = root / name / "checkpoint" / "run"
    return folders


def copy_run(run_dir, destination):
    """A copy of the run folder ``run_dir`` at ``destination`` (created with its parents);
    returns ``destination``."""
    import shutil
    destination.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(run_dir, destination))
