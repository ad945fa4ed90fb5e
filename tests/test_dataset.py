"""Crop geometry, location sampling, split files, synthetic data and real MIT1003 images."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
from conftest import MIT1003, require_mit1003, write_mit_folder


def test_crop_at_the_top_left_border_replicates_edge_pixels_like_a_hand_built_crop():
    size = 400
    image = torch.arange(3 * size * size, dtype=torch.int64).remainder(251).to(torch.uint8)
    image = image.view(1, 3, size, size)
    scales = [dataset.pad_images(image)] * 3
    rel = torch.tensor([[0.0, 0.5]])  # centre row 0, column 200
    crop = dataset.cut_crops(scales, torch.tensor([0]), rel)[0, 0]  # [3, 42, 42]
    # by hand: rows -21..20 clamp to 0..20, columns 179..220
    rows = np.clip(np.arange(-21, 21), 0, size - 1)
    cols = np.arange(179, 221)
    expected = image[0].numpy()[:, rows][:, :, cols].astype(np.float32) / 255
    assert crop.shape == (3, 42, 42)
    np.testing.assert_array_equal(crop.numpy(), expected)


def test_crop_at_the_bottom_right_corner_and_flip():
    size = 150
    image = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    padded = [dataset.pad_images(image)] * 3
    rel = torch.tensor([[0.999, 0.999]])  # centre pixel (149, 149)
    crop = dataset.cut_crops(padded, torch.tensor([0]), rel)[0, 0]
    rows = np.clip(np.arange(149 - 21, 149 + 21), 0, size - 1)
    expected = image[0].numpy()[:, rows][:, :, rows].astype(np.float32) / 255
    np.testing.assert_array_equal(crop.numpy(), expected)
    flipped = dataset.cut_crops(padded, torch.tensor([0]), rel, torch.tensor([True]))[0, 0]
    np.testing.assert_array_equal(flipped.numpy(), expected[:, :, ::-1])


def test_the_three_scales_share_one_relative_centre():
    rel = torch.tensor([[0.5, 0.25]])
    assert [dataset.crop_starts(rel, s).tolist() for s in dataset.SCALES] == [
        [[179, 79]], [[104, 41]], [[54, 16]]]


def test_sampling_respects_thresholds_and_counts():
    maps = torch.zeros(3, 40, 40, dtype=torch.uint8)
    maps[0, 5:10, 5:10] = 255          # fixated block
    maps[0, 20:30, 20:30] = 128        # in between: never drawn
    maps[1, 0:2, 0:2] = 230            # just above 0.9 * 255
    maps[1, 2:40, :] = 26              # just above 0.1 * 255: not a non-fixation
    maps[1, 0:2, 2:40] = 25            # just below: the only non-fixations
    maps[2] = 0                        # no fixation at all: skipped
    index, rel, label = dataset.sample_locations(maps, torch.Generator().manual_seed(0))
    assert len(label) == 2 * 30 and set(index.tolist()) == {0, 1}
    for i in (0, 1):
        assert (label[index == i] == 1).sum() == 10 and (label[index == i] == 0).sum() == 20
    pixel = (rel * 40).floor().long()
    values = maps[index, pixel[:, 0], pixel[:, 1]].float() / 255
    assert (values[label == 1] > 0.9).all() and (values[label == 0] < 0.1).all()


def test_uniform_locations_come_on_top_without_a_label_and_keep_the_other_draws():
    maps = torch.zeros(2, 40, 40, dtype=torch.uint8)
    maps[:, 5:10, 5:10] = 255
    plain = dataset.sample_locations(maps, torch.Generator().manual_seed(0), 10, 20)
    more = dataset.sample_locations(maps, torch.Generator().manual_seed(0), 10, 20, n_uniform=50)
    assert len(more[2]) == 2 * 80 and more[2].isnan().sum() == 100
    first = torch.arange(30)  # image 0's fixation and non-fixation draws are unchanged
    assert torch.equal(plain[1][first], more[1][first])
    uniform = more[1][30:80]
    assert uniform.min() < 0.2 and uniform.max() > 0.8  # anywhere in the image


def test_split_files_and_folds_are_disjoint_cover_mit1003_and_reproduce():
    splits = {s: dataset.read_split(s) for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 803, "val": 100, "test": 100}
    names = set().union(*splits.values())
    assert len(names) == 1003
    # the documented procedure (sorted names, one seeded permutation) gives the committed files
    remade, folds = dataset.make_splits(names)
    assert remade == splits
    committed = dict(line.split() for line in
                     (dataset.SPLIT_DIR / "mit1003_folds10.txt").read_text().splitlines())
    assert {name: int(k) for name, k in committed.items()} == folds
    assert sorted(np.bincount(list(folds.values()))) == [100] * 7 + [101] * 3
    held_out = set()
    for k in range(dataset.N_FOLDS):
        parts = {p: set(dataset.read_split(f"fold{k}/{p}")) for p in ("train", "val", "test")}
        assert parts["train"] | parts["val"] | parts["test"] == names
        assert not parts["train"] & parts["val"] and not parts["test"] & (parts["train"] |
                                                                          parts["val"])
        assert parts["val"] == set(dataset.read_split(f"fold{(k + 1) % 10}/test"))
        held_out |= parts["test"]
    assert held_out == names  # every image is held out by exactly one fold
    if MIT1003 is not None and MIT1003.is_dir():
        assert names == set(dataset.mit_layout_names(MIT1003)[0])


def test_synthetic_scene_has_the_map_semantics():
    image, points, density = dataset.synthetic_image(np.random.default_rng(0))
    assert image.dtype == np.uint8 and image.shape == (192, 256, 3)
    assert points.sum() == 80 and density.max() == pytest.approx(1.0)
    assert density[points].mean() > density.mean()  # fixations land where the density is high


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "I;16"])
def test_any_image_mode_becomes_rgb(tmp_path, mode):
    array = (np.arange(20 * 30) % 256).reshape(20, 30).astype(np.uint8)
    image = Image.fromarray(array).convert(mode) if mode != "I;16" else \
        Image.fromarray(array.astype(np.uint16) * 256)
    path = tmp_path / f"x_{mode.replace(';', '')}.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    image.save(path)
    rgb = dataset.open_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (30, 20)


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.jpeg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(dataset.DatasetError, match="broken.jpeg"):
        dataset.open_rgb(path)


def test_mit_layout_loading_caches_and_reports_missing_maps(tmp_path):
    data = tmp_path / "mini"
    write_mit_folder(data, ["a", "b", "c"])
    loaded = dataset.load_mit(data, "all", cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert loaded.names == ["a", "b", "c"]
    assert [s.shape for s in loaded.scales] == [(3, 3, s, s) for s in dataset.SCALES]
    assert loaded.fixations[0].shape == (48, 64) and loaded.fixations[0].any()
    again = dataset.load_mit(data, "all", cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert torch.equal(again.scales[1], loaded.scales[1])
    (data / dataset.MAPS / "b_fixPts.jpg").unlink()
    with pytest.raises(dataset.DatasetError, match="without both.*b"):
        dataset.mit_layout_names(data)


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(dataset.DatasetError, match="does not exist"):
        dataset.mit_layout_names(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(dataset.DatasetError, match="ALLSTIMULI"):
        dataset.mit_layout_names(tmp_path / "empty")


def test_real_mit1003_images_load_with_their_ground_truth(tmp_path):
    root = require_mit1003()
    names = dataset.read_split("val")[:3]
    for name in names:
        image = dataset.open_rgb(root / dataset.STIMULI / f"{name}.jpeg")
        points, density = dataset.read_ground_truth(root, name)
        assert points.shape == density.shape == (image.height, image.width)
        assert 20 < points.sum() < 400  # MIT1003 has 48-164 fixations per image
        assert density.max() == pytest.approx(1.0)
        assert density[points].mean() > density.mean()


def test_coursework_files_are_read_and_trained_on(tmp_path):
    """A folder of the coursework's .pth.tar files (and ALLFIXATIONMAPS) trains as it is."""
    import main
    write_mit_folder(tmp_path / "src", ["v1", "v2"], size=(60, 80))
    (tmp_path / "cw").mkdir()
    (tmp_path / "src" / dataset.MAPS).rename(tmp_path / "cw" / dataset.MAPS)
    rng = torch.Generator().manual_seed(0)
    train = [{"X": torch.rand(3, 3, 42, 42, generator=rng), "y": k % 2, "file": f"t{k}.jpeg"}
             for k in range(40)]
    val = [{"X": torch.rand(3, 60, 80), "X_400": torch.rand(3, 400, 400),
            "X_250": torch.rand(3, 250, 250), "X_150": torch.rand(3, 150, 150),
            "spatial_coords": torch.zeros(2500, 2), "y": -1, "file": f"{name}.jpeg"}
           for name in ("v1", "v2")]
    torch.save(train, tmp_path / "cw" / "train_data.pth.tar")
    torch.save(val, tmp_path / "cw" / "val_data.pth.tar")
    loaded = dataset.load_coursework(tmp_path / "cw", "train")
    assert loaded.samples[0].shape == (40, 3, 3, 42, 42)
    assert loaded.samples[1].sum() == 20
    loaded_val = dataset.load_coursework(tmp_path / "cw", "val")
    assert loaded_val.names == ["v1", "v2"] and loaded_val.fixations[0].shape == (60, 80)
    args = main.parse_args(["--data-dir", str(tmp_path / "cw"), "--epochs", "1",
                            "--batch-size", "8", "--checkpoint-dir", str(tmp_path / "ck"),
                            "--run-name", "cw"])
    run = main.build(args)
    assert run["data"]["source"] == "coursework"
    result, _ = main.train(run)
    assert 0 <= result["auc_judd"] <= 1
    assert (tmp_path / "ck" / "cw" / "final_model.pth").is_file()


@pytest.mark.parametrize("records, problem", [
    ({"X": torch.rand(3, 3, 42, 42)}, "it holds a dict"),
    ([], "it holds an empty list"),
    ([{"X": torch.rand(3, 3, 40, 40), "y": 1, "file": "a.jpeg"}],
     "record 0's X is of shape [3, 3, 40, 40]"),
    ([{"X": torch.rand(3, 3, 42, 42), "file": "a.jpeg"}], "record 0 has no number y"),
    ([{"X": torch.rand(3, 3, 42, 42), "y": 1}], "record 0 is not a dict with a 'file' name")])
def test_a_coursework_file_of_another_structure_is_one_clear_error(tmp_path, records, problem):
    torch.save(records, tmp_path / "train_data.pth.tar")
    with pytest.raises(dataset.DatasetError, match=f"train_data.pth.tar is not a coursework "
                                                   f"file: {re.escape(problem)}, where a list"):
        dataset.load_coursework(tmp_path, "train")


def test_a_split_file_naming_missing_images_is_a_clear_error():
    with pytest.raises(dataset.DatasetError, match="names 100 images that the data dir lacks"):
        dataset.read_split("val", names=["only_this_one"])


def test_training_splits_skip_the_original_size_ground_truth(tmp_path, monkeypatch):
    """Training needs only the 400x400 maps; the full-size ones of 800 images take 5 GB."""
    write_mit_folder(tmp_path / "mit", ["a", "b", "c"])
    (tmp_path / "mit1003_folds10.txt").write_text("a 0\nb 1\nc 2\n")
    monkeypatch.setattr(dataset, "SPLIT_DIR", tmp_path)
    load = lambda split: dataset.load_mit(tmp_path / "mit", split, tmp_path / "cache", 1,
                                          progress=False)
    train, test = load("fold0/train"), load("fold0/test")
    assert train.names == ["c"] and train.fixations == [] and train.densities == []
    assert test.names == ["a"] and test.fixations[0].shape == (48, 64)


def test_packed_copy_keeps_every_image_and_its_exact_fixation_points(tmp_path):
    from tools import pack_mit1003
    original, packed = tmp_path / "mini", tmp_path / "packed"
    write_mit_folder(original, ["a", "b", "c"], size=(300, 500))
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):  # sparse, scattered fixations as MIT1003 has them
        points = np.zeros((300, 500), np.uint8)
        points[rng.integers(0, 300, 60), rng.integers(0, 500, 60)] = 255
        Image.fromarray(points).save(original / dataset.MAPS / f"{name}_fixPts.jpg", quality=95)
    pack_mit1003.main(["--data-dir", str(original), "--output-dir", str(packed)])
    assert dataset.mit_layout_names(packed)[0] == ["a", "b", "c"]
    loaded = dataset.load_mit(packed, "all", cache_dir=tmp_path / "cache", workers=1,
                              progress=False, ground_truth=True)
    for i, name in enumerate(loaded.names):
        with Image.open(packed / dataset.STIMULI / f"{name}.jpeg") as stimulus:
            assert stimulus.size == (dataset.SCALES[0], dataset.SCALES[0])
        points, density = dataset.read_ground_truth(original, name)
        assert np.array_equal(loaded.fixations[i], points) and 30 < points.sum() <= 60
        assert loaded.densities[i].shape == (dataset.MAP_SIZE, dataset.MAP_SIZE)
        expected = dataset.resize_map_uint8(density).numpy() / 255
        assert np.abs(loaded.densities[i] - expected).max() < 0.05
    for existing in (packed, original):  # nothing is overwritten, least of all the original
        with pytest.raises(SystemExit, match=f"{existing} exists"):
            pack_mit1003.main(["--data-dir", str(original), "--output-dir", str(existing)])
    assert dataset.read_ground_truth(original, "a")[0].shape == (300, 500)


@pytest.mark.filterwarnings("ignore:.*gets a split of its own")
def test_exported_coursework_files_read_back_as_the_split_they_came_from(tmp_path):
    from tools.export_coursework import main as export
    names = [f"img{i}" for i in range(10)]  # 8 train, val img4, test img8
    write_mit_folder(tmp_path / "src", names, size=(60, 80))
    jpeg = tmp_path / "src" / dataset.STIMULI / "img8.jpeg"  # any stimulus extension works
    Image.open(jpeg).save(jpeg.with_suffix(".png"))
    jpeg.unlink()
    export(["--data-dir", str(tmp_path / "src"), "--output-dir", str(tmp_path / "cw"),
            "--cache-dir", str(tmp_path / "cache")])
    for split in ("val", "test"):
        original = dataset.load_mit(tmp_path / "src", split, tmp_path / "cache")
        exported = dataset.load_coursework(tmp_path / "cw", split)
        assert exported.names == original.names and len(exported) == 1
        for ours, theirs in zip(exported.scales, original.scales):
            assert torch.equal(ours, theirs)
        assert np.array_equal(exported.fixations[0], original.fixations[0])
    train = dataset.load_coursework(tmp_path / "cw", "train")
    assert train.samples[0].shape == (8 * 30, 3, 3, 42, 42) and train.samples[1].sum() == 8 * 10
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(SystemExit, match="cannot write .*a_file.*Pass a writable --output-dir"):
        export(["--data-dir", str(tmp_path / "src"), "--output-dir",
                str(tmp_path / "a_file" / "cw"), "--cache-dir", str(tmp_path / "cache")])
    before = (tmp_path / "cw" / "train_data.pth.tar").read_bytes()
    for existing in (tmp_path / "cw", tmp_path / "src"):  # what exists is never replaced
        with pytest.raises(SystemExit, match="would replace|is the data dir"):
            export(["--data-dir", str(tmp_path / "src"), "--output-dir", str(existing),
                    "--cache-dir", str(tmp_path / "cache")])
    assert (tmp_path / "cw" / "train_data.pth.tar").read_bytes() == before
    assert not (tmp_path / "src" / "train_data.pth.tar").exists()


def test_split_files_are_never_rewritten_from_a_folder_that_is_not_mit1003(tmp_path):
    write_mit_folder(tmp_path / "other", ["a", "b", "c", "d"])
    before = {p.name: p.read_bytes() for p in dataset.SPLIT_DIR.iterdir()}
    with pytest.raises(SystemExit, match="holds other images than the 1003 that splits/ "
                                         "describes"):
        dataset.main(["split", "--data-dir", str(tmp_path / "other")])
    assert {p.name: p.read_bytes() for p in dataset.SPLIT_DIR.iterdir()} == before
