"""Pack MIT1003's train and val images small, to copy them to a remote GPU machine quickly.

Writes an MIT-layout copy (about 31 MiB instead of 146 MB) that ``main.py --data-dir`` reads
like the original:

- train and val stimuli resized to 400x400 (the largest scale the model sees) as JPEG; the
  cache resizes the 250x250 and 150x150 scales from these;
- train fixation maps at 400x400 (all training needs), JPEG quality 85, and black
  placeholders for their point maps (training only checks that they decode);
- val fixation maps and points at their original size, so val scores use the exact fixations.

The test split is left out: score it on the original images. The val maps differ in size
from their 400x400 stimuli, which dataset.py notes once per image (``PYTHONWARNINGS=ignore``
silences it).

    python -m tools.pack_mit1003 --data-dir data/MIT1003 --output-dir data/MIT1003_packed
"""
import argparse
import shutil
from pathlib import Path

from PIL import Image

from dataset import (MAPS, SCALES, STIMULI, mit_layout_names, open_grey, open_rgb, read_split,
                     resize_map_uint8)


def pack(data_dir, output_dir, quality):
    """Write the packed copy of data_dir's train and val images; returns its size in bytes."""
    names, stimuli = mit_layout_names(data_dir)
    output_dir = Path(output_dir)
    shutil.rmtree(output_dir, ignore_errors=True)
    (output_dir / STIMULI).mkdir(parents=True)
    (output_dir / MAPS).mkdir()
    maps_dir = Path(data_dir) / MAPS
    for split in ("train", "val"):
        for name in read_split(split, names):
            image = open_rgb(stimuli[name]).resize((SCALES[0], SCALES[0]), Image.BILINEAR)
            image.save(output_dir / STIMULI / f"{name}.jpeg", quality=quality)
            if split == "val":
                for suffix in ("_fixMap.jpg", "_fixPts.jpg"):
                    shutil.copyfile(maps_dir / f"{name}{suffix}", output_dir / MAPS / f"{name}{suffix}")
                continue
            density = resize_map_uint8(open_grey(maps_dir / f"{name}_fixMap.jpg")).numpy()
            Image.fromarray(density).save(output_dir / MAPS / f"{name}_fixMap.jpg", quality=85)
            # training reads the points only to check they decode; a black 400x400 is enough
            Image.new("L", (SCALES[0], SCALES[0])).save(output_dir / MAPS / f"{name}_fixPts.jpg")
    return sum(p.stat().st_size for p in output_dir.rglob("*") if p.is_file())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default="data/MIT1003", help="original MIT1003")
    parser.add_argument("--output-dir", default="data/MIT1003_packed", help="where to write")
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality of the stimuli")
    args = parser.parse_args(argv)
    size = pack(args.data_dir, args.output_dir, args.quality)
    print(f"{args.output_dir}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
