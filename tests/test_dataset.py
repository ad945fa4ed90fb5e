"""Crop geometry, location sampling, split files, synthetic data and real MIT1003 images."""
import numpy as np
import pytest
import torch
from PIL import Image

import dataset
from conftest import MIT1003, require


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


def test_a_lower_fixation_threshold_widens_the_positives():
    maps = torch.zeros(1, 40, 40, dtype=torch.uint8)
    maps[0, 5:10, 5:10] = 255
    maps[0, 20:30, 20:30] = 140        # above 0.5 * 255, below 0.9 * 255
    draw = lambda t: dataset.sample_locations(maps, torch.Generator().manual_seed(0), 200, 20,
                                              fixation_threshold=t)
    for threshold, lowest in ((0.9, 255), (0.5, 140)):
        index, rel, label = draw(threshold)
        pixel = (rel * 40).floor().long()
        values = maps[index, pixel[:, 0], pixel[:, 1]]
        assert values[label == 1].min() == lowest and (values[label == 0] < 26).all()


def test_map_labels_are_the_fixation_map_values_at_every_drawn_location():
    maps = torch.zeros(2, 40, 40, dtype=torch.uint8)
    maps[:, 5:10, 5:10] = 255
    maps[:, 20:30, 20:30] = 140
    index, rel, label = dataset.sample_locations(maps, torch.Generator().manual_seed(0), 10, 20,
                                                 n_uniform=400, map_labels=True)
    assert len(label) == 2 * 430
    pixel = (rel * 40).floor().long()
    values = maps[index, pixel[:, 0], pixel[:, 1]].float() / 255
    torch.testing.assert_close(label, values)
    assert (label[:10] == 1).all() and (label[10:30] == 0).all()  # peaks, then non-fixations
    uniform = label[30:430]
    assert (uniform == 0).any() and (uniform == 1).any() and (uniform == 140 / 255).any()
    with pytest.raises(ValueError, match="map_labels"):
        dataset.sample_locations(maps, torch.Generator(), n_uniform=5)


def test_centre_matched_negatives_follow_where_fixations_fall_in_other_images():
    rng = np.random.default_rng(0)
    maps = torch.zeros(40, 60, 60, dtype=torch.uint8)
    for i, (v, u) in enumerate(rng.normal(30, 4, size=(40, 2)).round().astype(int)):
        maps[i, v - 2:v + 3, u - 2:u + 3] = 255  # one centre-biased fixated blob per image
    prior = dataset.fixation_prior(maps)
    assert prior.shape == (60, 60) and prior[30, 30] > 10 * prior[0, 0] > 0
    uniform = dataset.sample_locations(maps, torch.Generator().manual_seed(0), 10, 50)
    matched = dataset.sample_locations(maps, torch.Generator().manual_seed(0), 10, 50, prior)
    distance = lambda rel, label: (rel[label == 0] - 0.5).norm(dim=1).mean()
    positives = (uniform[1][uniform[2] == 1] - 0.5).norm(dim=1).mean()
    assert distance(*matched[1:]) < 0.5 * distance(*uniform[1:])
    assert abs(distance(*matched[1:]) - positives) < 0.05  # as central as the fixations
    pixel = (matched[1] * 60).floor().long()
    values = maps[matched[0], pixel[:, 0], pixel[:, 1]].float() / 255
    assert (values[matched[2] == 0] < 0.1).all()  # still never on a fixation of the image


def test_fixation_point_positives_are_the_recorded_fixations_at_any_image_size():
    maps = torch.zeros(2, 40, 40, dtype=torch.uint8)
    maps[:, 10:20, 10:20] = 255        # the map's peak: never drawn as a positive below
    points = [np.zeros((30, 60), bool), np.zeros((80, 20), bool)]
    points[0][3, 50] = points[0][27, 1] = True
    points[1][70, 5] = True
    locations = dataset.fixation_point_locations(points)
    np.testing.assert_allclose(locations[0].numpy(), [[3.5 / 30, 50.5 / 60], [27.5 / 30, 1.5 / 60]])
    np.testing.assert_allclose(locations[1].numpy(), [[70.5 / 80, 5.5 / 20]])
    index, rel, label = dataset.sample_locations(maps, torch.Generator().manual_seed(0), 10, 20,
                                                 positive_locations=locations)
    for i in (0, 1):
        drawn = {tuple(r) for r in rel[(index == i) & (label == 1)].tolist()}
        assert (label[index == i] == 1).sum() == 10
        assert drawn <= {tuple(r) for r in locations[i].tolist()}
    assert len({tuple(r) for r in rel[(index == 0) & (label == 1)].tolist()}) == 2  # both used
    pixel = (rel * 40).floor().long()
    assert (maps[index, pixel[:, 0], pixel[:, 1]][label == 0] < 26).all()
    with pytest.raises(dataset.DatasetError, match="--positives map-peak"):
        dataset.fixation_point_locations([])


def test_colour_jitter_factors_do_what_they_say_and_treat_the_three_scales_alike():
    torch.manual_seed(0)
    crop = 0.2 + 0.6 * torch.rand(1, 1, 3, 42, 42)
    crops = crop.expand(4, 3, 3, 42, 42).clone()  # the same picture at all three scales
    factors = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.5], [1.0, 0.5, 1.0]])
    out = dataset.colour_jitter(crops, factors)
    torch.testing.assert_close(out[0], crops[0])                      # identity
    assert torch.allclose(out[1, :, 0], out[1, :, 1], atol=1e-6)      # no saturation: grey
    torch.testing.assert_close(out[2], 0.5 * crops[2])                # half brightness
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    grey = lambda x: (x * luma).sum(-3)
    torch.testing.assert_close(grey(out[3]).mean(), grey(crops[3]).mean())  # contrast keeps mean
    assert float(grey(out[3]).std()) == pytest.approx(0.5 * float(grey(crops[3]).std()), rel=1e-4)
    for k in range(4):
        torch.testing.assert_close(out[k, 0], out[k, 1])
        torch.testing.assert_close(out[k, 0], out[k, 2])
    assert out.min() >= 0 and dataset.colour_jitter(crops, torch.full((4, 3), 3.0)).max() <= 1


def test_split_files_are_disjoint_and_cover_mit1003():
    splits = {s: dataset.read_split(s) for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 803, "val": 100, "test": 100}
    union = set().union(*splits.values())
    assert len(union) == 1003
    if MIT1003.exists():
        names, _ = dataset.mit_layout_names(MIT1003)
        assert union == set(names)
        assert dataset.make_splits(names) == splits  # the documented procedure reproduces them


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


def write_mit_folder(root, names, size=(48, 64)):
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
    root = require(MIT1003)
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
                            "--log-dir", str(tmp_path / "logs"), "--run-name", "cw"])
    trainer = main.Trainer(args)
    assert trainer.data_description.startswith("coursework")
    result, _ = trainer.train(progress=False)
    assert 0 <= result["auc_judd"] <= 1
    assert (tmp_path / "ck" / "cw" / "final_model.pth").is_file()


def test_a_split_file_naming_missing_images_is_a_clear_error():
    with pytest.raises(dataset.DatasetError, match="names 100 images that the data dir lacks"):
        dataset.read_split("val", names=["only_this_one"])
