"""Saliency metrics, defined exactly as the MIT saliency benchmark's MATLAB code computes them.

Reference: ``code_forMetrics`` of the MIT saliency benchmark (AUC_Judd.m, AUC_Borji.m,
AUC_shuffled.m, NSS.m, CC.m, similarity.m, KLdiv.m). ``tests/test_metrics.py`` checks every
function against values produced by that code (``tests/data/metrics_reference``).

Conventions shared by all functions:

* Maps are 2-D NumPy arrays or torch tensors on any device, of any numeric dtype and any scale
  (0..1, 0..255, negative values): each metric min-max normalises or z-scores exactly as the
  reference does. The arithmetic is torch in float64 on the saliency map's device (a GPU keeps
  the maps where the network made them); NumPy inputs are computed on the CPU. Every metric
  returns a Python float, the same on any device.
* ``fixation_map`` / ``other_map`` are binary: booleans, or 0/255 point images (JPEG point
  maps are thresholded at half of their maximum).
* When the saliency map's size differs from the ground truth's, the saliency map is resized to
  the ground truth's size with bicubic interpolation and antialiasing, which is what MATLAB's
  ``imresize`` does by default.
* Random draws (AUC-Borji's pixels, shuffled AUC's splits, AUC-Judd's tie-breaking jitter) come
  from a ``numpy.random.Generator`` or seed, on the CPU, so they are the same on any device.
* An image without fixations, a saliency map with NaN or infinite values, or a constant map
  where the reference divides by zero, gives NaN (with a warning for the first two), never an
  exception; a map that is not 2-D is a ValueError.
"""
import csv
import math
from collections import Counter
import multiprocessing
import os
import warnings

# Large CPU tensors on transparent huge pages, as NumPy allocates its arrays: the metrics make
# many image-sized temporaries, and without this they run about 10% slower. Read at torch's
# first allocation, so it is set here, before any (a value set by the user is kept).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from devices import init_pool_worker  # noqa: E402
from files import write_atomically  # noqa: E402

EPS = 2.2204e-16  # MATLAB's eps, as used by KLdiv.m

METRIC_NAMES = ("auc_judd", "auc_shuffled", "auc_borji", "nss", "cc", "similarity",
                "kl_divergence", "coursework_auc")
# the metrics that read fixation points (NaN on an image without any); the others compare
# with the fixation density map
FIXATION_METRICS = ("auc_judd", "auc_shuffled", "auc_borji", "nss")


def as_tensor(x, device=None):
    """Anything array-like (NumPy, torch on any device, list) -> float64 tensor, on ``device``
    if given, else where it is (the CPU for NumPy)."""
    x = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return x.to(device=device if device is not None else x.device, dtype=torch.float64)


def as_binary_map(fixation_map, device=None):
    """Boolean, 0/1 or 0/255 map (array or tensor) -> bool tensor, True at fixated pixels."""
    if isinstance(fixation_map, np.ndarray) and fixation_map.dtype == bool:
        return torch.from_numpy(fixation_map).to(device or "cpu")
    if isinstance(fixation_map, torch.Tensor) and fixation_map.dtype == torch.bool:
        return fixation_map.to(device or fixation_map.device)
    fix = as_tensor(fixation_map, device)
    top = float(fix.max()) if fix.numel() else 0.0
    if top <= 0:
        return torch.zeros(fix.shape, dtype=torch.bool, device=fix.device)
    return fix >= (0.5 if top <= 1 else top / 2)


def resize_map(saliency_map, shape, device=None):
    """Resize a 2-D map to ``shape`` (H, W) with antialiased bicubic interpolation (the same
    kernel as PIL's and MATLAB's imresize). Returns a float64 tensor; a map that already has
    that shape is returned unchanged. ValueError for a map that is not 2-D."""
    sal = as_tensor(saliency_map, device)
    if sal.ndim != 2:
        raise ValueError(f"a saliency map must be 2-D (H, W); got shape {tuple(sal.shape)}")
    if tuple(sal.shape) == tuple(shape):
        return sal
    return F.interpolate(sal[None, None], size=tuple(shape), mode="bicubic",
                         align_corners=False, antialias=True)[0, 0]


def as_submitted_map(saliency_map, shape, device=None):
    """A map of any size and range -> float64 [H, W] tensor in [0, 1] at ``shape``: resized,
    then min-max scaled (a constant map becomes zeros), as a map submitted to the benchmark is."""
    sal = resize_map(saliency_map, shape, device)
    low, high = torch.aminmax(sal)
    return (sal - low) / (high - low).clamp_min(1e-12)


def _sorted(x):
    """A 1-D tensor's values in ascending order; on the CPU through NumPy, whose sort is
    several times faster there (the result is the same)."""
    return torch.from_numpy(np.sort(x.numpy())) if x.device.type == "cpu" else x.sort().values


def _min_max(x):
    low, high = torch.aminmax(x)
    return (x - low) / (high - low)  # NaN for a constant map, as the reference


def _finite(saliency, metric):
    """``saliency`` (a tensor), or None with a warning when it holds NaN or infinite values:
    the metric is then undefined (NaN), as the reference's arithmetic makes it for NaN."""
    if torch.isfinite(saliency).all():
        return saliency
    warnings.warn(f"{metric}: the saliency map has NaN or infinite values; returning NaN",
                  stacklevel=4)
    return None


def _prepare(saliency_map, fixation_map, metric):
    """Return (saliency float64 tensor at the fixation map's size, bool fixation map on the
    saliency map's device), or None when there are no fixations or the map is not finite."""
    device = saliency_map.device if isinstance(saliency_map, torch.Tensor) else None
    fix = as_binary_map(fixation_map, device)
    if not fix.any():
        warnings.warn(f"{metric}: the fixation map has no fixations; returning NaN", stacklevel=3)
        return None
    sal = _finite(resize_map(saliency_map, fix.shape, fix.device), metric)
    return None if sal is None else (sal, fix)


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(
        0 if rng is None else rng)


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
    sorted_values = _sorted(sal.flatten())
    if jitter is None:
        jitter = bool((sorted_values[1:] == sorted_values[:-1]).any())
    if jitter:
        noise = _rng(rng).random(tuple(sal.shape)) / 1e7
        sal = sal + torch.from_numpy(noise).to(sal.device)
        sorted_values = _sorted(sal.flatten())
    low, high = sorted_values[0], sorted_values[-1]
    if not high > low:
        return float("nan")
    values = (sal.flatten() - low) / (high - low)  # min-max, as the reference does
    sorted_values = (sorted_values - low) / (high - low)  # the same values, still sorted
    thresholds = values[fix.flatten()].sort(descending=True).values
    n_fix, n_pixels = thresholds.numel(), values.numel()
    above = n_pixels - torch.searchsorted(sorted_values, thresholds, side="left")
    ranks = torch.arange(1, n_fix + 1, device=sal.device, dtype=torch.float64)
    ends = torch.tensor([0.0, 1.0], device=sal.device, dtype=torch.float64)
    tp = torch.cat([ends[:1], ranks / n_fix, ends[1:]])
    fp = torch.cat([ends[:1], (above - ranks) / (n_pixels - n_fix), ends[1:]])
    return float(torch.trapezoid(tp, fp))


def _auc_against_negatives(positives, negatives, step_size):
    """Mean ROC area of ``positives`` (n,) against each column of ``negatives`` (m, splits).

    Thresholds run from the split's maximum down to 0 in steps of ``step_size``; this is the
    inner loop of AUC_Borji.m and AUC_shuffled.m. All splits are computed at once on one
    threshold grid: thresholds above a split's maximum add the point (0, 0), which is already
    the curve's first point, so they add no area.
    """
    pos_sorted = positives.sort().values
    neg_sorted = negatives.sort(dim=0).values  # (m, splits)
    tops = torch.maximum(neg_sorted[-1], pos_sorted[-1])
    n_steps = torch.floor(tops / step_size + 1e-9).long()  # per split, as the reference
    k = torch.arange(int(n_steps.max()), -1, -1, device=positives.device)
    thresholds = k[:, None].double() * step_size  # (T, 1), high to low, as the reference
    inside = k[:, None] <= n_steps[None, :]  # (T, splits): this split has this threshold
    tp = 1 - torch.searchsorted(pos_sorted, thresholds.flatten()).double() / pos_sorted.numel()
    fp = 1 - torch.searchsorted(neg_sorted.T.contiguous(), thresholds.T.expand(
        neg_sorted.shape[1], -1).contiguous()).T.double() / neg_sorted.shape[0]
    tp = torch.where(inside, tp[:, None], 0.0)
    fp = torch.where(inside, fp, 0.0)
    zeros = torch.zeros(1, tp.shape[1], device=tp.device, dtype=tp.dtype)
    ones = torch.ones_like(zeros)
    aucs = torch.trapezoid(torch.cat([zeros, tp, ones]), torch.cat([zeros, fp, ones]), dim=0)
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
    sal, fix = _min_max(prepared[0]).flatten(), prepared[1].flatten()
    if sal.isnan().all():
        return float("nan")
    positives = sal[fix]
    pick = _rng(rng).integers(0, sal.numel(), size=(positives.numel(), n_splits))
    negatives = sal[torch.from_numpy(pick).to(sal.device)]
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
    sal, fix = _min_max(prepared[0]).flatten(), prepared[1].flatten()
    other = as_binary_map(other_map, sal.device).flatten()
    if other.numel() != sal.numel():
        raise ValueError(f"other_map has {other.numel()} pixels, the fixation map {sal.numel()}")
    if sal.isnan().all() or not other.any():
        return float("nan")
    positives = sal[fix]
    other_values = sal[other]
    n_neg = min(positives.numel(), other_values.numel())
    order = np.argsort(_rng(rng).random((other_values.numel(), n_splits)), axis=0)[:n_neg]
    return _auc_against_negatives(positives, other_values[torch.from_numpy(order).to(
        sal.device)], step_size)


def nss(saliency_map, fixation_map):
    """Normalised scanpath saliency: mean of the z-scored map (std with N-1) at fixations."""
    prepared = _prepare(saliency_map, fixation_map, "nss")
    if prepared is None:
        return float("nan")
    sal, fix = prepared
    z = (sal - sal.mean()) / sal.std(correction=1)
    return float(z[fix].mean())


def _with_density(saliency_map, density_map, metric):
    """(saliency resized to the density's size, density), float64 on the saliency's device;
    None when the saliency map is not finite."""
    device = saliency_map.device if isinstance(saliency_map, torch.Tensor) else None
    dens = as_tensor(density_map, device)
    sal = _finite(resize_map(saliency_map, dens.shape, dens.device), metric)
    return None if sal is None else (sal, dens)


def cc(saliency_map, density_map):
    """Pearson correlation between the saliency map and the ground-truth density (any scales)."""
    prepared = _with_density(saliency_map, density_map, "cc")
    if prepared is None:
        return float("nan")
    sal, dens = prepared
    a, b = sal - sal.mean(), dens - dens.mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def _to_distribution(x):
    """similarity.m's normalisation: min-max, then divide by the sum (if any value is nonzero)."""
    if x.any():
        x = _min_max(x)
        x = x / x.sum()
    return x


def similarity(saliency_map, density_map):
    """SIM (histogram intersection) of the two maps as distributions; in [0, 1]."""
    prepared = _with_density(saliency_map, density_map, "similarity")
    if prepared is None:
        return float("nan")
    sal, dens = prepared
    return float(torch.minimum(_to_distribution(sal), _to_distribution(dens)).sum())


def kl_divergence(saliency_map, density_map):
    """KL divergence of the density from the saliency map, each divided by its sum (eps 2.2204e-16).

    As in KLdiv.m the maps are not min-max normalised first: the score is invariant to scaling
    the saliency map but not to adding a constant to it. Lower is better.
    """
    prepared = _with_density(saliency_map, density_map, "kl_divergence")
    if prepared is None:
        return float("nan")
    sal, dens = prepared
    if sal.any():
        sal = sal / sal.sum()
    if dens.any():
        dens = dens / dens.sum()
    return float((dens * torch.log(EPS + dens / (sal + EPS))).sum())


def coursework_auc(pred, target, n_thresholds=20):
    """The Bristol coursework's "AUC": NOT a ROC AUC.

    Both maps are min-max normalised to [0, 1] and binarised at ``n_thresholds`` thresholds
    k / n_thresholds (k = 0 .. n-1, strictly above); the score is the fraction of pixels on
    which the two binary maps agree, averaged over thresholds. Kept only so that results can
    be compared with the coursework's reported 71% +- 1%; use the ROC metrics above for
    anything else. pred is resized to target's size. Returns a float in [0, 1].
    """
    prepared = _with_density(pred, target, "coursework_auc")
    if prepared is None:
        return float("nan")
    prd, tgt = prepared
    tgt, prd = torch.nan_to_num(_min_max(tgt)), torch.nan_to_num(_min_max(prd))
    thresholds = torch.arange(n_thresholds, device=tgt.device, dtype=torch.float64) / n_thresholds
    # A pixel whose maps exceed kp and kt of the thresholds disagrees at |kp - kt| of them.
    kp = torch.searchsorted(thresholds, prd.contiguous(), side="left")
    kt = torch.searchsorted(thresholds, tgt.contiguous(), side="left")
    return float(1 - (kp - kt).abs().double().mean() / n_thresholds)


def fixation_points(fixation_map):
    """Binary fixation map (H, W) -> int array (N, 2) of (row, col) fixated pixels."""
    return as_binary_map(fixation_map).nonzero().cpu().numpy()


def shuffled_other_map(index, fixation_maps, n_others=10, seed=0):
    """Build the shuffled-AUC negatives for image ``index``.

    fixation_maps: a list of binary maps (any sizes). ``n_others`` other images are chosen at
    random (seeded by ``seed`` and ``index``, so the choice is reproducible per image, as in the
    MIT benchmark, which uses 10); their fixations are rescaled to image ``index``'s size by
    relative position and pooled. Returns a bool NumPy (H, W) map.
    """
    height, width = tuple(fixation_maps[index].shape)
    candidates = [j for j in range(len(fixation_maps)) if j != index]
    rng = np.random.default_rng([seed, index])
    chosen = rng.choice(candidates, size=min(n_others, len(candidates)), replace=False)
    other = np.zeros((height, width), dtype=bool)
    for j in chosen:
        points = fixation_points(fixation_maps[j])
        h_j, w_j = tuple(fixation_maps[j].shape)
        rows = np.minimum((points[:, 0] * height) // h_j, height - 1)
        cols = np.minimum((points[:, 1] * width) // w_j, width - 1)
        other[rows, cols] = True
    return other


def score_image(saliency_map, fixation_map, density_map, other_map, n_splits=100, rng=0,
                names=METRIC_NAMES):
    """The metrics ``names`` (default: all of METRIC_NAMES) for one image -> dict of floats
    (NaN where undefined). The random metrics each start from ``rng`` (a seed)."""
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


_DATASET = None  # what forked scoring workers read (set only while they run: _map_images)


def _score_dataset_image(i):
    maps_by_row, fixation_maps, density_maps, n_others, n_splits, seed, names = _DATASET
    device = next(iter(maps_by_row.values()))[i].device
    fixations = as_binary_map(fixation_maps[i], device)
    other = as_binary_map(shuffled_other_map(i, fixation_maps, n_others, seed), device)
    density = as_tensor(density_maps[i], device)
    scores = {}
    for row, maps in maps_by_row.items():
        saliency = as_submitted_map(maps[i], fixations.shape, device)
        scores[row] = score_image(saliency, fixations, density, other, n_splits,
                                  rng=[seed, i], names=names)
    return scores


def _compact(saliency_map):
    """A map as a tensor where it is (float32, or its integer type: 1003 full-size 8-bit maps
    stay 0.8 GB); each is made float64 only when it is scored."""
    x = torch.as_tensor(saliency_map.astype(np.int32) if isinstance(saliency_map, np.ndarray)
                        and saliency_map.dtype == np.uint16 else saliency_map)
    return x.float() if x.is_floating_point() else x


def _map_images(score_one, n_images, workers, on_cpu, dataset):
    """[score_one(i) for i in range(n_images)], with ``dataset`` in ``_DATASET`` for it to read;
    in ``workers`` forked processes (all cores for None) where the maps are on the CPU and the
    platform forks, else in this process."""
    global _DATASET
    workers = max(1, min(workers or os.cpu_count() or 1, n_images)) if on_cpu else 1
    _DATASET = dataset
    try:
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(workers, init_pool_worker) as pool:
                return pool.map(score_one, range(n_images))
        return [score_one(i) for i in range(n_images)]
    finally:
        _DATASET = None


def evaluate_dataset(saliency_maps, fixation_maps, density_maps, n_others=10, n_splits=100,
                     seed=0, names=METRIC_NAMES, workers=1):
    """Score a dataset: lists of saliency maps (any size, NumPy or tensors on any device; or a
    dict row -> such a list, to score several kinds of map of the same images), binary fixation
    maps and density maps.

    Each map is resized to its image's size and min-max scaled, as the benchmark scores
    submitted maps, on the device the map is on. Shuffled-AUC negatives for image i come from
    ``n_others`` other images of the same lists (see ``shuffled_other_map``); the random splits
    of image i are seeded with ``[seed, i]``, so the scores do not depend on ``workers``
    (forked processes, for maps on the CPU where the platform forks) or the device. Returns
    ``(means, per_image)``: a dict metric -> mean over the images with a finite value (as
    ``confidence_table``) and a list of per-image dicts, or, for a dict of rows, both keyed by
    row.
    """
    rows = saliency_maps if isinstance(saliency_maps, dict) else {None: saliency_maps}
    rows = {row: [_compact(m) for m in maps] for row, maps in rows.items()}
    on_cpu = all(m.device.type == "cpu" for maps in rows.values() for m in maps)
    scores = _map_images(_score_dataset_image, len(fixation_maps), workers, on_cpu,
                         (rows, fixation_maps, density_maps, n_others, n_splits, seed, names))
    per_image = {row: [image[row] for image in scores] for row in rows}
    means = {row: {name: stats["mean"] for name, stats in metric_stats.items()}
             for row, metric_stats in confidence_table(per_image, names).items()}
    if isinstance(saliency_maps, dict):
        return means, per_image
    return means[None], per_image[None]


def confidence_table(scores, names=METRIC_NAMES):
    """{row: list of per-image metric dicts} -> {row: {metric: {'mean', 'std', 'ci95'}}}: over
    the images with a finite value, the mean, the standard deviation and the half-width of the
    mean's normal 95% confidence interval."""
    table = {}
    for row, per_image in scores.items():
        table[row] = {}
        for name in names:
            values = np.array([r[name] for r in per_image], dtype=np.float64)
            values = values[np.isfinite(values)]
            std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            table[row][name] = {"mean": float(values.mean()) if len(values) else float("nan"),
                                "std": std, "ci95": 1.96 * std / math.sqrt(max(len(values), 1))}
    return table


def write_per_image(path, names, scores):
    """Write ``scores`` ({row: per-image metric dicts, in the order of ``names``}) to the CSV
    file ``path``: one line per image and row (image, row, every metric to 6 decimals)."""
    def write(tmp):
        # surrogateescape: an image name that is not UTF-8 is written as its file's own bytes
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "row", *METRIC_NAMES])
            for row, per_image in scores.items():
                for name, values in zip(names, per_image):
                    writer.writerow([name, row, *(f"{values[m]:.6f}" for m in METRIC_NAMES)])
    write_atomically(path, write)


def read_per_image(path):
    """A CSV file written by ``write_per_image`` -> {row: {image name: {metric: float}}}, rows
    and images in file order. OSError if it cannot be read; ValueError (saying what is wrong)
    if it is not such a file."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "row", *METRIC_NAMES} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"no column {', '.join(sorted(missing))}")
        scores = {}
        for line in reader:
            try:
                values = {m: float(line[m]) for m in METRIC_NAMES}
            except (TypeError, ValueError):
                raise ValueError(f"line {reader.line_num} is not a row of numbers")
            scores.setdefault(line["row"], {})[line["image"]] = values
    return scores


# --------------------------------------------------------------------------------------------
# Literature protocols: shuffled AUC as Zhang & Sclaroff's BMS code scores it (computeMeanAUC.m,
# calcAUCscore.m, auc.m; ICCV 2013 and its 2014 release), which the saliency papers of
# 2013-2016, Liu et al. 2015 among them, report. It differs from AUC_shuffled.m above in how the
# negatives are drawn, in the common size every map is compared at, in a blur of the saliency
# map and in the finer threshold grid, and the papers report the best blur for each method.

BMS_PROTOCOLS = {"bms2014": "negatives drawn with probability proportional to the shuffle map",
                 "bms2013": "negatives drawn uniformly where the shuffle map is non-zero"}
BMS_SIGMAS = tuple(k / 100 for k in range(13))  # blur scales the papers searched, 0 .. 0.12
BMS_STEP = 0.01  # ROC threshold step of the BMS auc.m


def resize_nearest(binary_map, shape):
    """MATLAB's ``imresize(map, shape, 'nearest')`` of a 2-D map (no antialiasing): output pixel
    i takes input pixel floor((i + 0.5) * in / out) along each axis. Returns a bool tensor."""
    fix = as_binary_map(binary_map)
    (h, w), (out_h, out_w) = fix.shape, shape
    rows = ((torch.arange(out_h) + 0.5) * h / out_h).long().clamp_max(h - 1)
    cols = ((torch.arange(out_w) + 0.5) * w / out_w).long().clamp_max(w - 1)
    return fix[rows.to(fix.device)][:, cols.to(fix.device)]


def common_size(shapes):
    """The most common (H, W) among ``shapes`` (the first of equals): the size at which the BMS
    protocols compare every image's maps."""
    return Counter(tuple(shape) for shape in shapes).most_common(1)[0][0]


def bms_shuffle_map(fixation_maps, shape):
    """The BMS shuffle map: binary fixation maps (any sizes), each resized (nearest) to ``shape``
    and summed. Returns a float64 [H, W] tensor (fixations per pixel)."""
    total = torch.zeros(tuple(shape), dtype=torch.float64)
    for fixation_map in fixation_maps:
        total += resize_nearest(fixation_map, shape).cpu()
    return total


def _axis_resize(n_in, n_out):
    """``resize_map`` along one axis as a float64 matrix [n_out, n_in]: the resize is linear and
    separable, so resizing the identity image's columns (its rows keep their size) gives it."""
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]
    return F.interpolate(eye, size=(n_out, n_in), mode="bicubic", align_corners=False,
                         antialias=True)[0, 0]


def _axis_blur(n, s):
    """The BMS code's blur along one axis of length n as a float64 matrix [n, n]:
    ``imfilter(x, fspecial('gaussian', [2s 2s], s), 'replicate')``, whose kernel has an even
    width and so, as in MATLAB, reaches s - 1 pixels back and s forward; fspecial's 2-D kernel
    is the outer product of this 1-D one, so the blur is one matrix per axis."""
    if s == 0:
        return torch.eye(n, dtype=torch.float64)
    offsets = torch.arange(-(s - 1), s + 1)
    kernel = torch.exp(-(offsets - 0.5).double() ** 2 / (2 * s * s))
    rows = torch.arange(n)[:, None].expand(n, 2 * s)
    columns = (rows + offsets).clamp(0, n - 1)  # replicate: the border pixel stands in
    blur = torch.zeros(n, n, dtype=torch.float64)
    blur.index_put_((rows, columns), (kernel / kernel.sum()).expand(n, 2 * s), accumulate=True)
    return blur


_BMS_OPERATORS = {}  # (n_in, n_out, s) -> the resize-then-blur matrix of one axis


def bms_blurred(saliency, shape, sigma):
    """A saliency map [h, w] resized to ``shape`` (H, W) as ``resize_map`` does, then blurred as
    the BMS code does with s = round(max(H, W) * sigma) pixels (0: no blur). Both steps are
    linear and separable, so this is two small matrix products. Returns float64 [H, W]."""
    s = round(max(shape) * sigma)
    operators = []
    for n_in, n_out in zip(saliency.shape, shape):
        key = (n_in, n_out, s)
        if key not in _BMS_OPERATORS:
            _BMS_OPERATORS[key] = _axis_blur(n_out, s) @ _axis_resize(n_in, n_out)
        operators.append(_BMS_OPERATORS[key].to(saliency.device))
    return operators[0] @ saliency.double() @ operators[1].T


def bms_shuffled_auc(saliency_map, fixation_map, shuffle_map, sigmas=(0.0,),
                     protocols=tuple(BMS_PROTOCOLS), n_draws=100, step_size=BMS_STEP, rng=None):
    """Shuffled AUC as the BMS code computes it, for each protocol and blur scale.

    saliency_map: (H', W') any scale; fixation_map: binary (H'', W''), resized (nearest) to the
    shuffle map's size (H, W); shuffle_map: ``bms_shuffle_map`` of the dataset. The saliency
    map is resized to (H, W) (bicubic, as imresize) and blurred (``bms_blurred``), shifted to a
    minimum of 0 and divided by its maximum (a constant map stays 0 and scores 0.5). Positives
    are the image's fixated pixels; the shuffle map with them zeroed gives ``n_draws`` draws of
    as many negatives, with replacement: 'bms2014' draws a pixel with probability proportional
    to its value, 'bms2013' uniformly among its non-zero pixels (an empty one: any pixel). Each
    draw's ROC uses thresholds 0, step, 2 step, ... up to the largest value, plus (0, 0); the
    areas are averaged over draws. A protocol's draws serve every sigma. Returns {protocol:
    list of floats, one per sigma} (NaN where undefined, as the other metrics).
    """
    unknown = set(protocols) - set(BMS_PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocol {sorted(unknown)[0]!r}: choose from "
                         f"{', '.join(BMS_PROTOCOLS)}")
    undefined = {protocol: [float("nan")] * len(sigmas) for protocol in protocols}
    shuffle = as_tensor(shuffle_map)
    device = saliency_map.device if isinstance(saliency_map, torch.Tensor) else None
    sal = as_tensor(saliency_map, device)
    if sal.ndim != 2:
        raise ValueError(f"a saliency map must be 2-D (H, W); got shape {tuple(sal.shape)}")
    fix = resize_nearest(fixation_map, tuple(shuffle.shape)).to(sal.device).flatten()
    if not fix.any():
        warnings.warn("BMS shuffled AUC: the fixation map has no fixations; returning NaN",
                      stacklevel=2)
        return undefined
    sal = _finite(sal, "BMS shuffled AUC")
    if sal is None:
        return undefined
    weights = (shuffle.flatten().cpu() * ~fix.cpu()).numpy()
    support = np.flatnonzero(weights > 0)
    if support.size == 0:  # as the BMS code: no other fixation, so any pixel is a negative
        support, weights = np.arange(weights.size), np.ones(weights.size)
    n_pos, generator = int(fix.sum()), _rng(rng)
    negatives = {}
    for protocol in protocols:
        if protocol == "bms2014":
            cumulative = np.cumsum(weights[support])
            draws = np.searchsorted(cumulative, generator.random(n_pos * n_draws)
                                    * cumulative[-1], side="right").clip(max=support.size - 1)
        else:
            draws = generator.integers(0, support.size, n_pos * n_draws)
        negatives[protocol] = torch.from_numpy(support[draws].reshape(n_draws, n_pos).T.copy())
    scores = {protocol: [] for protocol in protocols}
    rounding = 1e-12 * float(sal.abs().max())  # what the blur's sums leave on a constant map
    for sigma in sigmas:
        values = bms_blurred(sal, tuple(shuffle.shape), sigma).flatten()
        values = values - values.min()
        top = values.max()
        values = values / top if top > rounding else torch.zeros_like(values)
        for protocol in protocols:
            scores[protocol].append(_auc_against_negatives(
                values[fix], values[negatives[protocol].to(values.device)], step_size))
    return scores


def _score_bms_image(i):
    maps, fixation_maps, shuffle_map, sigmas, n_draws, seed = _DATASET
    return bms_shuffled_auc(maps[i], fixation_maps[i], shuffle_map, sigmas,
                            n_draws=n_draws, rng=[seed, i])


def bms_dataset_scores(saliency_maps, fixation_maps, shuffle_map, sigmas=BMS_SIGMAS,
                       n_draws=100, seed=0, workers=1):
    """Every image of a dataset under both BMS protocols: lists of saliency maps (any size) and
    binary fixation maps, the dataset's ``bms_shuffle_map``. Image i's draws are seeded with
    ``[seed, i]``, so the scores do not depend on ``workers`` (as ``evaluate_dataset``).
    Returns {protocol: float64 array [n_images, len(sigmas)]}."""
    maps = [_compact(m) for m in saliency_maps]
    scores = _map_images(_score_bms_image, len(maps), workers,
                         all(m.device.type == "cpu" for m in maps),
                         (maps, fixation_maps, as_tensor(shuffle_map), sigmas, n_draws, seed))
    return {protocol: np.array([image[protocol] for image in scores], dtype=np.float64)
            .reshape(len(maps), len(sigmas)) for protocol in BMS_PROTOCOLS}


def bms_summary(scores, sigmas=BMS_SIGMAS):
    """{protocol: per-image scores [n, len(sigmas)]} -> {protocol: {'sigmas', 'means' (over
    the images with a finite value), 'best_sigma', 'best'}}: the best sigma is chosen on the
    scored images themselves, as the papers did."""
    summary = {}
    for protocol, values in scores.items():
        means = [float(np.nanmean(column)) if np.isfinite(column).any() else float("nan")
                 for column in np.asarray(values, dtype=np.float64).reshape(-1, len(sigmas)).T]
        best = int(np.nanargmax(means)) if np.isfinite(means).any() else 0
        summary[protocol] = {"sigmas": list(sigmas), "means": means,
                             "best_sigma": sigmas[best], "best": means[best]}
    return summary
