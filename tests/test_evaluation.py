"""test.py end to end (via subprocess: tests never import test) and the shipped checkpoints."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import metrics
from checkpoints import load_checkpoint, model_from_checkpoint
from conftest import PRETRAINED, ROOT, load_test_py, require_mit1003, write_mit_folder


@pytest.mark.parametrize("name, n_parameters", [("MrCNN", 6_473_153), ("MrCNNs", 2_682_689)])
def test_shipped_checkpoint_metadata_and_forward_pass(name, n_parameters):
    path = PRETRAINED / f"{name}.pth"
    assert path.stat().st_size < 30e6
    state = load_checkpoint(path)  # weights_only=True
    assert state["model"] == name and state["command"].startswith("python main.py")
    assert set(state["post_processing"]) >= {"blur_sigma", "centre_weight"}
    assert len(state["normalisation"]["mean"]) == 3
    model = model_from_checkpoint(state, path).eval()
    assert sum(p.numel() for p in model.parameters()) == n_parameters
    torch.testing.assert_close(model.input_mean, torch.tensor(state["normalisation"]["mean"]))
    probability = torch.sigmoid(model(torch.rand(4, 3, 3, 42, 42)))
    assert probability.shape == (4,) and ((probability > 0) & (probability < 1)).all()


def test_shipped_mrcnn_names_teachers_that_ship_with_it():
    """The shipped MrCNN was distilled from other checkpoints: its command must stay runnable."""
    state = load_checkpoint(PRETRAINED / "MrCNN.pth")
    words = state["command"].split()
    named = [words[i + 1] for i, word in enumerate(words) if word in ("--teacher", "--init-from")]
    assert named, state["command"]
    for path in named:
        assert (ROOT / path).resolve() != (PRETRAINED / "MrCNN.pth").resolve(), path
        teacher = load_checkpoint(ROOT / path)
        assert teacher["model"] in ("MrCNN", "MrCNNs") and "command" in teacher


def run_test_py(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "test.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def test_evaluation_of_an_mit_layout_folder_writes_every_output(tmp_path):
    data = tmp_path / "mini"
    write_mit_folder(data, ["a", "b", "c"], size=(60, 80))
    out = tmp_path / "out"
    result = run_test_py(tmp_path, "--checkpoint", str(PRETRAINED / "MrCNNs.pth"), "--data-dir",
                         str(data), "--split", "all", "--output-dir", str(out), "--save-maps")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["n_images"] == 3
    for name in metrics.METRIC_NAMES:
        assert np.isfinite(summary[name]), name
    assert set(summary["rows"]) == {"raw", "blurred", "post_processed", "centre_bias", "chance"}
    for row in summary["rows"].values():
        assert set(row) == set(metrics.METRIC_NAMES)
        assert set(row["auc_judd"]) == {"mean", "std", "ci95"}
    lines = (out / "per_image.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 3 * 5
    assert Image.open(out / "best_worst.png").size[0] > 100
    for name in ("a", "b", "c"):
        assert Image.open(out / "maps" / f"{name}.png").size == (80, 60)
    assert "centre_bias" in result.stdout and "+-" in result.stdout
    literature = summary["literature"]  # the raw row under the BMS protocols, at 80x60
    assert literature["size"] == [60, 80] and literature["shuffle_images"] == 3
    for protocol in metrics.BMS_PROTOCOLS:
        block = literature[protocol]
        assert block["sigmas"] == list(metrics.BMS_SIGMAS) and len(block["means"]) == 13
        assert block["best"] == max(block["means"]) and 0 <= block["best"] <= 1
        assert block["best_sigma"] == block["sigmas"][block["means"].index(block["best"])]
    assert summary["literature_rows"]["raw"] == {p: literature[p] for p in metrics.BMS_PROTOCOLS}
    assert set(summary["literature_rows"]) == {"raw", "centre_bias"}
    assert "BMS code, ICCV 2013" in result.stdout
    names, maps = load_test_py().load_raw_maps(out / "raw_maps.npz")
    assert names == ["a", "b", "c"] and maps.shape == (3, 50, 50) and maps.dtype == np.float32


def test_a_one_image_split_says_why_it_has_no_confidence_interval_and_no_shuffled_auc(tmp_path):
    data = tmp_path / "mini"
    write_mit_folder(data, ["a", "b", "c"])  # a split of its own: 1 train / 1 val / 1 test
    result = run_test_py(tmp_path, "--data-dir", str(data), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "scoring 1 image x 5 rows" in result.stdout
    assert "1 image: no 95% CI, and no sAUC (its negatives are other images' fixations)" \
        in result.stdout
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text(),
                         parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert summary["auc_shuffled"] is None and np.isfinite(summary["auc_judd"])
    assert summary["rows"]["raw"]["auc_judd"]["ci95"] is None


def test_a_corrupt_image_is_skipped_with_one_plain_warning_line_and_the_rest_scored(tmp_path):
    data = tmp_path / "mini"
    write_mit_folder(data, ["a", "b", "c", "d"], size=(60, 80))
    corrupt = data / dataset.STIMULI / "b.jpeg"
    corrupt.write_bytes(corrupt.read_bytes()[:150])
    out = tmp_path / "out"
    result = run_test_py(tmp_path, "--data-dir", str(data), "--split", "all", "--output-dir",
                         str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["n_images"] == 3
    skip_lines = [line for line in result.stderr.splitlines() if "b.jpeg" in line]
    assert len(skip_lines) == 1 and skip_lines[0].startswith("warning: cannot read image")
    assert skip_lines[0].endswith("The image is skipped.")
    assert "warnings.warn" not in result.stderr and "UserWarning" not in result.stderr


def test_own_images_greyscale_and_rgba_give_map_and_overlay_at_their_size(tmp_path):
    rng = np.random.default_rng(0)
    grey = tmp_path / "grey.png"
    Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8)).save(grey)
    rgba = tmp_path / "alpha.png"
    Image.fromarray(rng.integers(0, 255, (40, 30, 4), dtype=np.uint8), "RGBA").save(rgba)
    out = tmp_path / "maps"
    result = run_test_py(tmp_path, "--images", str(grey), str(rgba), "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    for stem, size in (("grey", (70, 50)), ("alpha", (30, 40))):
        saliency = Image.open(out / f"{stem}_saliency.png")
        assert saliency.size == size and saliency.mode == "L"
        assert Image.open(out / f"{stem}_overlay.png").size == size


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 truncated"), "cannot read image"),
    (lambda p: None, "does not exist"),
])
def test_bad_own_image_is_one_clear_error(tmp_path, make, message):
    path = tmp_path / "bad.jpg"
    make(path)
    result = run_test_py(tmp_path, "--images", str(path), "--output-dir", str(tmp_path / "o"))
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_own_images_from_a_folder_skip_an_unreadable_file_write_the_rest_and_fail(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.jpg", "d.webp", "e.gif"):  # a folder yields every format a file does
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(photos / name)
    (photos / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (photos / "notes.txt").write_text("not an image, not taken")
    out = tmp_path / "maps"
    result = run_test_py(tmp_path, "--images", str(photos), "--output-dir", str(out))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "1 of the 5 images could not be read (b.jpg" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        f"{n}_{kind}.png" for n in "acde" for kind in ("overlay", "saliency")]


@pytest.mark.parametrize("layout, message", [
    ({"empty": None}, "holds no images"),
    ({"x/p.png": 1, "y/p.jpg": 1}, "would write the same output files (p_saliency.png)"),
])
def test_own_image_folders_that_give_nothing_or_clashing_names_are_one_clear_error(
        tmp_path, layout, message):
    for name, is_image in layout.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_image:
            Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(path)
        else:
            path.mkdir()
    folders = sorted({str(tmp_path / name.split("/")[0]) for name in layout})
    result = run_test_py(tmp_path, "--images", *folders, "--output-dir", str(tmp_path / "o"))
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("hello")
    result = run_test_py(tmp_path, "--checkpoint", str(bogus), "--images", "x.png")
    assert result.returncode != 0 and "not a loadable checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_ship_writes_fp16_weights_with_the_training_command_and_no_optimiser(tmp_path):
    import checkpoints
    import main
    from MrCNN import MrCNN
    torch.manual_seed(0)
    model = MrCNN().eval()
    command = "python main.py --data-dir data/MIT1003 --epochs 30 --teacher a.pth --seed 3"
    args = vars(main.parse_args(command.split()[2:]))
    source, destination = tmp_path / "best.pth", tmp_path / "shipped" / "MrCNN.pth"
    checkpoints.save_checkpoint({"model": "MrCNN", "model_state": model.state_dict(),
                                 "args": args, "command": command, "rng_state": {},
                                 "optimizer_state": {"state": {}}, "epoch": 12}, source)
    assert checkpoints.main(["ship", str(source), str(destination), "--note", "CPU, bf16"]) == 0
    state = load_checkpoint(destination)  # weights_only=True
    assert state["command"] == command and state["args"]["teacher"] == ["a.pth"]
    assert state["training_note"] == "CPU, bf16" and state["epoch"] == 12
    assert not {"optimizer_state", "rng_state"} & set(state)
    assert state["model_state"]["fusion.out.weight"].dtype == torch.float16
    assert state["model_state"]["input_mean"].dtype == torch.float32
    assert destination.stat().st_size < 0.6 * source.stat().st_size
    crops = torch.rand(8, 3, 3, 42, 42)
    shipped = model_from_checkpoint(state, destination).eval()
    torch.testing.assert_close(shipped(crops), model(crops), atol=2e-3, rtol=0)


def test_ship_never_replaces_its_source_and_names_an_unwritable_destination(tmp_path):
    shipped = PRETRAINED / "MrCNNs.pth"
    before = shipped.read_bytes()
    (tmp_path / "a_file").write_text("not a folder")
    for destination, message in ((shipped, "onto itself would replace the checkpoint it reads"),
                                 (tmp_path / "a_file" / "x.pth", "cannot write")):
        result = subprocess.run([sys.executable, str(ROOT / "checkpoints.py"), "ship",
                                 str(shipped), str(destination), "--note", "x"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr
    assert shipped.read_bytes() == before


def test_cross_validation_scores_every_image_once_by_the_run_that_held_it_out(tmp_path,
                                                                             monkeypatch):
    evaluation = load_test_py()
    data = tmp_path / "mit"
    names = [f"img{i:02d}" for i in range(20)]
    write_mit_folder(data, names)
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "mit1003_folds10.txt").write_text("".join(f"{n} {i % 10}\n"
                                                        for i, n in enumerate(names)))
    monkeypatch.setattr(dataset, "SPLIT_DIR", splits)
    shipped = load_checkpoint(PRETRAINED / "MrCNNs.pth")
    folds = []
    for k in range(10):
        shipped["args"] = {**shipped["args"], "fold": k}
        shipped["post_processing"] = None
        folds.append(tmp_path / f"fold{k}.pth")
        torch.save(shipped, folds[-1])
    # 4x4 maps from crops: the pooling is under test, not the inference (29 folds are scored)
    common = ["--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"), "-j", "1",
              "--precision", "fp32", "--device", "cpu", "--inference", "crops", "--grid-size",
              "4"]
    assert evaluation.main([*common, "--folds", *map(str, folds),
                            "--output-dir", str(tmp_path / "cv")]) == 0
    summary = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert summary["n_images"] == 20 and len(summary["folds"]) == 10
    with open(tmp_path / "cv" / "per_image.csv") as handle:
        pooled = [r for r in csv.DictReader(handle) if r["row"] == "raw"]
    assert sorted(r["image"] for r in pooled) == names  # each image exactly once
    assert summary["auc_shuffled"] == pytest.approx(
        np.mean([float(r["auc_shuffled"]) for r in pooled]))
    evaluation.main([*common, "--checkpoint", str(folds[3]), "--split", "fold3/test",
                     "--output-dir", str(tmp_path / "fold3")])
    own = json.loads((tmp_path / "fold3" / "metrics.json").read_text())
    assert summary["folds"][3]["auc_shuffled"] == pytest.approx(own["auc_shuffled"], abs=1e-12)
    assert summary["folds"][3]["n_images"] == own["n_images"] == 2
    # a fold given as the scores its own evaluation wrote pools to the same figures
    with_folder = [*map(str, folds[:3]), str(tmp_path / "fold3"), *map(str, folds[4:])]
    assert evaluation.main([*common, "--folds", *with_folder,
                            "--output-dir", str(tmp_path / "cv_read")]) == 0
    read = json.loads((tmp_path / "cv_read" / "metrics.json").read_text())
    for m in metrics.METRIC_NAMES:
        assert read[m] == pytest.approx(summary[m], abs=1e-6)
        assert read["folds"][3][m] == pytest.approx(summary["folds"][3][m], abs=1e-6)
    assert read["folds"][3]["scores"] == str(tmp_path / "fold3")
    assert read["folds"][3]["checkpoint"] == str(folds[3]) and read["n_images"] == 20
    # the BMS protocols pool the folds' raw maps, kept (float16) or just predicted, alike
    for protocol in metrics.BMS_PROTOCOLS:
        assert read["literature"][protocol]["means"] == pytest.approx(
            summary["literature"][protocol]["means"], abs=0.002)
    kept_names, kept = evaluation.load_raw_maps(tmp_path / "cv" / "raw_maps.npz")
    assert kept_names == [r["image"] for r in pooled] and kept.shape == (20, 4, 4)
    (tmp_path / "fold3" / "raw_maps.npz").rename(tmp_path / "fold3_maps.npz")
    assert evaluation.main([*common, "--folds", *with_folder,
                            "--output-dir", str(tmp_path / "cv_no_maps")]) == 0
    assert "literature" not in json.loads((tmp_path / "cv_no_maps" / "metrics.json").read_text())
    (tmp_path / "fold3_maps.npz").rename(tmp_path / "fold3" / "raw_maps.npz")
    with pytest.raises(SystemExit, match="was not trained with --fold 0"):
        evaluation.main([*common, "--folds", *map(str, folds[::-1]),
                         "--output-dir", str(tmp_path / "cv2")])
    # a wrong last fold is refused before any fold is scored, not after nine
    monkeypatch.setattr(evaluation, "score_split", lambda *a: pytest.fail("scored a fold"))
    with pytest.raises(SystemExit, match="was not trained with --fold 9"):
        evaluation.main([*common, "--folds", *map(str, folds[:9] + folds[8:9]),
                         "--output-dir", str(tmp_path / "cv3")])
    # scores of another fold, another seed, or with an image missing are refused, unscored
    wrong_place = [*map(str, folds[:4]), str(tmp_path / "fold3"), *map(str, folds[5:])]
    (tmp_path / "empty").mkdir()
    for runs, extra, message in (
            (wrong_place, [], "holds scores of --split fold3/test, not fold4/test"),
            (with_folder, ["--seed", "1"], "was scored with --seed 0, not 1: pass --seed 0"),
            (with_folder[:3] + [str(tmp_path / "empty")] + with_folder[4:], [],
             "cannot read the scores in .*empty")):
        with pytest.raises(SystemExit, match=message):
            evaluation.main([*common, *extra, "--folds", *runs,
                             "--output-dir", str(tmp_path / "cv5")])
    lines = (tmp_path / "fold3" / "per_image.csv").read_text().splitlines()
    (tmp_path / "fold3" / "per_image.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(SystemExit, match="does not score each image of fold 3"):
        evaluation.main([*common, "--folds", *with_folder, "--output-dir", str(tmp_path / "cv6")])
    shipped["post_processing"] = {"blur_sigma": 0.02, "centre_weight": 0.2}
    torch.save(shipped, folds[9])
    with pytest.raises(SystemExit, match="fold9.pth has post-processing, unlike fold 0"):
        evaluation.main([*common, "--folds", *map(str, folds), "--output-dir",
                         str(tmp_path / "cv4")])


# What the BMS code's MATLAB (computeMeanAUC.m with calcAUCscore.m, 2014 release, and
# calcAUCscore_old.m, ICCV 2013) gives for the shipped MrCNN's raw test-split maps, at s = 0 and
# at the best s (0.03-0.04 for the 2014 code, 0.03 for the 2013 one).
BMS_CODE_VALUES = {"bms2014": (0.7000, 0.7023), "bms2013": (0.7082, 0.7108)}


def test_bms_protocols_on_the_shipped_mrcnns_kept_test_maps_reproduce_the_bms_code(tmp_path):
    root = require_mit1003()
    kept = ROOT / "docs" / "test_split" / "MrCNN"
    names, maps = load_test_py().load_raw_maps(kept / "raw_maps.npz")
    assert sorted(names) == dataset.read_split("test")
    shuffle, n_images = dataset.shuffle_map(root, tmp_path / "cache")
    assert tuple(shuffle.shape) == (768, 1024) and n_images == 1003
    fixations = [dataset.read_fixation_points(root, name) for name in names]
    scored = metrics.bms_summary(metrics.bms_dataset_scores(maps, fixations, shuffle, workers=2))
    literature = json.loads((kept / "metrics.json").read_text())["literature"]
    for protocol, (no_blur, best) in BMS_CODE_VALUES.items():
        assert scored[protocol]["means"] == pytest.approx(literature[protocol]["means"],
                                                          abs=0.002)  # float16 maps kept
        assert scored[protocol]["means"][0] == pytest.approx(no_blur, abs=0.004)
        assert scored[protocol]["best"] == pytest.approx(best, abs=0.004)
        assert 0.02 <= scored[protocol]["best_sigma"] <= 0.05


def test_a_model_is_scored_only_where_its_run_held_the_images_out(tmp_path, monkeypatch):
    """A --fold K run trained on most of the test split, and a run on the 803/100/100 split on
    most of fold K: either pairing is refused; a fold run tunes on its own inner fold K+1."""
    evaluation = load_test_py()
    fold3 = load_checkpoint(PRETRAINED / "MrCNNs.pth")
    fold3["args"] = {**fold3["args"], "fold": 3}
    torch.save(fold3, tmp_path / "fold3.pth")
    write_mit_folder(tmp_path / "mini", ["a", "b", "c"])  # never read: refused, or mocked
    common = ["--data-dir", str(tmp_path / "mini"), "--output-dir", str(tmp_path / "out")]
    for checkpoint, split, trained_on in ((tmp_path / "fold3.pth", "test", "--fold 3"),
                                          (PRETRAINED / "MrCNNs.pth", "fold3/test",
                                           "the 803/100/100 split")):
        with pytest.raises(SystemExit, match=f"comes from a run on {trained_on}, which trained "
                                             f"on images of --split {split}"):
            evaluation.main([*common, "--checkpoint", str(checkpoint), "--split", split])
    loaded = []
    monkeypatch.setattr(dataset, "load_mit", lambda data_dir, split, *rest, **options:
                        loaded.append(split) or sys.exit("stop after the first load"))
    with pytest.raises(SystemExit, match="stop after the first load"):
        evaluation.main([*common, "--checkpoint", str(tmp_path / "fold3.pth"), "--split",
                         "fold3/test", "--tune-post-processing", str(tmp_path / "tuned.pth")])
    assert loaded == ["fold3/val"]  # fold 3 run: validated on fold 4


def test_scoring_all_of_mit1003_warns_that_it_holds_the_training_images():
    flattery_warning = load_test_py().flattery_warning
    mit1003 = [name for split in ("train", "val", "test") for name in dataset.read_split(split)]
    assert "flatter" in flattery_warning("all", mit1003)
    assert flattery_warning("test", dataset.read_split("test")) is None
    assert flattery_warning("all", ["my_scene1", "my_scene2"]) is None  # another dataset


@pytest.mark.parametrize("split", ["fold10/test", "fold3/val", "fold/test", "foldx/test",
                                   "fold-1/test", "fold\u00b2/test", "everything"])
def test_an_unknown_split_is_one_clear_error(tmp_path, split):
    with pytest.raises(SystemExit, match=f"unknown --split '{split}': choose train, val, test, "
                                         f"all or fold<K>/test with K in 0..9"):
        load_test_py().main(["--split", split, "--output-dir", str(tmp_path / "out")])


def test_a_grid_finer_than_the_largest_copy_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="--grid-size must be at most 400"):
        load_test_py().main(["--grid-size", "100000", "--output-dir", str(tmp_path / "out")])


def test_compare_results_pairs_the_images_both_scored(tmp_path, capsys):
    """B varies from image to image and A = B + 0.01 on every shared image: the paired
    difference is exactly 0.01 with no spread, though each side's own CI is wide."""
    from tools.compare_results import main as compare, paired_differences, read_row
    b_scores = {f"img{i}": 0.5 + 0.04 * i for i in range(6)}
    a_scores = {name: value + 0.01 for name, value in b_scores.items()} | {"only_in_a": 0.9}
    for folder, scores in (("a", a_scores), ("b", b_scores)):
        (tmp_path / folder).mkdir()
        with open(tmp_path / folder / "per_image.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "row", *metrics.METRIC_NAMES])
            for name, value in scores.items():
                writer.writerow([name, "raw", *[value] * len(metrics.METRIC_NAMES)])
                writer.writerow([name, "blurred", *[0.0] * len(metrics.METRIC_NAMES)])
    names, table = paired_differences(read_row(tmp_path / "a", "raw"),
                                      read_row(tmp_path / "b", "raw"))
    assert names == sorted(b_scores)
    for m in metrics.METRIC_NAMES:
        assert table[m]["difference"]["mean"] == pytest.approx(0.01)
        assert table[m]["difference"]["ci95"] == pytest.approx(0.0, abs=1e-12)
        assert table[m]["a"]["ci95"] > 0.02 and table[m]["b"]["mean"] == pytest.approx(0.6)
    compare([str(tmp_path / "a"), str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert "6 images in both (7 in A, 6 in B)" in out and "A ahead" in out  # +0.01, no spread
    # a second run of A's recipe 0.02 above A: +0.01 is within the rerun spread, so level
    (tmp_path / "a2").mkdir()
    with open(tmp_path / "a2" / "per_image.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "row", *metrics.METRIC_NAMES])
        for name, value in a_scores.items():
            writer.writerow([name, "raw", *[value + 0.02] * len(metrics.METRIC_NAMES)])
    _, spread = compare([str(tmp_path / "a"), str(tmp_path / "b"), "--rerun",
                         str(tmp_path / "a2")])
    assert spread == {m: pytest.approx(0.02) for m in metrics.METRIC_NAMES}
    out = capsys.readouterr().out
    assert "rerun spread" in out and "A ahead" not in out and out.count("level") == 8
    with pytest.raises(SystemExit, match="has no row 'post_processed'"):
        compare([str(tmp_path / "a"), str(tmp_path / "b"), "--row", "post_processed"])


def test_compare_results_takes_both_sides_over_the_images_both_scored_finite():
    """An image that A could not score (NaN: no fixations) leaves B's mean as well, so that
    B's mean, A's mean and their difference describe the same images."""
    from tools.compare_results import paired_differences
    b = {f"img{i}": {m: 0.5 + 0.04 * i for m in metrics.METRIC_NAMES} for i in range(6)}
    a = {name: {m: v + 0.01 for m, v in row.items()} for name, row in b.items()}
    a["img0"] = {m: float("nan") for m in metrics.METRIC_NAMES}
    b["img5"] = dict(b["img5"], nss=float("nan"))
    _, table = paired_differences(a, b)
    assert table["cc"]["b"]["mean"] == pytest.approx(np.mean([0.54, 0.58, 0.62, 0.66, 0.70]))
    assert table["nss"]["b"]["mean"] == pytest.approx(np.mean([0.54, 0.58, 0.62, 0.66]))
    assert table["nss"]["a"]["mean"] == pytest.approx(table["nss"]["b"]["mean"] + 0.01)
    assert table["cc"]["difference"]["mean"] == pytest.approx(0.01)


def test_a_missing_data_dir_is_the_only_line_test_py_prints(tmp_path):
    result = run_test_py(tmp_path, "--data-dir", "nowhere", "--output-dir", "out")
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.startswith("error: data dir nowhere does not exist")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kept, row_start", [
    ("cv_adam_run3", "| MrCNN, the shipped teacher's recipe"),
    ("cv_sgd", "| MrCNN, the paper's SGD recipe"),
    ("cv_mrcnns", "| MrCNNs, the teacher's recipe"),
    ("cv_distil", "| MrCNN distilled from the fold's two models")])
def test_the_readmes_cross_validation_rows_pool_from_the_scores_kept_in_docs(tmp_path, kept,
                                                                             row_start):
    """Each printed figure of these rows (and of the centre bias) is what test.py --folds gives
    over docs/<kept>/fold0..9, to the last printed digit; the BMS columns are those of the
    pooled metrics.json kept beside the folds, whose own rows are that same pooling."""
    assert set(dataset.read_split("val")) == set(dataset.read_split("fold8/test"))
    folders = [str(ROOT / "docs" / kept / f"fold{k}") for k in range(10)]
    assert load_test_py().main(["--data-dir", str(tmp_path / "absent"), "--folds", *folders,
                                "--output-dir", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())["rows"]
    pooled = ROOT / "docs" / kept / "metrics.json"
    literature = {}
    if pooled.exists():
        kept_pooling = json.loads(pooled.read_text())
        assert kept_pooling["rows"] == rows
        literature = kept_pooling["literature_rows"]
    readme = (ROOT / "README.md").read_text().splitlines()
    for start, row in ((row_start, "raw"), ("| centre bias (Gaussian)", "centre_bias")):
        [line] = [line for line in readme if line.startswith(start)]
        cells = [c.replace("*", "").strip() for c in line.split("|")[2:8]]
        for metric, cell in zip(("auc_shuffled", "auc_judd", "nss", "cc"), cells):
            mean, ci = cell.split("+-")
            assert f"{rows[row][metric]['mean']:.4f}" == mean.strip(), (row, metric)
            assert f"{rows[row][metric]['ci95']:.4f}" == ci.strip(), (row, metric)
        if row in literature:
            for protocol, cell in zip(metrics.BMS_PROTOCOLS, cells[4:]):
                best = literature[row][protocol]
                assert cell == f"{best['best']:.4f} ({best['best_sigma']:.2f})", (row, protocol)
    assert kept == "cv_sgd" or literature, "the Adam recipe's pooled literature block is kept"


def test_the_literature_table_reads_kept_folds_and_weights_their_mean_by_images(tmp_path):
    from tools import literature_table
    folders = [ROOT / "docs" / "cv_adam_run3" / "fold0", ROOT / "docs" / "test_split" / "MrCNN"]
    rows = literature_table.fold_row(folders[0]), literature_table.fold_row(folders[1])
    kept = json.loads((folders[0] / "metrics.json").read_text())
    assert rows[0]["mit"] == kept["auc_shuffled"] and rows[0]["n"] == 101
    assert rows[0]["bms2013"][1] == kept["literature_rows"]["raw"]["bms2013"]["best"]
    table = literature_table.markdown(rows).splitlines()
    weighted = (101 * rows[0]["mit"] + 100 * rows[1]["mit"]) / 201
    assert table[-1].startswith(f"| mean of 2 (201 images) | {weighted:.4f} |")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text(json.dumps({"n_images": 3}))
    with pytest.raises(SystemExit, match="holds no literature-protocol block"):
        literature_table.main([str(tmp_path / "old")])
