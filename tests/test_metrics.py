"""metrics.py against the MIT benchmark's MATLAB values, and the invariants every metric obeys."""
import json
import warnings

import numpy as np
import pytest
import torch

import metrics
from conftest import METRICS_REFERENCE

DETERMINISTIC = {"auc_judd": lambda c: metrics.auc_judd(c["sal"], c["fix"]),
                 "nss": lambda c: metrics.nss(c["sal"], c["fix"]),
                 "cc": lambda c: metrics.cc(c["sal"], c["dens"]),
                 "sim": lambda c: metrics.similarity(c["sal"], c["dens"]),
                 "kld": lambda c: metrics.kl_divergence(c["sal"], c["dens"])}


def load_cases():
    folder = METRICS_REFERENCE
    arrays = np.load(folder / "cases.npz")
    reference = json.loads((folder / "reference.json").read_text())["cases"]
    for name, expected in sorted(reference.items()):
        case = {k: arrays[f"{name}_{k}"] for k in ("sal", "fix", "other", "dens")}
        yield name, case, expected


def test_deterministic_metrics_match_matlab_reference():
    cases = list(load_cases())
    assert len(cases) == 12
    for name, case, expected in cases:
        for metric, fn in DETERMINISTIC.items():
            assert fn(case) == pytest.approx(expected[metric], abs=1e-6), (name, metric)


def test_random_auc_metrics_match_matlab_reference_on_average():
    for name, case, expected in load_cases():
        borji = np.mean([metrics.auc_borji(case["sal"], case["fix"], rng=s) for s in range(10)])
        shuffled = np.mean([metrics.auc_shuffled(case["sal"], case["fix"], case["other"], rng=s)
                            for s in range(10)])
        assert borji == pytest.approx(expected["auc_borji"], abs=0.015), name
        assert shuffled == pytest.approx(expected["auc_shuffled"], abs=0.015), name


def gaussian_scene(shape=(60, 80), seed=0):
    """A density with two blobs and fixations sampled from it."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    density = (np.exp(-((ys - 20) ** 2 + (xs - 25) ** 2) / 60.0)
               + 0.7 * np.exp(-((ys - 40) ** 2 + (xs - 60) ** 2) / 40.0))
    p = density.ravel() / density.sum()
    fix = np.zeros(density.size, dtype=bool)
    fix[rng.choice(density.size, size=60, replace=False, p=p)] = True
    other = np.zeros(density.size, dtype=bool)
    other[rng.choice(density.size, size=200, replace=False)] = True
    return density, fix.reshape(shape), other.reshape(shape)


def all_metrics(sal, fix, dens, other):
    return metrics.score_image(sal, fix, dens, other, n_splits=50, rng=3)


def test_density_as_prediction_scores_near_maximum_and_inverted_below_chance():
    dens, fix, other = gaussian_scene()
    assert metrics.auc_judd(dens, fix) > 0.9
    assert metrics.cc(dens, dens) == pytest.approx(1.0)
    assert metrics.similarity(dens, dens) == pytest.approx(1.0)
    assert metrics.kl_divergence(dens, dens) == pytest.approx(0.0, abs=1e-9)
    assert metrics.auc_judd(-dens, fix) < 0.5
    assert metrics.nss(-dens, fix) < 0


def test_scaling_and_shifting_change_no_metric_except_kl_under_shift():
    dens, fix, other = gaussian_scene()
    sal = dens + 0.1 * np.random.default_rng(1).random(dens.shape)
    base = all_metrics(sal, fix, dens, other)
    scaled = all_metrics(255.0 * sal, fix, dens, other)
    shifted = all_metrics(sal - 7.0, fix, dens, other)
    for name in metrics.METRIC_NAMES:
        assert scaled[name] == pytest.approx(base[name], abs=1e-9), name
        if name != "kl_divergence":  # KLdiv.m divides by the sum without min-max: not shift-free
            assert shifted[name] == pytest.approx(base[name], abs=1e-9), name
    assert shifted["kl_divergence"] != pytest.approx(base["kl_divergence"])


def test_constant_map_gives_nan_like_the_reference_without_crashing():
    dens, fix, other = gaussian_scene()
    const = np.full(dens.shape, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy division warnings may leak either
        result = all_metrics(const, fix, dens, other)
    for name in ("auc_borji", "auc_shuffled", "nss", "cc"):
        assert np.isnan(result[name]), name
    # AUC_Judd.m jitters ties by default: a constant map becomes random noise, AUC about 0.5
    assert result["auc_judd"] == pytest.approx(0.5, abs=0.15)
    assert np.isnan(metrics.auc_judd(const, fix, jitter=False))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_map_with_nan_or_infinite_values_gives_nan_and_a_warning_for_every_metric(bad):
    dens, fix, other = gaussian_scene()
    broken = dens.copy()
    broken[5, 7] = bad  # inf made AUC-Borji and sAUC raise and AUC-Judd return a number
    with pytest.warns(UserWarning, match="the saliency map has NaN or infinite values"):
        result = all_metrics(broken, fix, dens, other)
    assert set(result) == set(metrics.METRIC_NAMES)
    assert all(np.isnan(value) for value in result.values()), result


def test_a_map_that_is_not_2d_is_a_clear_value_error():
    dens, fix, _ = gaussian_scene()
    with pytest.raises(ValueError, match=r"must be 2-D \(H, W\); got shape \(60, 80, 3\)"):
        metrics.auc_judd(np.stack([dens] * 3, axis=-1), fix)


def test_no_fixations_gives_nan_and_a_warning():
    dens, _, other = gaussian_scene()
    empty = np.zeros(dens.shape, dtype=bool)
    with pytest.warns(UserWarning, match="no fixations"):
        assert np.isnan(metrics.auc_judd(dens, empty))
    with pytest.warns(UserWarning):
        assert np.isnan(metrics.auc_shuffled(dens, empty, other))


def test_resizes_saliency_to_fixation_size_and_accepts_tensors_and_255_maps():
    dens, fix, other = gaussian_scene(shape=(60, 80))
    small = metrics.resize_map(dens, (30, 40))
    assert small.shape == (30, 40)
    assert metrics.auc_judd(small, fix) == pytest.approx(metrics.auc_judd(dens, fix), abs=0.02)
    points_255 = fix.astype(np.uint8) * 255
    assert metrics.nss(torch.from_numpy(dens), points_255) == pytest.approx(metrics.nss(dens, fix))


def test_auc_judd_ties_are_jittered_reproducibly():
    dens, fix, _ = gaussian_scene()
    quantised = np.round(dens * 4) / 4  # many ties
    first, second = metrics.auc_judd(quantised, fix), metrics.auc_judd(quantised, fix)
    assert first == second and 0.5 < first < 1.0


def test_shuffled_other_map_rescales_fixations_of_other_images():
    maps = [np.zeros((10, 20), bool), np.zeros((20, 40), bool), np.zeros((5, 10), bool)]
    maps[1][19, 39] = True  # bottom-right corner -> (9, 19) at 10x20
    maps[2][0, 0] = True
    other = metrics.shuffled_other_map(0, maps, n_others=10)
    assert other.shape == (10, 20)
    assert set(map(tuple, np.argwhere(other))) == {(9, 19), (0, 0)}


def test_coursework_auc_is_one_for_identical_maps_and_lower_for_inverted():
    dens, _, _ = gaussian_scene()
    assert metrics.coursework_auc(dens, dens) == pytest.approx(1.0)
    assert metrics.coursework_auc(-dens, dens) < 0.5


def test_evaluate_dataset_scores_rows_alike_in_forked_workers_and_scales_maps_first():
    scenes = [gaussian_scene(seed=s) for s in range(4)]
    fixations, densities = [s[1] for s in scenes], [s[0] for s in scenes]
    small = [torch.from_numpy(d[::2, ::2].copy()) * 7 + 3 for d in densities]  # other scale
    rows = {"exact": densities, "small": small}
    means, per_image = metrics.evaluate_dataset(rows, fixations, densities, n_splits=20)
    forked = metrics.evaluate_dataset(rows, fixations, densities, n_splits=20, workers=2)
    assert forked == (means, per_image)
    only = metrics.evaluate_dataset(small, fixations, densities, n_splits=20,
                                    names=("auc_shuffled", "kl_divergence"))
    assert set(only[0]) == {"auc_shuffled", "kl_divergence"}
    assert only[1] == [{k: r[k] for k in only[0]} for r in per_image["small"]]
    # KL is not invariant to an affine change of the map: min-max scaling made it so
    assert means["small"]["kl_divergence"] == pytest.approx(
        metrics.evaluate_dataset([d[::2, ::2] for d in densities], fixations, densities,
                                 n_splits=20)[0]["kl_divergence"], rel=1e-4)


def test_evaluate_dataset_returns_means_of_per_image_values():
    scenes = [gaussian_scene(seed=s) for s in range(3)]
    means, rows = metrics.evaluate_dataset([s[0] for s in scenes], [s[1] for s in scenes],
                                           [s[0] for s in scenes], n_splits=20)
    assert len(rows) == 3 and set(means) == set(metrics.METRIC_NAMES)
    assert means["auc_judd"] == pytest.approx(np.mean([r["auc_judd"] for r in rows]))
    assert means["cc"] == pytest.approx(1.0)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_every_metric_gives_the_same_value_for_numpy_and_tensors_on_any_device(device):
    """One implementation: NumPy in, tensors in, CPU or GPU: the same number (1e-9), with the
    same random draws; the deterministic ones still equal the MATLAB reference there."""
    for name, case, expected in list(load_cases())[:6]:
        small = metrics.resize_map(case["sal"], (case["sal"].shape[0] // 2,
                                                 case["sal"].shape[1] // 2))  # resized in scoring
        on_device = {k: torch.as_tensor(v).to(device) for k, v in case.items()}
        for sal, sal_t in ((case["sal"], on_device["sal"]), (small.numpy(), small.to(device))):
            plain = metrics.score_image(sal, case["fix"], case["dens"], case["other"], rng=4)
            moved = metrics.score_image(sal_t, on_device["fix"], on_device["dens"],
                                        on_device["other"], rng=4)
            for metric, value in plain.items():
                assert moved[metric] == pytest.approx(value, abs=1e-9, nan_ok=True), (name,
                                                                                      metric)
        assert metrics.auc_judd(on_device["sal"], on_device["fix"]) == pytest.approx(
            expected["auc_judd"], abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_dataset_scores_device_maps_as_it_scores_numpy_maps(device):
    scenes = [gaussian_scene(seed=s) for s in range(4)]
    maps = [np.random.default_rng(s).random((50, 50)) for s in range(4)]
    fixations, densities = [s[1] for s in scenes], [s[0] for s in scenes]
    _, plain = metrics.evaluate_dataset(maps, fixations, densities, n_splits=20, workers=2)
    _, moved = metrics.evaluate_dataset([torch.as_tensor(m, device=device) for m in maps],
                                        fixations, densities, n_splits=20, workers=2)
    for a, b in zip(plain, moved):
        for metric in metrics.METRIC_NAMES:
            assert b[metric] == pytest.approx(a[metric], abs=1e-9), metric


# ------------------------------------------------------------------ BMS (literature) protocols
def bms(saliency, fixations, shuffle, sigmas=(0.0,), **kwargs):
    return metrics.bms_shuffled_auc(saliency, fixations, shuffle, sigmas, **kwargs)


def test_bms_hand_made_case_counts_values_within_one_threshold_step_as_ties():
    """Positives 0.2, 1.0 and 0.305 against the one negative pixel, 0.304, three times: at the
    thresholds 0, 0.01, ... the ROC points are (1, 1), (1, 2/3) up to 0.30, (0, 1/3) from 0.31
    on, then (0, 0), an area of 1/2 (a pairwise count would give 2/3: 0.305 beats 0.304 by
    less than a step)."""
    saliency = np.array([[0.2, 1.0, 0.305, 0.304, 0.0, 0.0]])
    fixations = np.array([[1, 1, 1, 0, 0, 0]], dtype=bool)
    shuffle = np.array([[5.0, 5.0, 5.0, 1.0, 0.0, 0.0]])  # the image's own pixels are dropped
    scores = bms(saliency, fixations, shuffle)
    assert scores == {"bms2014": [pytest.approx(0.5, abs=1e-12)],
                      "bms2013": [pytest.approx(0.5, abs=1e-12)]}


def test_bms_perfect_and_constant_maps_score_one_and_one_half():
    rng = np.random.default_rng(0)
    fixations = rng.random((30, 40)) < 0.02
    shuffle = (rng.random((30, 40)) < 0.3) * rng.integers(1, 5, (30, 40)).astype(float)
    perfect = bms(fixations.astype(float), fixations, shuffle, sigmas=(0.0,))
    constant = bms(np.full((30, 40), 0.7), fixations, shuffle, sigmas=(0.0, 0.05))
    for protocol in metrics.BMS_PROTOCOLS:
        assert perfect[protocol] == [pytest.approx(1.0)]
        assert constant[protocol] == [pytest.approx(0.5), pytest.approx(0.5)]


def test_bms2014_scores_the_shuffle_maps_own_density_at_chance_and_bms2013_does_not():
    """Every image's fixations drawn from one centre-biased density: a map equal to that density
    tells nothing beyond where people look anyway, so under negatives drawn in proportion to the
    shuffle map (2014) it scores 0.5; under negatives uniform over the shuffle map's support
    (2013) the centre bias pays."""
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[0:60, 0:80]
    density = np.exp(-((rows - 30) ** 2 + (cols - 40) ** 2) / (2 * 12.0 ** 2))
    p = (density / density.sum()).ravel()
    images = []
    for _ in range(200):
        points = np.zeros(60 * 80, dtype=bool)
        points[rng.choice(60 * 80, size=40, p=p)] = True
        images.append(points.reshape(60, 80))
    shuffle = metrics.bms_shuffle_map(images, (60, 80))
    scores = [bms(density, images[i], shuffle, rng=i) for i in range(20)]
    assert np.mean([s["bms2014"][0] for s in scores]) == pytest.approx(0.5, abs=0.02)
    assert np.mean([s["bms2013"][0] for s in scores]) > 0.55


def test_bms2013_draws_uniformly_over_the_shuffle_support_and_bms2014_by_weight():
    """One fixation (value 0.5) against one negative per draw: pixel A (value 1, weight 1) or B
    (value 0, weight 99). A draw of A scores 0, of B 1, so the mean is the share of B draws."""
    saliency = np.array([[0.5, 1.0, 0.0]])
    fixations = np.array([[True, False, False]])
    shuffle = np.array([[0.0, 1.0, 99.0]])
    scores = bms(saliency, fixations, shuffle, n_draws=20000)
    assert scores["bms2014"][0] == pytest.approx(0.99, abs=0.005)
    assert scores["bms2013"][0] == pytest.approx(0.5, abs=0.02)


def test_bms_blur_is_matlabs_imfilter_of_an_even_fspecial_kernel_with_replicated_borders():
    rng = np.random.default_rng(2)
    x = rng.random((30, 40))
    s = round(40 * 0.1)  # 4 pixels: the kernel is 8 x 8, reaching 3 back and 4 forward
    k = np.exp(-((np.arange(2 * s) - (s - 0.5)) ** 2) / (2 * s * s))
    kernel = np.outer(k, k) / np.outer(k, k).sum()
    padded = np.pad(x, ((s - 1, s), (s - 1, s)), mode="edge")
    expected = np.array([[(padded[i:i + 2 * s, j:j + 2 * s] * kernel).sum() for j in range(40)]
                         for i in range(30)])
    assert np.abs(metrics.bms_blurred(torch.from_numpy(x), (30, 40), 0.1).numpy()
                  - expected).max() < 1e-12
    small = torch.rand(7, 9, dtype=torch.float64)  # s = 0: the resize alone, as resize_map
    for shape in ((30, 40), (5, 4)):
        assert torch.allclose(metrics.bms_blurred(small, shape, 0.0),
                              metrics.resize_map(small, shape), atol=1e-12)


def test_bms_nearest_resize_and_shuffle_map_follow_matlab():
    points = np.zeros((2, 3), dtype=bool)
    points[0, 1] = points[1, 2] = True
    up = metrics.resize_nearest(points, (4, 6)).numpy()  # each pixel becomes a 2 x 2 block
    assert (up == np.kron(points, np.ones((2, 2), dtype=bool))).all()
    assert metrics.resize_nearest(up, (2, 3)).numpy().tolist() == points.tolist()
    assert metrics.common_size([(2, 3), (4, 6), (2, 3)]) == (2, 3)
    shuffle = metrics.bms_shuffle_map([points, up], (2, 3))
    assert shuffle.numpy().tolist() == (2 * points).astype(float).tolist()


def test_bms_undefined_cases_are_nan_or_a_clear_error_and_workers_change_nothing():
    rng = np.random.default_rng(3)
    shuffle = rng.random((20, 30))
    fixations = [rng.random((20, 30)) < 0.05 for _ in range(4)]
    with pytest.warns(UserWarning, match="no fixations"):
        assert np.isnan(bms(rng.random((5, 5)), np.zeros((20, 30), bool), shuffle)["bms2014"][0])
    with pytest.warns(UserWarning, match="NaN or infinite"):
        assert np.isnan(bms(np.full((5, 5), np.nan), fixations[0], shuffle)["bms2013"][0])
    with pytest.raises(ValueError, match="must be 2-D"):
        bms(rng.random((2, 5, 5)), fixations[0], shuffle)
    maps = [rng.random((6, 6)) for _ in range(4)]
    one, two = (metrics.bms_dataset_scores(maps, fixations, shuffle, sigmas=(0.0, 0.1),
                                           workers=w) for w in (1, 2))
    for protocol in metrics.BMS_PROTOCOLS:
        assert one[protocol].shape == (4, 2) and np.array_equal(one[protocol], two[protocol])
    summary = metrics.bms_summary({"bms2014": np.array([[0.6, 0.7], [0.6, 0.5]])}, (0.0, 0.1))
    assert summary["bms2014"] == {"sigmas": [0.0, 0.1], "means": [pytest.approx(0.6)] * 2,
                                  "best_sigma": 0.0, "best": pytest.approx(0.6)}
