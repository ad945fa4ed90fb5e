"""Saliency maps of any model, read from folders: one file per image, found by the image's name.

A folder holds ``<name>.png``, ``.jpg``, ``.jpeg`` (any bit depth, grey or colour: colour is
read as grey), ``.npy`` (a 2-D float array) or ``<name>_saliency.png`` (what ``test.py
--images`` writes), at any size: metrics.as_submitted_map brings each to its image's size as
the MIT benchmark's code does (bicubic, antialiased). Files for other images are ignored.
"""
from pathlib import Path

import numpy as np

import dataset

MAP_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")
SALIENCY_SUFFIX = "_saliency.png"


class MapFolderError(Exception):
    """A folder or map file that cannot be scored: the message names it and says what to do."""


def image_name(path):
    """The image a map file belongs to (``a.png`` and ``a_saliency.png`` -> 'a'), or None for a
    file that is not a map."""
    if path.name.endswith(SALIENCY_SUFFIX):
        return path.name[:-len(SALIENCY_SUFFIX)]
    return path.stem if path.suffix.lower() in MAP_SUFFIXES else None


def find_maps(folder, names):
    """{name: map file} for the ``names`` that have a map in ``folder``; MapFolderError for a
    path that is not a folder, a folder without any map, or two maps for one image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MapFolderError(f"--maps {folder} is not a folder. Pass folders that hold one map "
                             f"per image.")
    found = {}
    for path in sorted(folder.iterdir()):
        name = image_name(path) if path.is_file() else None
        if name is not None:
            found.setdefault(name, []).append(path)
    if not found:
        raise MapFolderError(f"--maps {folder} holds no maps (<image name> with "
                             f"{', '.join(MAP_SUFFIXES)}, or <image name>{SALIENCY_SUFFIX}).")
    for name in names:
        if len(found.get(name, ())) > 1:
            raise MapFolderError(f"{folder} holds two maps for image {name}: "
                                 f"{found[name][0].name} and {found[name][1].name}. Remove one.")
    return {name: found[name][0] for name in names if name in found}


def read_map(path):
    """A map file -> [H, W] NumPy array (an 8- or 16-bit image keeps its integer type, which
    keeps 1003 full-size maps in memory; .npy as float32). MapFolderError naming the file if it
    cannot be read, is not 2-D, or holds NaN or infinite values."""
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
            if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
                raise ValueError(f"it holds {array.dtype} values, not real numbers")
            array = array.astype(np.float32)
        else:
            array = dataset.open_grey(path, dtype=None)
    except (OSError, ValueError, dataset.DatasetError) as error:
        reason = str(error).removeprefix(f"cannot read map {path}: ").split(". Replace")[0]
        raise MapFolderError(f"cannot read map {path} ({reason}). Replace or remove the file.")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2 or min(array.shape) < 1:
        raise MapFolderError(f"map {path} is of shape {list(array.shape)}, not a 2-D map. "
                             f"Save one [H, W] array per image.")
    if not np.isfinite(array).all():
        raise MapFolderError(f"map {path} holds NaN or infinite values. Replace them (e.g. "
                             f"with 0) or remove the file.")
    return array


def find_map_folders(folders, names, taken=()):
    """The map files of ``names`` in each folder -> ({row name: {image name: path}}, {row name:
    the names it lacks, in the order of ``names``}). A row is named by its folder, or by its
    path where two folders share a name or the name is ``taken`` (by another row of the table);
    MapFolderError as ``find_maps`` says."""
    counts, seen = {}, set()
    for folder in map(Path, folders):
        counts[folder.name] = counts.get(folder.name, 0) + 1
        if folder.resolve() in seen:
            raise MapFolderError(f"--maps names {folder} twice. Name each folder once.")
        seen.add(folder.resolve())
    rows, missing = {}, {}
    for folder in map(Path, folders):
        unique = counts[folder.name] == 1 and folder.name and folder.name not in taken
        row = folder.name if unique else str(folder)
        rows[row] = find_maps(folder, names)
        missing[row] = [name for name in names if name not in rows[row]]
    return rows, missing
