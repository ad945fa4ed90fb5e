"""Write our MIT1003 split in the coursework's file format (train/val/test_data.pth.tar).

    python -m tools.export_coursework --data-dir data/MIT1003 --output-dir cw/
    python main.py --data-dir cw/ --epochs 1          # trains on the exported files

On the full MIT1003 it writes 3.9 GB: 24,090 fixed training crops, and val and test with each
full-size image as float32, as that format does.
"""
import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run as python tools/<name>.py: the project's modules are one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checkpoints import save_checkpoint
from files import WriteError, failure_cause
from dataset import (COURSEWORK_FILES, MAPS, SCALES, DatasetError, cut_crops, grid_locations,
                     load_mit, mit_layout_names, open_rgb, pad_images, sample_locations,
                     show_warnings_plainly)


def export_coursework(data_dir, output_dir, cache_dir=".cache", seed=0):
    """Write our MIT1003 split in the coursework's format (train/val/test_data.pth.tar).

    Training crops are one fixed draw of locations (seed ``seed``); val/test files hold the
    three resized images as float [3, S, S] in [0, 1], the full image, and the 50x50 grid's
    crop centres in 400x400 pixels. Also copies ALLFIXATIONMAPS beside them.
    """
    output_dir = Path(output_dir)  # made by the first write, once the data have been read
    there = [n for n in [*COURSEWORK_FILES.values(), MAPS] if (output_dir / n).exists()]
    if there:
        raise DatasetError(f"{output_dir} already holds {', '.join(there)}, which this export "
                           f"would replace. Pass a new --output-dir, or remove them first.")
    if output_dir.resolve() == Path(data_dir).resolve():
        raise DatasetError(f"--output-dir {output_dir} is the data dir: the coursework files "
                           f"would turn it into a coursework folder. Pass another folder.")
    stimuli = mit_layout_names(data_dir)[1]  # name -> its file, whatever its extension
    for split in ("train", "val", "test"):
        data = load_mit(data_dir, split, cache_dir)
        if split == "train":
            generator = torch.Generator().manual_seed(seed)
            image_index, rel, labels = sample_locations(data.maps, generator)
            crops = cut_crops([pad_images(s) for s in data.scales], image_index, rel)
            records = [{"X": crops[k], "y": int(labels[k]), "file": data.names[image_index[k]]}
                       for k in range(len(labels))]
        else:
            centres = torch.floor(grid_locations() * SCALES[0]).long()
            records = []
            for i, name in enumerate(data.names):
                image = open_rgb(stimuli[name])
                full = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
                record = {"X": full.float() / 255, "spatial_coords": centres, "y": -1,
                          "file": stimuli[name].name}
                for s, scale in zip(SCALES, data.scales):
                    record[f"X_{s}"] = scale[i].float() / 255
                records.append(record)
        save_checkpoint(records, output_dir / COURSEWORK_FILES[split])  # atomic
    shutil.copytree(Path(data_dir) / MAPS, output_dir / MAPS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default="data/MIT1003", help="MIT1003 folder")
    parser.add_argument("--output-dir", required=True, help="folder for the .pth.tar files")
    parser.add_argument("--cache-dir", default=".cache", help="resized-image cache")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training locations")
    args = parser.parse_args(argv)
    show_warnings_plainly()
    try:
        export_coursework(args.data_dir, args.output_dir, args.cache_dir, args.seed)
    except DatasetError as error:
        sys.exit(f"error: {error}")
    except WriteError as error:
        sys.exit(f"error: {error}. Pass a writable --output-dir with 4 GB free.")
    except OSError as error:  # copying the fixation maps
        cause = failure_cause(error, args.output_dir)
        sys.exit(f"error: cannot write to {args.output_dir} ({cause}). Pass a writable "
                 f"--output-dir with 4 GB free.")
    print(f"wrote {', '.join(COURSEWORK_FILES.values())} to {args.output_dir}")


if __name__ == "__main__":
    main()
