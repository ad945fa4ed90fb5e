"""Saliency metrics, defined exactly as the MIT saliency benchmark's MATLAB code computes them.

Reference: ``code_forMetrics`` of the MIT saliency benchmark (AUC_Judd.m, AUC_Borji.m,
AUC_shuffled.m, NSS.m, CC.m, similarity.m, KLdiv.m). ``tests/test_metrics.py`` checks every
function against values produced by that code (``tests/data/metrics_reference``).

Conventions shared by all functions:

* Maps are 2-D NumPy arrays or torch tensors of any numeric dtype and any scale
  (0..1, 0..255, negative values): each metric min-max normalises or z-scores exactly as the
  reference does.
* ``fixation_map`` / ``other_map`` are binary: booleans, or 0/255 point images (JPEG point
  maps are thresholded at half of their maximum).
* When the saliency map's size differs from the ground truth's, the saliency map is resized to
  the ground truth's size with bicubic interpolation and antialiasing (PIL, float32), which is
  what MATLAB's ``imresize`` does by default.
* An image without fixations, or a constant saliency map where the reference divides by zero,
  gives NaN (with a warning for the missing fixations), never an exception.
"""
import math
import multiprocessing
import os
import warnings

import numpy as np
from PIL import Image

EPS = 2.2204e-16  # MATLAB's eps, as used by KLdiv.m

METRIC_NAMES = ("auc_judd", "auc_shuffled", "auc_borji", "nss", "cc", "similarity",
                "kl_divergence", "coursework_auc")


def _as_float_array(x):
    """Anything array-like (NumPy, torch, list) -> float64 NumPy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float64)


def as_binary_map(fixation_map):
    """Boolean, 0/1 or 0/255 map (array or tensor) -> bool array, True at fixated pixels."""
    if isinstance(fixation_map, np.ndarray) and fixation_map.dtype == bool:
        return fixation_map
    fix = _as_float_array(fixation_map)
    top = fix.max() if fix.size else 0.0
    if top <= 0:
        return np.zeros(fix.shape, dtype=bool)
    return fix >= (0.5 if top <= 1 else top / 2)


def resize_map(saliency_map, shape):
    """Resize a 2-D float map to ``shape`` (H, W) with antialiased bicubic interpolation.

    Returns a float64 array; a map that already has that shape is returned unchanged.
    """
    sal = _as_float_array(saliency_map)
    if sal.shape == tuple(shape):
        return sal
    image = Image.fromarray(sal.astype(np.float32), mode="F")
    return np.asarray(image.resize((shape[1], shape[0]), Image.BICUBIC), dtype=np.float64)


def as_submitted_map(saliency_map, shape):
    """A map of any size and range -> float64 [H, W] in [0, 1] at ``shape``: resized, then
    min-max scaled (a constant map becomes zeros), as a map submitted to the benchmark is."""
    sal = resize_map(saliency_map, shape)
    return (sal - sal.min()) / max(sal.max() - sal.min(), 1e-12)


def _min_max(x):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x - x.min()) / (x.max() - x.min())


def _prepare(saliency_map, fixation_map, metric):
    """Return (saliency float array at the fixation map's size, bool fixation map), or None."""
    fix = as_binary_map(fixation_map)
    if not fix.any():
        warnings.warn(f"{metric}: the fixation map has no fixations; returning NaN", stacklevel=3)
        return None
    return resize_map(saliency_map, fix.shape), fix


def auc_judd(saliency_map, fixation_map, jitter=None, rng=None):
    """AUC-Judd: ROC area where every fixated pixel's saliency is a threshold.

    saliency_map: (H', W') any scale; fixation_map: (H, W) binary. Returns a float in [0, 1].
    True positives are fixations at or above the threshold; false positives are the other
    pixels at or above it, over all non-fixated pixels; the curve is integrated by trapezoids.
    ``jitter`` (default: only when the saliency map has ties) adds uniform noise in
    [0, 1e-7) drawn from ``rng`` (seeded 0 by default), as the reference does to break ties.
    """
    prepared = _prepare(saliency_map, fixation_map, "auc_judd")
    if prepared is None:
        return float("nan")
    sal, fix = prepared
    sorted_values = np.sort(sal, axis=None)
    if jitter is None:
        jitter = bool((sorted_values[1:] == sorted_values[:-1]).any())
    if jitter:
        rng = np.random.default_rng(0) if rng is None else rng
        sal = sal + rng.random(sal.shape) / 1e7
        sorted_values = np.sort(sal, axis=None)
    low, high = sorted_values[0], sorted_values[-1]
    if not high > low:
        return float("nan")
    values = (sal.ravel() - low) / (high - low)  # min-max, as the reference does
    sorted_values = (sorted_values - low) / (high - low)  # the same values, still sorted
    thresholds = np.sort(values[fix.ravel()])[::-1]
    n_fix, n_pixels = thresholds.size, values.size
    above = n_pixels - np.searchsorted(sorted_values, thresholds, side="left")
    ranks = np.arange(1, n_fix + 1)
    tp = np.concatenate([[0.0], ranks / n_fix, [1.0]])
    fp = np.concatenate([[0.0], (above - ranks) / (n_pixels - n_fix), [1.0]])
    return float(np.trapezoid(tp, fp))


def _auc_against_negatives(positives, negatives, step_size):
    """Mean ROC area of ``positives`` (n,) against each column of ``negatives`` (m, splits).

    Thresholds run from the split's maximum down to 0 in steps of ``step_size``; this is the
    inner loop of AUC_Borji.m and AUC_shuffled.m.
    """
    aucs = np.empty(negatives.shape[1])
    pos_sorted = np.sort(positives)
    for s in range(negatives.shape[1]):
        neg = negatives[:, s]
        top = max(pos_sorted[-1], neg.max())
        n_steps = int(math.floor(top / step_size + 1e-9))
        thresholds = (np.arange(n_steps + 1) * step_size)[::-1]
        tp = 1 - np.searchsorted(pos_sorted, thresholds, side="left") / pos_sorted.size
        fp = 1 - np.searchsorted(np.sort(neg), thresholds, side="left") / neg.size
        aucs[s] = np.trapezoid(np.concatenate([[0], tp, [1]]), np.concatenate([[0], fp, [1]]))
    return float(aucs.mean())


def auc_borji(saliency_map, fixation_map, n_splits=100, step_size=0.1, rng=None):
    """AUC-Borji: fixations against as many pixels drawn uniformly (with replacement).

    saliency_map: (H', W') any scale; fixation_map: (H, W) binary; rng: a
    ``numpy.random.Generator`` or seed (default seed 0). Returns the mean ROC area over
    ``n_splits`` random draws, thresholds 0..max in steps of ``step_size``.
    """
    prepared = _prepare(saliency_map, fixation_map, "auc_borji")
    if prepared is None:
        return float("nan")
    sal, fix = _min_max(prepared[0]).ravel(), prepared[1].ravel()
    if np.isnan(sal).all():
        return float("nan")
    rng = np.random.default_rng(0 if rng is None else rng)
    positives = sal[fix]
    negatives = sal[rng.integers(0, sal.size, size=(positives.size, n_splits))]
    return _auc_against_negatives(positives, negatives, step_size)


def auc_shuffled(saliency_map, fixation_map, other_map, n_splits=100, step_size=0.1, rng=None):
    """Shuffled AUC: fixations against fixations of other images (``other_map``).

    saliency_map: (H', W') any scale; fixation_map and other_map: (H, W) binary. Each split
    draws min(#fixations, #other fixations) negatives without replacement from ``other_map``.
    Returns the mean ROC area over ``n_splits`` splits; a centre-biased map that is blind to
    the image content scores about 0.5, which is why this is the headline metric.
    """
    prepared = _prepare(saliency_map, fixation_map, "auc_shuffled")
    if prepared is None:
        return float("nan")
    sal, fix = _min_max(prepared[0]).ravel(), prepared[1].ravel()
    other = as_binary_map(other_map).ravel()
    if other.size != sal.size:
        raise ValueError(f"other_map has {other.size} pixels, the fixation map {sal.size}")
    if np.isnan(sal).all() or not other.any():
        return float("nan")
    rng = np.random.default_rng(0 if rng is None else rng)
    positives = sal[fix]
    other_values = sal[np.flatnonzero(other)]
    n_neg = min(positives.size, other_values.size)
    order = np.argsort(rng.random((other_values.size, n_splits)), axis=0)[:n_neg]
    return _auc_against_negatives(positives, other_values[order], step_size)


def nss(saliency_map, fixation_map):
    """Normalised scanpath saliency: mean of the z-scored map (std with N-1) at fixations."""
    prepared = _prepare(saliency_map, fixation_map, "nss")
    if prepared is None:
        return float("nan")
    sal, fix = prepared
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (sal - sal.mean()) / sal.std(ddof=1)
    return float(z[fix].mean())


def cc(saliency_map, density_map):
    """Pearson correlation between the saliency map and the ground-truth density (any scales)."""
    dens = _as_float_array(density_map)
    sal = resize_map(saliency_map, dens.shape)
    a, b = sal - sal.mean(), dens - dens.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def _to_distribution(x):
    """similarity.m's normalisation: min-max, then divide by the sum (if any value is nonzero)."""
    if x.any():
        x = _min_max(x)
        x = x / x.sum()
    return x


def similarity(saliency_map, density_map):
    """SIM (histogram intersection) of the two maps as distributions; in [0, 1]."""
    dens = _as_float_array(density_map)
    sal = resize_map(saliency_map, dens.shape)
    return float(np.minimum(_to_distribution(sal), _to_distribution(dens)).sum())


def kl_divergence(saliency_map, density_map):
    """KL divergence of the density from the saliency map, each divided by its sum (eps 2.2204e-16).

    As in KLdiv.m the maps are not min-max normalised first: the score is invariant to scaling
    the saliency map but not to adding a constant to it. Lower is better.
    """
    dens = _as_float_array(density_map)
    sal = resize_map(saliency_map, dens.shape)
    if sal.any():
        sal = sal / sal.sum()
    if dens.any():
        dens = dens / dens.sum()
    return float((dens * np.log(EPS + dens / (sal + EPS))).sum())


def coursework_auc(pred, target, n_thresholds=20):
    """The Bristol coursework's "AUC": NOT a ROC AUC.

    Both maps are min-max normalised to [0, 1] and binarised at ``n_thresholds`` thresholds
    k / n_thresholds (k = 0 .. n-1, strictly above); the score is the fraction of pixels on
    which the two binary maps agree, averaged over thresholds. Kept only so that results can
    be compared with the coursework's reported 71% +- 1%; use the ROC metrics above for
    anything else. pred is resized to target's size. Returns a float in [0, 1].
    """
    tgt = _min_max(_as_float_array(target))
    prd = _min_max(resize_map(pred, tgt.shape))
    tgt, prd = np.nan_to_num(tgt), np.nan_to_num(prd)
    thresholds = np.arange(n_thresholds) / n_thresholds
    # A pixel whose maps exceed kp and kt of the thresholds disagrees at |kp - kt| of them.
    kp = np.searchsorted(thresholds, prd, side="left")
    kt = np.searchsorted(thresholds, tgt, side="left")
    return float(1 - np.abs(kp - kt).mean() / n_thresholds)


def fixation_points(fixation_map):
    """Binary fixation map (H, W) -> int array (N, 2) of (row, col) fixated pixels."""
    return np.argwhere(as_binary_map(fixation_map))


def shuffled_other_map(index, fixation_maps, n_others=10, seed=0):
    """Build the shuffled-AUC negatives for image ``index``.

    fixation_maps: a list of binary maps (any sizes). ``n_others`` other images are chosen at
    random (seeded by ``seed`` and ``index``, so the choice is reproducible per image, as in the
    MIT benchmark, which uses 10); their fixations are rescaled to image ``index``'s size by
    relative position and pooled. Returns a bool (H, W) map.
    """
    height, width = np.shape(fixation_maps[index])
    candidates = [j for j in range(len(fixation_maps)) if j != index]
    rng = np.random.default_rng([seed, index])
    chosen = rng.choice(candidates, size=min(n_others, len(candidates)), replace=False)
    other = np.zeros((height, width), dtype=bool)
    for j in chosen:
        points = fixation_points(fixation_maps[j])
        h_j, w_j = np.shape(fixation_maps[j])
        rows = np.minimum((points[:, 0] * height) // h_j, height - 1)
        cols = np.minimum((points[:, 1] * width) // w_j, width - 1)
        other[rows, cols] = True
    return other


def score_image(saliency_map, fixation_map, density_map, other_map, n_splits=100, rng=0,
                names=METRIC_NAMES):
    """The metrics ``names`` (default: all of METRIC_NAMES) for one image -> dict of floats
    (NaN where undefined)."""
    metric = {
        "auc_judd": lambda: auc_judd(saliency_map, fixation_map),
        "auc_shuffled": lambda: auc_shuffled(saliency_map, fixation_map, other_map, n_splits,
                                             rng=rng),
        "auc_borji": lambda: auc_borji(saliency_map, fixation_map, n_splits, rng=rng),
        "nss": lambda: nss(saliency_map, fixation_map),
        "cc": lambda: cc(saliency_map, density_map),
        "similarity": lambda: similarity(saliency_map, density_map),
        "kl_divergence": lambda: kl_divergence(saliency_map, density_map),
        "coursework_auc": lambda: coursework_auc(saliency_map, density_map),
    }
    return {name: metric[name]() for name in names}


_DATASET = None  # what forked ``evaluate_dataset`` workers read (set only while they run)


def _score_dataset_image(i):
    maps_by_row, fixation_maps, density_maps, n_others, n_splits, seed, names = _DATASET
    fixations = as_binary_map(fixation_maps[i])
    other = shuffled_other_map(i, fixation_maps, n_others, seed)
    scores = {}
    for row, maps in maps_by_row.items():
        saliency = as_submitted_map(maps[i], fixations.shape)
        scores[row] = score_image(saliency, fixations, density_maps[i], other, n_splits,
                                  rng=[seed, i], names=names)
    return scores


def evaluate_dataset(saliency_maps, fixation_maps, density_maps, n_others=10, n_splits=100,
                     seed=0, names=METRIC_NAMES, workers=1):
    """Score a dataset: lists of saliency maps (any size; or a dict row -> such a list, to
    score several kinds of map of the same images), binary fixation maps and density maps.

    Each map is resized to its image's size and min-max scaled, as the benchmark scores
    submitted maps. Shuffled-AUC negatives for image i come from ``n_others`` other images of
    the same lists (see ``shuffled_other_map``); the random splits of image i are seeded with
    ``[seed, i]``, so the scores do not depend on ``workers`` (forked processes where the
    platform forks; they see NumPy arrays only). Returns ``(means, per_image)``: a dict
    metric -> nan-mean over images and a list of per-image dicts, or, for a dict of rows,
    both keyed by row.
    """
    global _DATASET
    rows = saliency_maps if isinstance(saliency_maps, dict) else {None: saliency_maps}
    rows = {row: [np.asarray(m, dtype=np.float32) for m in maps] for row, maps in rows.items()}
    n_images = len(fixation_maps)
    workers = max(1, min(workers or os.cpu_count() or 1, n_images))
    _DATASET = (rows, fixation_maps, density_maps, n_others, n_splits, seed, names)
    try:
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                scores = pool.map(_score_dataset_image, range(n_images))
        else:
            scores = [_score_dataset_image(i) for i in range(n_images)]
    finally:
        _DATASET = None
    per_image = {row: [image[row] for image in scores] for row in rows}
    means = {row: summarise(values, names) for row, values in per_image.items()}
    if isinstance(saliency_maps, dict):
        return means, per_image
    return means[None], per_image[None]


def summarise(per_image, names=METRIC_NAMES):
    """List of per-image metric dicts -> dict metric -> nan-mean (NaN if no image has a value)."""
    means = {}
    for name in names:
        values = np.array([row[name] for row in per_image], dtype=np.float64)
        means[name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return means
