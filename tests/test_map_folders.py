"""test.py --maps: other models' saliency maps scored from folders, and every bad folder refused."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import dataset
import metrics
from conftest import PRETRAINED, ROOT, load_test_py, require_mit1003, write_mit_folder

NAMES = ["a", "b", "c", "d"]


def run_test_py(cwd, *args):
    return subprocess.run([sys.executable, str(ROOT / "test.py"), "--cache-dir", "cache", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture
def mini(tmp_path):
    """A 4-image MIT-layout folder (60 x 80) and a folder of maps for it, one of each format."""
    write_mit_folder(tmp_path / "mini", NAMES, size=(60, 80))
    maps = tmp_path / "model"
    maps.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 80), dtype=np.uint8)).save(maps / "a.png")
    Image.fromarray(rng.integers(0, 65535, (30, 40), dtype=np.uint16)).save(maps / "b.png")
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(maps / "c.jpg")
    np.save(maps / "d.npy", rng.random((25, 25)))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(maps / "other_image.png")  # not scored
    return tmp_path


def test_a_folder_of_maps_in_any_format_and_size_is_one_row_beside_the_baselines(mini):
    result = run_test_py(mini, "--data-dir", "mini", "--split", "all", "--maps", "model",
                         "--output-dir", "out")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((mini / "out" / "metrics.json").read_text())
    assert list(summary["rows"]) == ["model", "centre_bias", "chance"]  # no checkpoint row
    assert summary["default_row"] == "model" and summary["n_images"] == 4
    assert summary["maps"] == {"model": "model"} and summary["skipped"]["count"] == 0
    assert set(summary["literature_rows"]) == {"model", "centre_bias"}
    assert (mini / "out" / "best_worst.png").is_file() and "of model" in result.stdout
    # each map scored as metrics.py scores it at the image's size (colour read as grey)
    fixations, density = dataset.read_ground_truth(mini / "mini", "c")
    colour = np.asarray(Image.open(mini / "model" / "c.jpg").convert("L"), dtype=np.float64)
    with open(mini / "out" / "per_image.csv") as handle:
        line = next(row for row in handle if row.startswith("c,model,"))
    assert float(line.split(",")[2]) == pytest.approx(
        metrics.auc_judd(metrics.as_submitted_map(colour, (60, 80)), fixations), abs=1e-6)


def test_an_image_without_fixations_is_named_once_and_left_out_of_the_fixation_means(mini):
    empty = np.zeros((60, 80), np.uint8)
    Image.fromarray(empty).save(mini / "mini" / dataset.MAPS / "b_fixPts.jpg")
    result = run_test_py(mini, "--data-dir", "mini", "--split", "all", "--maps", "model",
                         "--output-dir", "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("warning:") == 1 and "1 of the 4 images have no fixation (an " \
        "empty _fixPts map): b. AUC-Judd, sAUC, AUC-Borji and NSS are undefined" in result.stderr
    assert "AUC-Judd, sAUC, AUC-Borji and NSS over 3: b has no fixation" in result.stdout
    summary = json.loads((mini / "out" / "metrics.json").read_text())
    assert summary["without_fixations"] == ["b"] and summary["n_images"] == 4
    scores = metrics.read_per_image(mini / "out" / "per_image.csv")["model"]
    others = [scores[name]["auc_judd"] for name in NAMES if name != "b"]
    assert summary["rows"]["model"]["auc_judd"]["mean"] == pytest.approx(np.mean(others), abs=1e-6)
    assert summary["rows"]["model"]["cc"]["mean"] == pytest.approx(
        np.mean([scores[name]["cc"] for name in NAMES]), abs=1e-6)  # density metrics: all four


def test_save_maps_then_maps_reproduces_the_row_on_real_images(tmp_path):
    root = require_mit1003()
    names = dataset.read_split("test")[:4]
    data = tmp_path / "real"
    for folder in (dataset.STIMULI, dataset.MAPS):
        (data / folder).mkdir(parents=True)
    for name in names:  # four real MIT1003 images, with their maps
        (data / dataset.STIMULI / f"{name}.jpeg").symlink_to(root / dataset.STIMULI /
                                                             f"{name}.jpeg")
        for suffix in ("_fixMap.jpg", "_fixPts.jpg"):
            (data / dataset.MAPS / f"{name}{suffix}").symlink_to(
                root / dataset.MAPS / f"{name}{suffix}")
    common = ["--data-dir", "real", "--split", "all", "--precision", "fp32"]
    first = run_test_py(tmp_path, *common, "--checkpoint", str(PRETRAINED / "MrCNN.pth"),
                        "--output-dir", "model", "--save-maps")
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads((tmp_path / "model" / "metrics.json").read_text())
    row = summary["default_row"]  # post_processed: the shipped MrCNN carries post-processing
    assert f"wrote the {row} row's maps to model/maps" in first.stdout
    again = run_test_py(tmp_path, *common, "--maps", "model/maps", "--output-dir", "again")
    assert again.returncode == 0, again.stderr[-2000:]
    scored = summary["rows"][row]
    rescored = json.loads((tmp_path / "again" / "metrics.json").read_text())["rows"]["maps"]
    for name in metrics.METRIC_NAMES:  # 8-bit rounding is all that differs
        assert rescored[name]["mean"] == pytest.approx(scored[name]["mean"], abs=0.002), name


def test_skip_missing_scores_the_images_every_folder_has_and_says_how_many_it_left_out(mini):
    (mini / "model" / "b.png").unlink()
    refused = run_test_py(mini, "--data-dir", "mini", "--split", "all", "--maps", "model",
                          "--output-dir", "out")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "1 of the 4 images of --split all have no map in model, e.g. b" in refused.stderr
    assert "--skip-missing" in refused.stderr and not (mini / "out").exists()
    result = run_test_py(mini, "--data-dir", "mini", "--split", "all", "--maps", "model",
                         "--output-dir", "out", "--skip-missing")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 image without a map in every folder left out, e.g. b; 3 scored" in result.stdout
    summary = json.loads((mini / "out" / "metrics.json").read_text())
    assert summary["n_images"] == 3 and summary["skipped"] == {"count": 1, "names": ["b"]}


def bad_map(folder, kind):
    if kind == "truncated":
        whole = (folder / "a.png").read_bytes()
        (folder / "a.png").write_bytes(whole[:len(whole) // 2])
    elif kind == "not an image":
        (folder / "a.png").write_text("not a picture")
    elif kind == "nan":
        values = np.random.default_rng(1).random((25, 25))
        values[3, 4] = np.nan
        np.save(folder / "d.npy", values)
    elif kind == "3-d":
        np.save(folder / "d.npy", np.zeros((2, 25, 25)))
    elif kind == "two maps":
        Image.fromarray(np.zeros((60, 80), np.uint8)).save(folder / "a_saliency.png")
    elif kind == "empty":
        for path in folder.iterdir():
            path.unlink()


@pytest.mark.parametrize("kind, message", [
    ("truncated", "cannot read map model/a.png"),
    ("not an image", "cannot read map model/a.png"),
    ("nan", "map model/d.npy holds NaN or infinite values"),
    ("3-d", "map model/d.npy is of shape [2, 25, 25], not a 2-D map"),
    ("two maps", "model holds two maps for image a: a.png and a_saliency.png"),
    ("empty", "--maps model holds no maps"),
    ("not a folder", "--maps nowhere is not a folder")])
def test_a_bad_folder_or_map_is_one_line_and_leaves_no_output(mini, kind, message,
                                                              monkeypatch):
    bad_map(mini / "model", kind)
    folder = "nowhere" if kind == "not a folder" else "model"
    monkeypatch.chdir(mini)
    with pytest.raises(SystemExit) as exit_:
        load_test_py().main(["--cache-dir", "cache", "--data-dir", "mini", "--split", "all",
                             "--maps", folder, "--output-dir", "out"])
    assert str(exit_.value).startswith("error: ") and message in str(exit_.value)
    assert "\n" not in str(exit_.value) and not (mini / "out").exists()


def test_a_bad_map_ends_the_script_with_one_line_and_no_traceback(mini):
    bad_map(mini / "model", "truncated")
    result = run_test_py(mini, "--data-dir", "mini", "--split", "all", "--maps", "model",
                         "--output-dir", "out")
    assert result.returncode != 0 and result.stderr.startswith("error: cannot read map")
    assert len(result.stderr.strip().splitlines()) == 1 and not (mini / "out").exists()


def test_a_constant_map_scores_one_half_under_the_bms_protocols_without_a_warning(mini):
    for path in (mini / "model").iterdir():
        path.unlink()
    for name in NAMES:
        Image.fromarray(np.full((60, 80), 128, np.uint8)).save(mini / "model" / f"{name}.png")
    result = run_test_py(mini, "--data-dir", "mini", "--split", "all", "--maps", "model",
                         "--output-dir", "out")
    assert result.returncode == 0 and "warning" not in result.stderr.lower()
    literature = json.loads((mini / "out" / "metrics.json").read_text())["literature"]
    for protocol in metrics.BMS_PROTOCOLS:
        assert literature[protocol]["means"] == [pytest.approx(0.5)] * len(metrics.BMS_SIGMAS)


def test_two_folders_are_two_rows_and_one_folder_twice_is_refused(mini):
    (mini / "copy").mkdir()
    for path in (mini / "model").iterdir():
        (mini / "copy" / path.name).write_bytes(path.read_bytes())
    result = run_test_py(mini, "--data-dir", "mini", "--split", "all", "--maps", "model", "copy",
                         "--output-dir", "out")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((mini / "out" / "metrics.json").read_text())["rows"]
    assert list(rows) == ["model", "copy", "centre_bias", "chance"]
    assert rows["model"] == rows["copy"]  # the same maps score alike
    twice = run_test_py(mini, "--data-dir", "mini", "--split", "all", "--maps", "model",
                        "./model", "--output-dir", "out2")
    assert twice.returncode != 0 and "--maps names model twice" in twice.stderr
