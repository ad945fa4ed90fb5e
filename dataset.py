"""Saliency datasets for Mr-CNN: MIT1003 (official layout), the coursework's starter-pack files,
and a built-in synthetic set; crop geometry and location sampling.

Every dataset becomes a ``SaliencySet``: the images resident as uint8 tensors at the three
scales (400x400, 250x250, 150x150), the fixation-density maps at 400x400 for drawing training
locations, and the original-size ground truth (binary fixation points, density) for metrics.

Crop geometry (used for training crops and for dense inference alike): a location is a
relative position ``(v, u)`` in [0, 1); at a scale of ``S`` pixels its centre pixel is
``floor(v * S)`` and the 42x42 crop starts 21 pixels above and left of it. Pixels outside the
image repeat the border (replicate padding).

Command line:
    python dataset.py download [--output-dir data/MIT1003]   fetch and unpack MIT1003
    python dataset.py split --data-dir DIR   write splits/mit1003_{train,val,test,folds10}.txt
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from cli import progress as progress_report
from devices import init_pool_worker
from files import WriteError, write_atomically
import metrics
from metrics import as_binary_map
from MrCNN import CROP_SIZE

SCALES = (400, 250, 150)
MAP_SIZE = 400  # fixation maps are kept at this size for drawing training locations
HALF = CROP_SIZE // 2
FIXATION_THRESHOLD = 0.9
NON_FIXATION_THRESHOLD = 0.1
SPLIT_DIR = Path(__file__).resolve().parent / "splits"
SPLIT_SEED = 2015
SPLIT_SIZES = {"train": 803, "val": 100, "test": 100}
CACHE_VERSION = 2
N_FOLDS = 10
SYNTHETIC = "synthetic"
SYNTHETIC_SIZES = {"train": 32, "val": 8}
STIMULI, MAPS = "ALLSTIMULI", "ALLFIXATIONMAPS"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class DatasetError(Exception):
    """Bad input data: the message says what, which file and what to do."""


# ----------------------------------------------------------------------------- geometry
def crop_starts(rel, size):
    """Relative locations [..., 2] (v, u) in [0, 1) -> int64 top-left corners [..., 2] at ``size``."""
    # the small offset keeps float32 round-off from moving an exact integer centre down a pixel
    centre = torch.floor(rel.double() * size + 1e-4).long().clamp_(0, size - 1)
    return centre - HALF


def pad_images(images):
    """uint8 [N, 3, S, S] -> [N, 3, S + 42, S + 42] with replicated borders (crops never leave it)."""
    return torch.nn.functional.pad(images.float(), (HALF,) * 4, mode="replicate").to(images.dtype)


def cut_crops(padded_scales, image_index, rel, flip=None):
    """Cut the three-scale crops for a batch of locations, vectorised.

    padded_scales: list of uint8 [N, 3, S + 42, S + 42] (``pad_images`` of each scale);
    image_index: int64 [B]; rel: float [B, 2] relative (v, u); flip: bool [B] or None.
    Returns float32 [B, 3 scales, 3, 42, 42] with values in [0, 1].
    """
    offsets = torch.arange(CROP_SIZE, device=rel.device)
    crops = []
    for padded in padded_scales:
        size = padded.shape[-1] - 2 * HALF
        start = crop_starts(rel, size) + HALF  # in padded coordinates
        rows = (start[:, 0, None] + offsets)[:, :, None]  # [B, 42, 1]
        cols = (start[:, 1, None] + offsets)[:, None, :]  # [B, 1, 42]
        crop = padded[image_index[:, None, None], :, rows, cols]  # [B, 42, 42, 3]
        crops.append(crop.permute(0, 3, 1, 2))
    crops = torch.stack(crops, dim=1).float().div_(255.0)
    if flip is not None:
        crops = torch.where(flip[:, None, None, None, None], crops.flip(-1), crops)
    return crops


def grid_locations(grid_size=50, device="cpu"):
    """The centres of a grid_size x grid_size grid as relative (v, u): float [grid_size**2, 2]."""
    centres = (torch.arange(grid_size, device=device, dtype=torch.float64) + 0.5) / grid_size
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([v.reshape(-1), u.reshape(-1)], dim=1).float()


# ----------------------------------------------------------------------------- datasets
@dataclass
class SaliencySet:
    """A dataset resident in memory.

    names: N image names; scales: uint8 [N, 3, S, S] for S in SCALES; maps: uint8
    [N, 400, 400] fixation density scaled so that its maximum is 255; fixations / densities:
    original-size ground truth (bool [H, W] points, float [H, W] density) per image, or None
    where unknown; samples: for the coursework's pre-cut training files, fixed crops
    (float [M, 3, 3, 42, 42]) and labels (float [M]), else None. For an MIT-layout folder,
    cache_key names its image cache (files' sizes and times) and content_key hashes the names
    and file contents of these images (the same wherever the folder is copied).
    """
    names: list
    scales: list
    maps: torch.Tensor
    fixations: list = field(default_factory=list)
    densities: list = field(default_factory=list)
    samples: tuple = None
    cache_key: str = None
    content_key: str = None

    def __len__(self):
        return len(self.names)

    def subset(self, indices):
        """A SaliencySet of the images at ``indices`` (list of ints)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        pick = lambda xs: [xs[i] for i in indices] if xs else []
        return SaliencySet([self.names[i] for i in indices], [s[idx] for s in self.scales],
                           self.maps[idx], pick(self.fixations), pick(self.densities))

    @property
    def n_trainable(self):
        """How many images ``sample_locations`` draws training locations from."""
        return int(trainable_images(self.maps).sum())

    def ground_truth(self, i):
        """(bool fixation points [H, W], float density [H, W]) of image i at its original size."""
        return self.fixations[i], self.densities[i]

    def pixel_mean_std(self):
        """Per-channel mean and std of the 400x400 images, values in [0, 1]: two float [3]."""
        if self.samples is not None:
            x = self.samples[0].transpose(0, 2).reshape(3, -1).double()
            return x.mean(1).float(), x.std(1).float()
        total = torch.zeros(3, dtype=torch.float64)
        total_sq = torch.zeros(3, dtype=torch.float64)
        for chunk in self.scales[0].split(64):
            x = chunk.double().div_(255.0)
            total += x.sum((0, 2, 3))
            total_sq += (x * x).sum((0, 2, 3))
        n = self.scales[0].shape[0] * MAP_SIZE * MAP_SIZE
        mean = total / n
        return mean.float(), (total_sq / n - mean ** 2).clamp_min(1e-12).sqrt().float()


def to_rgb(image):
    """PIL image of any mode (L, CMYK, RGBA, I;16, F, P ...) -> RGB, turned upright as its EXIF
    orientation says (as an image viewer shows it). Integer images wider than 8 bits are
    scaled by their maximum; float images in [0, 1] by 255 (other float ranges: min-max)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        array = 255.0 * array / max(array.max(), 1.0)
        image = Image.fromarray(array.astype(np.uint8))
    elif image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = (0.0, 1.0) if array.min() >= 0 and array.max() <= 1 else \
            (array.min(), max(array.max(), array.min() + 1e-12))
        image = Image.fromarray((255.0 * (array - low) / (high - low) + 0.5).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def open_rgb(path):
    """Decode an image file -> RGB PIL image; raises DatasetError for an unreadable file."""
    try:
        with Image.open(path) as image:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            image.load()
            return to_rgb(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read image {path}: {error}. Replace or remove the file.")


def open_grey(path, dtype=np.float64):
    """Decode a map image -> [H, W] array of ``dtype`` (None: the file's own, e.g. uint8 for an
    8-bit map); a 16-bit map keeps its values, a colour map is read as grey (ITU-R 601 luma, as
    MATLAB's rgb2gray). DatasetError naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            image.load()
            if image.mode not in ("L", "F", "I", "I;16", "I;16B", "I;16L"):
                image = image.convert("L")
            return np.array(image, dtype=dtype)  # a writable copy
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read map {path}: {error}. Replace or remove the file.")


def resize_rgb(image, size):
    """RGB PIL image -> uint8 [3, size, size] tensor (antialiased bilinear)."""
    array = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def resize_map_uint8(density, size=MAP_SIZE):
    """float [H, W] density -> uint8 [size, size], scaled so the maximum is 255."""
    top = density.max()
    scaled = density / top if top > 0 else density
    image = Image.fromarray(scaled.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8))


def mit_layout_names(data_dir):
    """Names of the stimuli in an MIT-layout folder that have both maps; raises DatasetError.

    data_dir must hold ALLSTIMULI/<name>.<ext> and ALLFIXATIONMAPS/<name>_fixMap.jpg and
    <name>_fixPts.jpg. Stimuli without maps (or maps without stimuli) are an error that lists
    a few of them.
    """
    data_dir = Path(data_dir)
    stimuli_dir, maps_dir = data_dir / STIMULI, data_dir / MAPS
    if data_dir.exists() and not data_dir.is_dir():
        raise DatasetError(f"data dir {data_dir} is a file, not a folder. Pass the MIT1003 "
                           f"folder with --data-dir.")
    if not data_dir.is_dir():
        raise DatasetError(f"data dir {data_dir} does not exist. Download MIT1003 (see README) "
                           f"and pass its folder with --data-dir.")
    missing = [d.name for d in (stimuli_dir, maps_dir) if not d.is_dir()]
    if missing:
        raise DatasetError(f"data dir {data_dir} has no {' or '.join(missing)} folder: it is not "
                           f"in the MIT1003 layout (ALLSTIMULI/, ALLFIXATIONMAPS/). See README.")
    stimuli = {}
    for path in sorted(stimuli_dir.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in stimuli:
                raise DatasetError(f"{stimuli_dir} holds two stimuli named {path.stem} "
                                   f"({stimuli[path.stem].name} and {path.name}): their maps "
                                   f"would be shared. Remove or rename one.")
            stimuli[path.stem] = path
    if not stimuli:
        raise DatasetError(f"{stimuli_dir} holds no images (.jpeg/.jpg/.png). See README.")
    fix_maps = {p.name[: -len("_fixMap.jpg")] for p in maps_dir.glob("*_fixMap.jpg")}
    fix_pts = {p.name[: -len("_fixPts.jpg")] for p in maps_dir.glob("*_fixPts.jpg")}
    complete = fix_maps & fix_pts
    without_maps = sorted(set(stimuli) - complete)
    without_stimuli = sorted((fix_maps | fix_pts) - set(stimuli))
    for problem, names in (("stimuli without both _fixMap.jpg and _fixPts.jpg", without_maps),
                           ("fixation maps without a stimulus", without_stimuli)):
        if names:
            raise DatasetError(f"{data_dir}: {len(names)} {problem}, e.g. "
                               f"{', '.join(names[:3])}. Restore or remove them.")
    return sorted(stimuli), stimuli


def read_split(split, names=None):
    """Names of a split: 'train', 'val' or 'test' (splits/mit1003_<split>.txt), or
    'fold<K>/train', 'fold<K>/val', 'fold<K>/test' (the 10 cross-validation folds of
    splits/mit1003_folds10.txt: fold K is 'test', fold K + 1 mod 10 'val', the rest 'train').
    Checks that they exist in ``names`` if given; raises DatasetError otherwise."""
    if split.startswith("fold"):
        fold, _, part = split[4:].partition("/")
        path = SPLIT_DIR / f"mit1003_folds{N_FOLDS}.txt"
        folds = {line.split()[0]: int(line.split()[1])
                 for line in path.read_text().splitlines() if line.strip()}
        held_out = {"test": {int(fold)}, "val": {(int(fold) + 1) % N_FOLDS}}
        wanted = held_out.get(part, set(range(N_FOLDS)) - held_out["test"] - held_out["val"])
        listed = sorted(name for name, k in folds.items() if k in wanted)
    else:
        path = SPLIT_DIR / f"mit1003_{split}.txt"
        listed = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if names is not None:
        unknown = sorted(set(listed) - set(names))
        if unknown:
            raise DatasetError(f"split file {path} names {len(unknown)} images that the data "
                               f"dir lacks, e.g. {', '.join(unknown[:3])}: it holds part of "
                               f"MIT1003. Restore the full MIT1003, or use test.py --split all.")
    return listed


def split_names(split, names, data_dir="the data dir"):
    """The names of ``split`` in a folder that holds ``names``: MIT1003's split files when the
    folder is MIT1003; for another dataset (none of MIT1003's names) a split of its own, made
    like ours (sorted names, one permutation seeded 2015: 80% train, 10% val, the rest test),
    so that main.py and test.py agree on it. A folder with part of MIT1003 is an error."""
    try:
        return read_split(split, names)
    except DatasetError:
        if set(names) & set(read_split("train") + read_split("val") + read_split("test")):
            raise
        if split.startswith("fold"):
            raise DatasetError(f"{data_dir} is not MIT1003, and the cross-validation folds "
                               f"(--fold K, --split fold<K>/test) are MIT1003's. Without them "
                               f"it gets a train / val / test split of its own.") from None
    if len(names) < 3:
        raise DatasetError(f"{data_dir} holds only {len(names)} image{'s' * (len(names) != 1)}:"
                           f" a train / val / test split needs at least 3. Add images, or use "
                           f"test.py --split all.")
    order = np.random.default_rng(SPLIT_SEED).permutation(sorted(names)).tolist()
    n_val = n_test = max(1, round(0.1 * len(names)))
    own = {"val": order[:n_val], "test": order[n_val:n_val + n_test],
           "train": order[n_val + n_test:]}
    warnings.warn(f"{data_dir} is not MIT1003, so it gets a split of its own: "
                  f"{len(own['train'])} train / {n_val} val / {n_test} test images (sorted "
                  f"names permuted with seed {SPLIT_SEED}; the same on every run).")
    return sorted(own[split])


def make_splits(names, seed=SPLIT_SEED):
    """Deterministic splits of MIT1003's 1003 sorted names, from one NumPy permutation seeded
    ``seed``: {'train': 803, 'val': 100, 'test': 100 names} (in that order of the
    permutation), and {name: fold} for 10 folds cut from the same permutation with
    numpy.array_split (sizes 101, 101, 101, 100, ...)."""
    names = sorted(names)
    if len(names) != sum(SPLIT_SIZES.values()):
        raise DatasetError(f"MIT1003 has 1003 images; found {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    out, start = {}, 0
    for split, size in SPLIT_SIZES.items():
        out[split] = sorted(names[i] for i in order[start:start + size])
        start += size
    folds = {names[i]: k for k, part in enumerate(np.array_split(order, N_FOLDS)) for i in part}
    return out, dict(sorted(folds.items()))


def _decode_one(args):
    """Worker: (stimulus path, maps dir, name) -> (name, resized arrays or a reason to skip
    the image, notes for the user, sha1 of the bytes of its three files or None)."""
    path, maps_dir, name = args
    files = [Path(path), Path(maps_dir) / f"{name}_fixMap.jpg",
             Path(maps_dir) / f"{name}_fixPts.jpg"]
    try:
        image = open_rgb(files[0])
        density = open_grey(files[1])
        open_grey(files[2])  # unreadable points: skip the image now
        digest = hashlib.sha1()
        for file in files:
            digest.update(file.read_bytes())
    except (DatasetError, OSError) as error:
        return name, f"{error} The image is skipped.", [], None
    notes = []
    if density.shape != (image.height, image.width):
        notes.append(f"{name}: fixation map is {density.shape[1]}x{density.shape[0]}, the image "
                     f"{image.width}x{image.height}; the map was resized to the image")
        density = np.asarray(Image.fromarray(density.astype(np.float32), mode="F")
                             .resize(image.size, Image.BILINEAR), dtype=np.float64)
    if density.max() <= 0 or (density / density.max() > FIXATION_THRESHOLD).sum() == 0:
        return name, f"{name}: fixation map has no fixated pixel; the image is skipped", notes, None
    scales = [resize_rgb(image, s).numpy() for s in SCALES]
    return name, (scales, resize_map_uint8(density).numpy()), notes, digest.hexdigest()


def _cache_key(data_dir, names, stimuli):
    """A hash of the folder and of the size and modification time of every file the cache
    reads: each stimulus, its fixation map and its point map."""
    # surrogateescape: a file name that is not UTF-8 hashes as its own bytes
    digest = hashlib.sha1(f"v{CACHE_VERSION} {Path(data_dir).resolve()} {SCALES}".encode(
        errors="surrogateescape"))
    maps_dir = Path(data_dir) / MAPS
    for name in names:
        for path in (stimuli[name], maps_dir / f"{name}_fixMap.jpg",
                     maps_dir / f"{name}_fixPts.jpg"):
            stat = path.stat()
            digest.update(f"{path.name} {stat.st_size} {stat.st_mtime_ns}".encode(
                errors="surrogateescape"))
    return digest.hexdigest()[:16]


def _load_cache(folder, key):
    """The cached arrays if folder holds a complete cache for ``key``, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") != key:
            return None
        arrays = [np.load(folder / f"scale{s}.npy", mmap_mode="r") for s in SCALES]
        maps = np.load(folder / "maps.npy", mmap_mode="r")
        n = len(meta["names"])
        if (any(a.shape != (n, 3, s, s) for a, s in zip(arrays, SCALES)) or maps.shape[0] != n
                or len(meta["digests"]) != n):
            return None
        return meta["names"], meta["skipped"], arrays, maps, meta["digests"]
    except (OSError, ValueError, KeyError):
        return None


def build_image_cache(data_dir, cache_dir, workers=None, progress=True):
    """Decode and resize every stimulus of an MIT-layout folder once; reuse the cache later.

    The cache (one .npy per scale, the 400x400 maps, meta.json) lives in
    ``cache_dir/<key>`` (``_cache_key``: every file's size and modification time), so an
    edited dataset is re-read; a cache that fails to load or whose shapes disagree with
    meta.json is rebuilt, and so is one that skipped an image that now reads (a failure, such as
    a passing I/O error, is never kept). It is written to a temporary folder and renamed, so an
    interrupted build leaves no half cache. Returns (names, scales arrays, maps array, key,
    per-image sha1 of the bytes of its three files).
    """
    names, stimuli = mit_layout_names(data_dir)
    key = _cache_key(data_dir, names, stimuli)
    folder = Path(cache_dir) / key
    cached = _load_cache(folder, key)
    job = lambda name: (str(stimuli[name]), str(Path(data_dir) / MAPS), name)  # _decode_one's
    try:  # checked now: decoding takes a while
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetError(f"cannot write the image cache in {cache_dir} ({error.strerror}). "
                           f"Pass a writable --cache-dir.") from None
    if cached is not None and any(not isinstance(_decode_one(job(n))[1], str)
                                  for n, _ in cached[1]):  # a skipped image that reads now
        cached = None
    if cached is None:
        jobs = [job(n) for n in names]
        results = []
        with Pool(max(1, workers or os.cpu_count() or 1), init_pool_worker) as pool:
            iterator = pool.imap(_decode_one, jobs, chunksize=8)
            if progress:
                iterator = progress_report(iterator, len(jobs), f"caching {Path(data_dir).name}",
                                           "image")
            results.extend(iterator)
        for note in (note for _, _, notes, _ in results for note in notes):
            warnings.warn(note)
        kept = [(n, r, digest) for n, r, _, digest in results if not isinstance(r, str)]
        skipped = [(n, r) for n, r, _, _ in results if isinstance(r, str)]
        if not kept:
            raise DatasetError(f"no usable image in {data_dir}: "
                               f"{[message for _, message in skipped[:3]]}")
        tmp = Path(cache_dir) / f".{key}.tmp{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for k, s in enumerate(SCALES):
                np.save(tmp / f"scale{s}.npy", np.stack([r[0][k] for _, r, _ in kept]))
            np.save(tmp / "maps.npy", np.stack([r[1] for _, r, _ in kept]))
            (tmp / "meta.json").write_text(json.dumps({
                "key": key, "skipped": skipped, "names": [n for n, _, _ in kept],
                "digests": [digest for _, _, digest in kept]}))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        except OSError as error:
            raise DatasetError(f"cannot write the image cache in {cache_dir} "
                               f"({error.strerror or error}). Free some space or pass a "
                               f"writable --cache-dir.") from None
        finally:  # a failed or interrupted build leaves no temporary folder behind
            shutil.rmtree(tmp, ignore_errors=True)
        cached = _load_cache(folder, key)
    cached_names, skipped, arrays, maps, digests = cached
    for _, message in skipped:
        warnings.warn(message)
    return cached_names, arrays, maps, key, digests


def read_fixation_points(data_dir, name):
    """bool [H, W], True at the fixated pixels of one MIT-layout image (its _fixPts.jpg)."""
    return as_binary_map(open_grey(Path(data_dir) / MAPS / f"{name}_fixPts.jpg")).numpy()


def read_ground_truth(data_dir, name):
    """(bool fixation points [H, W], float density [H, W] in [0, 1]) of one MIT-layout image."""
    density = open_grey(Path(data_dir) / MAPS / f"{name}_fixMap.jpg")
    top = density.max()
    return read_fixation_points(data_dir, name), density / top if top > 0 else density


def _read_or_reason(args):
    """Worker: (reader, data dir, name) -> reader(data dir, name), or why it failed (a str)."""
    reader, data_dir, name = args
    try:
        return reader(data_dir, name)
    except DatasetError as error:
        return str(error)


def load_ground_truth(data_dir, split="all", workers=None):
    """The ground truth of ``split`` of an MIT-layout folder, without decoding its images: a
    SaliencySet of names, fixations and densities (no scales; maps [N, 0, 0]). An image whose maps
    cannot be read is skipped with a warning, as ``load_mit`` skips it."""
    names, _ = mit_layout_names(data_dir)
    if split != "all":
        names = split_names(split, names, data_dir)
    with Pool(max(1, min(workers or os.cpu_count() or 1, len(names))), init_pool_worker) as pool:
        truths = pool.map(_read_or_reason, [(read_ground_truth, str(data_dir), name)
                                            for name in names])
    for reason in (t for t in truths if isinstance(t, str)):
        warnings.warn(f"{reason} The image is skipped.")
    kept = [(n, t) for n, t in zip(names, truths) if not isinstance(t, str)]
    return SaliencySet([n for n, _ in kept], [], torch.empty(len(kept), 0, 0),
                       [t[0] for _, t in kept], [t[1] for _, t in kept])


def shuffle_map(data_dir, cache_dir=".cache", workers=None):
    """The BMS protocols' shuffle map of an MIT-layout folder (metrics.bms_shuffle_map): every
    image's fixation points resized (nearest) to the folder's most common image size and
    summed. Kept in ``cache_dir`` under the image cache's key (an edited folder is read again).
    Returns (float64 tensor [H, W], the number of images in it)."""
    names, stimuli = mit_layout_names(data_dir)
    path = Path(cache_dir) / f"shuffle_map_{_cache_key(data_dir, names, stimuli)}.npz"
    try:
        with np.load(path) as kept:
            return torch.from_numpy(kept["counts"].astype(np.float64)), int(kept["n_images"])
    except (OSError, ValueError, KeyError):
        pass
    with Pool(max(1, workers or os.cpu_count() or 1), init_pool_worker) as pool:
        points = [p for p in pool.map(_read_or_reason, [(read_fixation_points, str(data_dir),
                                                         n) for n in names])
                  if not isinstance(p, str)]
    if not points:
        raise DatasetError(f"no readable fixation map in {Path(data_dir) / MAPS}. See README.")
    counts = metrics.bms_shuffle_map(points, metrics.common_size(p.shape for p in points))
    try:
        write_atomically(path, lambda tmp: np.savez_compressed(
            tmp, counts=counts.numpy().astype(np.uint32), n_images=len(points)))
    except WriteError:  # a read-only or full cache: computed again next time
        pass
    return counts, len(points)


def load_mit(data_dir, split="all", cache_dir=".cache", workers=None, progress=True,
             ground_truth=None):
    """An MIT-layout folder -> SaliencySet of ``split`` ('train', 'val', 'test' or 'all').

    Images come from the resident cache (built on first use); the original-size ground truth
    is read when ``ground_truth`` is True (default: for every split but the training ones, whose
    training only needs the 400x400 maps).
    """
    names, arrays, maps, key, digests = build_image_cache(data_dir, cache_dir, workers, progress)
    if split == "all":
        chosen = list(range(len(names)))
    else:
        wanted = set(split_names(split, mit_layout_names(data_dir)[0], data_dir))
        chosen = [i for i, n in enumerate(names) if n in wanted]
        if len(chosen) < len(wanted):
            warnings.warn(f"split {split}: {len(wanted) - len(chosen)} of the {len(wanted)} "
                          f"images it lists were skipped (see the warnings above), so its "
                          f"scores cover {len(chosen)} images and are not comparable with "
                          f"scores over the whole split (README).")
    idx = np.asarray(chosen, dtype=np.int64)
    scales = [torch.from_numpy(np.ascontiguousarray(a[idx])) for a in arrays]
    chosen_names = [names[i] for i in chosen]
    fixations, densities = [], []
    if not split.endswith("train") if ground_truth is None else ground_truth:
        for name in chosen_names:
            points, density = read_ground_truth(data_dir, name)
            fixations.append(points)
            densities.append(density)
    content = hashlib.sha1("".join(f"{names[i]} {digests[i]}\n" for i in chosen).encode(
        errors="surrogateescape"))
    return SaliencySet(chosen_names, scales, torch.from_numpy(np.ascontiguousarray(maps[idx])),
                       fixations, densities, cache_key=key, content_key=content.hexdigest())


def load_training_data(data_dir, fold=None, cache_dir=".cache", workers=None, seed=0,
                       expected=None):
    """What main.py trains and validates on -> (train set, val set, record of the source).

    data_dir: an MIT-layout folder (the 803/100/100 split, or with ``fold`` K the
    cross-validation folds: train on eight, validate on fold K + 1, fold K held out), a folder
    of the coursework's files, or 'synthetic' (scenes generated from ``seed``). The record
    ({'source', 'dir', 'cache_key', 'content_key'} or {'source', 'seed', 'sizes'}) lets a
    resumed run check that its data did not change: pass it as ``expected`` (DatasetError if
    its content differs; a copy of the folder elsewhere, with new file times, is the same)."""
    train, val, record = _load_training_data(data_dir, fold, cache_dir, workers, seed)
    if train.samples is None:
        refuse_untrainable(train)
    # records written before content_key existed are compared by cache key (sizes and times)
    new_record = isinstance(expected, dict) and "content_key" in expected
    ignored = {"dir", "cache_key"} if new_record else {"dir", "content_key"}
    same = lambda r: {k: v for k, v in r.items() if k not in ignored}
    if isinstance(expected, dict) and same(expected) != same(record):
        raise DatasetError(f"the data in {record.get('dir', data_dir)} changed since the run "
                           f"started (files added, removed or edited), so it cannot continue "
                           f"exactly. Restore the data or start a new run.")
    return train, val, record


def refuse_untrainable(train):
    """DatasetError where no image of the SaliencySet ``train`` gives a training location; a
    warning naming those that give none (they are left out of training)."""
    left_out = [name for name, ok in zip(train.names, trainable_images(train.maps)) if not ok]
    if len(left_out) == len(train):
        raise DatasetError(f"no training image (of {len(train)}) has both fixated pixels (map "
                           f"above {FIXATION_THRESHOLD} of its maximum) and non-fixated ones "
                           f"(below {NON_FIXATION_THRESHOLD}) to draw training locations from: "
                           f"check that the fixation maps are density maps, not uniform images.")
    if left_out:
        warnings.warn(f"{len(left_out)} of the {len(train)} training images give no training "
                      f"location and are left out of training ({shown_names(left_out)}): their "
                      f"fixation maps have no pixel above {FIXATION_THRESHOLD} of their maximum "
                      f"or none below {NON_FIXATION_THRESHOLD} (an empty or uniform map)")


def _load_training_data(data_dir, fold, cache_dir, workers, seed):
    if fold is not None and (data_dir == SYNTHETIC or is_coursework_dir(data_dir)):
        raise DatasetError("--fold needs the MIT1003 layout: pass its folder with --data-dir")
    if data_dir == SYNTHETIC:
        print(f"note: training on a built-in SYNTHETIC saliency set ({SYNTHETIC_SIZES['train']} "
              f"train / {SYNTHETIC_SIZES['val']} val scenes), not MIT1003. For the real thing, "
              f"run 'python dataset.py download' or pass --data-dir.", file=sys.stderr)
        return (load_synthetic(SYNTHETIC_SIZES["train"], seed),
                load_synthetic(SYNTHETIC_SIZES["val"], seed + 10_000),
                {"source": SYNTHETIC, "seed": seed, "sizes": dict(SYNTHETIC_SIZES)})
    if is_coursework_dir(data_dir):
        return (load_coursework(data_dir, "train"), load_coursework(data_dir, "val"),
                {"source": "coursework", "dir": str(data_dir)})
    splits = ("train", "val") if fold is None else (f"fold{fold}/train", f"fold{fold}/val")
    train, val = (load_mit(data_dir, split, cache_dir, workers) for split in splits)
    content = hashlib.sha1(f"{train.content_key} {val.content_key}".encode()).hexdigest()
    return train, val, {"source": "mit", "dir": str(data_dir), "cache_key": train.cache_key,
                        "content_key": content}


# ----------------------------------------------------------------------------- coursework
COURSEWORK_FILES = {"train": "train_data.pth.tar", "val": "val_data.pth.tar",
                    "test": "test_data.pth.tar"}


def is_coursework_dir(data_dir):
    """True if data_dir holds the coursework's train_data.pth.tar."""
    return (Path(data_dir) / COURSEWORK_FILES["train"]).is_file()


def _torch_load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is the same bad file
        raise DatasetError(f"cannot load {path} as a tensor file ({type(error).__name__}: "
                           f"{str(error).splitlines()[0][:200]}). Re-create it with "
                           f"'python -m tools.export_coursework'.")


def _check_records(path, records, shapes):
    """Raise DatasetError unless ``records`` is a non-empty list of dicts holding a "file" name
    and a tensor of each shape of ``shapes`` ({key: shape, or None for a number})."""
    def problem():
        if not isinstance(records, list) or not records:
            return "it holds " + ("an empty list" if records == [] else
                                  f"a {type(records).__name__}")
        for i, record in enumerate(records):
            if not isinstance(record, dict) or "file" not in record:
                return f"record {i} is not a dict with a 'file' name"
            for key, shape in shapes.items():
                value = record.get(key)
                if shape is None and not isinstance(value, (int, float, torch.Tensor)):
                    return f"record {i} has no number {key}"
                if shape is not None and not (isinstance(value, torch.Tensor)
                                              and value.shape == shape):
                    return f"record {i}'s {key} is " + (
                        f"of shape {list(value.shape)}" if isinstance(value, torch.Tensor)
                        else "missing" if value is None else f"a {type(value).__name__}")
        return None
    if (found := problem()) is not None:
        expected = ", ".join(f"{key} {list(shape) if shape else '(a number)'}"
                             for key, shape in shapes.items())
        raise DatasetError(f"{path} is not a coursework file: {found}, where a list of dicts "
                           f"with file, {expected} was expected. Re-create it with 'python -m "
                           f"tools.export_coursework'.")


def load_coursework(data_dir, split):
    """The coursework's starter-pack file of ``split`` -> SaliencySet.

    'train' keeps the pre-cut crops as fixed samples; 'val'/'test' keep the three resized
    images and read the ground truth from ALLFIXATIONMAPS beside the files.
    """
    data_dir = Path(data_dir)
    path = data_dir / COURSEWORK_FILES[split]
    if not path.is_file():
        raise DatasetError(f"{path} is missing: a coursework data dir needs "
                           f"{', '.join(COURSEWORK_FILES.values())}.")
    records = _torch_load(path)
    _check_records(path, records, {"X": (len(SCALES), 3, CROP_SIZE, CROP_SIZE), "y": None}
                   if split == "train" else {f"X_{s}": (3, s, s) for s in SCALES})
    if split == "train":
        crops = torch.stack([r["X"].float() for r in records])
        labels = torch.tensor([float(r["y"]) for r in records])
        names = sorted({r["file"] for r in records})
        empty = [torch.zeros(0, 3, s, s, dtype=torch.uint8) for s in SCALES]
        return SaliencySet(names, empty, torch.zeros(0, MAP_SIZE, MAP_SIZE, dtype=torch.uint8),
                           samples=(crops, labels))
    to_uint8 = lambda x: (x.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    scales = [torch.stack([to_uint8(r[f"X_{s}"]) for r in records]) for s in SCALES]
    names = [Path(r["file"]).stem for r in records]
    fixations, densities = [], []
    for name in names:
        points, density = read_ground_truth(data_dir, name)
        fixations.append(points)
        densities.append(density)
    maps = torch.stack([resize_map_uint8(d) for d in densities])
    return SaliencySet(names, scales, maps, fixations, densities)


# ----------------------------------------------------------------------------- synthetic
def _blur(array, sigma):
    """Separable Gaussian blur of a float [H, W] array (reflect borders)."""
    radius = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        padded = np.pad(array, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)],
                        mode="reflect")
        array = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), axis, padded)
    return array


def synthetic_image(rng, height=192, width=256, n_fixations=80):
    """One procedural saliency scene.

    Returns (uint8 RGB [H, W, 3], bool fixation points [H, W], float density [H, W] in [0, 1]).
    The scene is a dim, smooth, textured background with 2-4 bright, saturated objects; human
    fixations are drawn from a known density: Gaussians on the objects plus a centre bias.
    """
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    background = np.stack([_blur(rng.random((height // 8, width // 8)), 1.5) for _ in range(3)], -1)
    background = np.kron(background, np.ones((8, 8, 1)))
    image = 0.25 + 0.2 * background + 0.05 * rng.standard_normal((height, width, 3))
    density = 0.25 * np.exp(-(((ys - height / 2) / (0.3 * height)) ** 2
                              + ((xs - width / 2) / (0.3 * width)) ** 2))
    for _ in range(rng.integers(2, 5)):
        cy, cx = rng.uniform(0.12, 0.88) * height, rng.uniform(0.12, 0.88) * width
        radius = rng.uniform(0.04, 0.09) * min(height, width)
        colour = np.eye(3)[rng.integers(3)] * 0.6 + 0.4 * rng.random(3)
        inside = ((ys - cy) ** 2 + (xs - cx) ** 2) <= radius ** 2
        if rng.random() < 0.5:
            inside = (np.abs(ys - cy) <= radius) & (np.abs(xs - cx) <= radius)
        image[inside] = colour
        density += np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * (1.2 * radius) ** 2))
    p = density.ravel() / density.sum()
    points = np.zeros(height * width, dtype=bool)
    points[rng.choice(height * width, size=n_fixations, replace=False, p=p)] = True
    points = points.reshape(height, width)
    fixation_map = _blur(points.astype(np.float64), 0.03 * width)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image, points, fixation_map / fixation_map.max()


def load_synthetic(n_images, seed):
    """A SaliencySet of ``n_images`` synthetic scenes (see ``synthetic_image``), seeded."""
    rng = np.random.default_rng(seed)
    names, scales, maps, fixations, densities = [], [[] for _ in SCALES], [], [], []
    for i in range(n_images):
        image, points, density = synthetic_image(rng)
        pil = Image.fromarray(image)
        for k, s in enumerate(SCALES):
            scales[k].append(resize_rgb(pil, s))
        names.append(f"synthetic_{seed}_{i:04d}")
        maps.append(resize_map_uint8(density))
        fixations.append(points)
        densities.append(density)
    return SaliencySet(names, [torch.stack(s) for s in scales], torch.stack(maps),
                       fixations, densities)


# ----------------------------------------------------------------------------- sampling
def trainable_images(maps):
    """uint8 maps [N, H, W] (maximum scaled to 255) -> bool [N]: whether each has fixated
    pixels (above FIXATION_THRESHOLD of the maximum) and non-fixated ones (below
    NON_FIXATION_THRESHOLD), the two kinds of location a training sample is drawn from."""
    flat = maps.reshape(len(maps), -1)
    # 0.9 * 255 = 229.5 and 0.1 * 255 = 25.5 fall between integers: no ties
    return (flat.amax(1) > FIXATION_THRESHOLD * 255) & (flat.amin(1) < NON_FIXATION_THRESHOLD * 255)


def sample_locations(maps, generator, n_fixation=10, n_non_fixation=20, n_uniform=0):
    """Draw one epoch's training locations from fixation maps.

    maps: uint8 [N, H, W] with the maximum scaled to 255. Per image, with replacement:
    ``n_fixation`` locations where the map (scaled to [0, 1]) is above 0.9, labelled 1;
    ``n_non_fixation`` where it is below 0.1, labelled 0; and ``n_uniform`` anywhere, with no
    label (NaN: only distillation, which gives every location a target, draws them).
    Returns (image index int64 [M], relative location float [M, 2] at the pixel centres,
    label float [M]); images lacking fixation or non-fixation pixels are skipped, and
    DatasetError says so when that leaves none.
    """
    n_images, height, width = maps.shape
    flat = maps.reshape(n_images, -1)
    to_relative = lambda pixel: torch.stack([(pixel // width + 0.5) / height,
                                             (pixel % width + 0.5) / width], 1).float()
    index, rel, label = [], [], []
    for i in torch.nonzero(trainable_images(maps)).squeeze(1).tolist():
        positive = torch.nonzero(flat[i] > FIXATION_THRESHOLD * 255).squeeze(1)
        negative = torch.nonzero(flat[i] < NON_FIXATION_THRESHOLD * 255).squeeze(1)
        pixels = [positive[torch.randint(len(positive), (n_fixation,), generator=generator)],
                  negative[torch.randint(len(negative), (n_non_fixation,), generator=generator)],
                  torch.randint(height * width, (n_uniform,), generator=generator)]
        rel.append(to_relative(torch.cat(pixels)))
        index.append(torch.full((n_fixation + n_non_fixation + n_uniform,), i, dtype=torch.long))
        label += [torch.ones(n_fixation), torch.zeros(n_non_fixation),
                  torch.full((n_uniform,), float("nan"))]
    if not index:
        raise DatasetError(f"no image (of {n_images}) has both fixated pixels (map above "
                           f"{FIXATION_THRESHOLD} of its maximum) and non-fixated ones (below "
                           f"{NON_FIXATION_THRESHOLD}) to draw training locations from: check "
                           f"that the fixation maps are density maps, not uniform images.")
    return torch.cat(index), torch.cat(rel), torch.cat(label)


def sample_maps(maps, index, rel):
    """Bilinear values of dense maps at relative locations.

    maps: float [N, G, G] over relative locations ((i + 0.5) / G); index: int64 [M] into
    maps; rel: float [M, 2] relative (row, column) in [0, 1]. Returns float [M] on rel's device.
    """
    grid = (2 * rel.float().flip(-1) - 1).to(maps.device)  # grid_sample wants (x, y) in [-1, 1]
    values = torch.nn.functional.grid_sample(
        maps[index.to(maps.device), None].float(), grid[:, None, None], mode="bilinear",
        padding_mode="border", align_corners=False)
    return values.view(-1).to(rel.device)


def epoch_samples(train_set, generator, n_fixation, n_non_fixation, n_uniform=0, targets=None,
                  flip=True, device="cpu"):
    """One epoch's training samples, shuffled: (image index, relative location, target, flip).

    Locations come from ``sample_locations``; ``targets`` (float [N, S, S] dense maps, e.g. a
    teacher's) replace their labels by the maps' bilinear values there; ``flip``: a random
    half of the samples is flipped. For the coursework's pre-cut crops the index is the
    crop's and the location None. Drawn per epoch, not per batch, so that a run resumed
    mid-epoch sees the same batches."""
    if train_set.samples is not None:
        index, rel, labels = torch.arange(len(train_set.samples[1])), None, train_set.samples[1]
    else:
        index, rel, labels = sample_locations(train_set.maps, generator, n_fixation,
                                              n_non_fixation, n_uniform)
        if targets is not None:
            labels = sample_maps(targets, index, rel)
    order = torch.randperm(len(labels), generator=generator)
    flips = (torch.rand(len(labels), generator=generator) < 0.5) & flip
    index_device = "cpu" if rel is None else device  # pre-cut crops stay in host memory
    return (index[order].to(index_device), None if rel is None else rel[order].to(device),
            labels[order].to(device), flips.to(device))


def batch_crops(train_set, padded_scales, index, rel, flip):
    """A batch's crops, float [B, 3, 3, 42, 42] in [0, 1] on flip's device: cut at ``rel``
    from ``padded_scales`` (``pad_images`` of train_set's scales), or for the coursework's
    pre-cut crops (``rel`` None) taken from train_set.samples."""
    if rel is not None:
        return cut_crops(padded_scales, index, rel, flip)
    crops = train_set.samples[0][index].to(flip.device)
    return torch.where(flip[:, None, None, None, None], crops.flip(-1), crops)


# ----------------------------------------------------------------------------- download
MIT1003_PAGE = "http://people.csail.mit.edu/tjudd/WherePeopleLook"
ARCHIVES = (f"{STIMULI}.zip", f"{MAPS}.zip")


def _fetch(url, path, progress=True):
    """Download ``url`` to ``path``, continuing a partial ``path``.part where the server allows
    it (HTTP Range); the finished file is renamed into place."""
    import urllib.request
    from tqdm import tqdm
    part = path.with_name(path.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if response.status != 206:  # the server sent the whole file: start again
            have = 0
        total = have + int(response.headers.get("Content-Length") or 0) or None
        with open(part, "ab" if have else "wb") as out, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=path.name,
                     disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    os.replace(part, path)


def _unpack(archive, output_dir):
    """Extract the ALLSTIMULI/ or ALLFIXATIONMAPS/ files of a zip into output_dir/<that folder>
    (wherever the folder sits inside the zip; other entries are left out)."""
    import zipfile
    with zipfile.ZipFile(archive) as zipped:
        for entry in zipped.infolist():
            parts = Path(entry.filename).parts
            folders = [p for p in parts[:-1] if p in (STIMULI, MAPS)]
            if entry.is_dir() or not folders or "__MACOSX" in parts or parts[-1].startswith("."):
                continue
            target = Path(output_dir) / folders[-1] / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(entry) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)


def download_mit1003(output_dir="data/MIT1003", base_url=MIT1003_PAGE, expected_images=1003,
                     progress=True, downloads_dir=".cache/downloads"):
    """Download MIT1003's two official zips into ``downloads_dir`` (resumable: a partial
    download is kept there), then unpack both into ``output_dir`` in the layout this project
    reads, and check it: ``expected_images`` stimuli, each with a fixation map and a point map.
    ``output_dir`` is created only once both zips are complete. Returns the number of images;
    raises DatasetError on failure."""
    import urllib.error
    import zipfile
    output_dir, downloads = Path(output_dir), Path(downloads_dir)
    try:
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetError(f"cannot create {downloads} ({error.strerror}). Pass a writable "
                           f"--cache-dir.")
    for name in ARCHIVES:
        archive, url = downloads / name, f"{base_url.rstrip('/')}/{name}"
        if not archive.exists():
            try:
                _fetch(url, archive, progress)
            except (urllib.error.URLError, OSError, ValueError) as error:
                reason = getattr(error, "reason", None) or error
                raise DatasetError(
                    f"cannot download {url} ({reason}). Run the command again to continue where "
                    f"it stopped (what arrived is kept in {downloads}), or download "
                    f"{' and '.join(ARCHIVES)} by hand from {MIT1003_PAGE} and unzip both into "
                    f"{output_dir} (see README).")
    for name in ARCHIVES:
        archive = downloads / name
        try:
            _unpack(archive, output_dir)
        except (zipfile.BadZipFile, OSError) as error:
            archive.unlink(missing_ok=True)  # a damaged download: fetched anew next time
            raise DatasetError(f"{archive} is not a valid zip ({error}); it was removed. Run "
                               f"the command again to download it anew.")
    names, _ = mit_layout_names(output_dir)  # every stimulus has both maps, or an error
    if len(names) != expected_images:
        raise DatasetError(f"{output_dir} holds {len(names)} images after unpacking, not "
                           f"{expected_images}: the downloads are incomplete. Delete "
                           f"{downloads} and run the command again.")
    for name in ARCHIVES:
        (downloads / name).unlink()
    return len(names)


# ----------------------------------------------------------------------------- command line
def show_warnings_plainly():
    """Print each warning as one line, 'warning: <message>', on stderr: the scripts' users
    need the message (which file, what was done), not the line of our code that raised it.
    A file name that is not UTF-8 prints with its odd bytes escaped, never a traceback."""
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def printable(name):
    """A file or image name as text any renderer takes: bytes of a name that is not UTF-8
    (which Python holds as lone surrogates) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def shown_names(names, at_most=5):
    """'a, b, c, d, e and 4 more': the first ``at_most`` of ``names``, printable."""
    shown = ", ".join(printable(n) for n in names[:at_most])
    return shown + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    download = sub.add_parser("download", help="download and unpack MIT1003 (~150 MB)")
    download.add_argument("--output-dir", default="data/MIT1003", help="where to unpack it")
    download.add_argument("--url", default=MIT1003_PAGE, help="where the two zips are")
    download.add_argument("--cache-dir", default=".cache", help="downloads go to <dir>/downloads "
                          "until both are complete")
    split = sub.add_parser("split", help="write the 803/100/100 split and the 10 folds")
    split.add_argument("--data-dir", default="data/MIT1003", help="MIT1003 folder")
    args = parser.parse_args(argv)
    show_warnings_plainly()
    try:
        if args.command == "download":
            n = download_mit1003(args.output_dir, args.url,
                                 downloads_dir=Path(args.cache_dir) / "downloads")
            print(f"{args.output_dir}: MIT1003 with {n} images, each with its fixation map and "
                  f"points. Train with: python main.py --data-dir {args.output_dir}")
        elif args.command == "split":
            names, _ = mit_layout_names(args.data_dir)
            folds = SPLIT_DIR / f"mit1003_folds{N_FOLDS}.txt"
            described = {line.split()[0] for line in folds.read_text().splitlines()
                         if line.strip()} if folds.is_file() else set(names)
            if set(names) != described:
                raise DatasetError(
                    f"{args.data_dir} holds other images than the {len(described)} that "
                    f"{SPLIT_DIR.name}/ describes (MIT1003's), so its split files are left as "
                    f"they are. Another dataset needs no split files: main.py and test.py give "
                    f"it a split of its own.")
            SPLIT_DIR.mkdir(exist_ok=True)
            splits, folds = make_splits(names)
            for name, members in splits.items():
                (SPLIT_DIR / f"mit1003_{name}.txt").write_text("\n".join(members) + "\n")
                print(f"wrote {SPLIT_DIR / f'mit1003_{name}.txt'} ({len(members)} images)")
            path = SPLIT_DIR / f"mit1003_folds{N_FOLDS}.txt"
            path.write_text("".join(f"{name} {fold}\n" for name, fold in folds.items()))
            print(f"wrote {path} (1003 images, {N_FOLDS} folds)")
    except DatasetError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: run the command again to continue")


if __name__ == "__main__":
    main()
