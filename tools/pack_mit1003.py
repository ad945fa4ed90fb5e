"""Pack all of MIT1003 small, to copy it to a remote GPU machine quickly.

Writes an MIT-layout copy (about 27 MiB instead of 146 MB) that ``main.py --data-dir`` and
``test.py --data-dir`` read like the original, for the standard split and every
cross-validation fold:

- stimuli resized to 400x400 (the largest scale the model sees) as JPEG; the cache resizes
  the 250x250 and 150x150 scales from these;
- fixation maps at 400x400 (all that training draws locations from), JPEG quality 85;
- fixation points exactly, at their original size, stored losslessly (PNG data under the
  ``_fixPts.jpg`` name that the layout expects; PIL decodes by content), so that shuffled AUC
  (which chooses the epoch), AUC-Judd and NSS count the same fixations as on the original.

Scores on the copy are close to, not equal to, scores on the original: the network sees
JPEG-recompressed 400x400 stimuli, and CC, SIM and KL compare with a 400x400 fixation map
(RESULTS.md measures the difference). Report final figures from the original images.

    python -m tools.pack_mit1003 --data-dir data/MIT1003 --output-dir data/MIT1003_packed
"""
import argparse
import sys
from pathlib import Path

from PIL import Image

if not __package__:  # run as python tools/<name>.py: the project's modules are one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset import (MAPS, SCALES, STIMULI, DatasetError, mit_layout_names, open_grey,
                     open_rgb, resize_map_uint8)
from files import WriteError, write_atomically
from metrics import as_binary_map


def pack(data_dir, output_dir, quality):
    """Write the packed copy of every image of data_dir into the new folder output_dir;
    returns its size in bytes. DatasetError if output_dir exists (nothing is overwritten)."""
    names, stimuli = mit_layout_names(data_dir)
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True)
        (output_dir / STIMULI).mkdir()
        (output_dir / MAPS).mkdir()
    except FileExistsError:
        raise DatasetError(f"{output_dir} exists: remove it or choose another --output-dir")
    except OSError as error:
        raise DatasetError(f"cannot create {output_dir}: {error}")
    maps_dir = Path(data_dir) / MAPS
    for name in names:
        image = open_rgb(stimuli[name]).resize((SCALES[0], SCALES[0]), Image.BILINEAR)
        write_atomically(output_dir / STIMULI / f"{name}.jpeg",
                         lambda tmp: image.save(tmp, quality=quality))
        density = Image.fromarray(resize_map_uint8(open_grey(maps_dir / f"{name}_fixMap.jpg")
                                                   ).numpy())
        write_atomically(output_dir / MAPS / f"{name}_fixMap.jpg",
                         lambda tmp: density.save(tmp, quality=85))
        points = Image.fromarray(as_binary_map(open_grey(maps_dir / f"{name}_fixPts.jpg")).numpy())
        write_atomically(output_dir / MAPS / f"{name}_fixPts.jpg",
                         lambda tmp: points.save(tmp, format="PNG", optimize=True))
    return sum(p.stat().st_size for p in output_dir.rglob("*") if p.is_file())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default="data/MIT1003", help="original MIT1003")
    parser.add_argument("--output-dir", default="data/MIT1003_packed", help="where to write")
    parser.add_argument("--quality", type=int, default=70,
                        help="JPEG quality of the stimuli, 1..95")
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 95:
        parser.error(f"--quality must be in 1..95, not {args.quality}")
    try:
        size = pack(args.data_dir, args.output_dir, args.quality)
    except DatasetError as error:
        sys.exit(f"error: {error}")
    except WriteError as error:
        sys.exit(f"error: {error}. {args.output_dir} is incomplete: free some space, remove it "
                 f"and run again.")
    except KeyboardInterrupt:
        sys.exit(f"interrupted: {args.output_dir} is incomplete; remove it and run again")
    print(f"{args.output_dir}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
