"""Per-fold shuffled AUC under the MIT code and both BMS protocols, from kept evaluations.

    python -m tools.literature_table docs/cv_adam_run3/fold0 docs/cv_adam_run3/fold1

Reads each folder's metrics.json (written by ``test.py --split fold<K>/test``, or any scored
split) and prints one Markdown row per folder: the images, the chosen epoch, the model's raw sAUC
under the MIT benchmark's code, under the BMS 2014 and ICCV 2013 codes (no blur / best blur, s),
and how far each BMS figure with its best blur reads above the MIT code's. The last row is the
mean over the folders, weighted by their images: while not all ten folds are in, that is the
best estimate of how much of the distance to a 2015 paper's figure is the metric.
"""
import argparse
import json
import sys
from pathlib import Path

PROTOCOLS = ("bms2014", "bms2013")


def fold_row(folder):
    """A kept evaluation folder -> {'name', 'n', 'epoch', 'mit', 'bms2014': (s0, best, s),
    'bms2013': (...)} of its raw row; ValueError naming the folder where it lacks the block."""
    path = Path(folder) / "metrics.json"
    try:
        summary = json.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"cannot read {path} ({error.strerror}): pass folders written by "
                         f"test.py") from None
    literature = summary.get("literature_rows", {}).get("raw")
    if literature is None:
        raise ValueError(f"{path} holds no literature-protocol block for the raw row (scored "
                         f"before test.py kept it, or without the MIT layout)")
    row = {"name": Path(folder).name, "n": summary["n_images"], "epoch": summary.get("epoch"),
           "mit": summary["rows"]["raw"]["auc_shuffled"]["mean"]}
    for protocol in PROTOCOLS:
        block = literature[protocol]
        row[protocol] = (block["means"][0], block["best"], block["best_sigma"])
    return row


def markdown(rows):
    """Rows of ``fold_row`` -> the Markdown table (str), with the image-weighted mean last."""
    lines = ["| fold (images, epoch) | MIT code | BMS 2014: no blur / best (s) | BMS 2013: no "
             "blur / best (s) | best BMS 2014 / 2013 - MIT |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r['bms2014'][0]:.4f} / {r['bms2014'][1]:.4f} ({r['bms2014'][2]:g})",
                 f"{r['bms2013'][0]:.4f} / {r['bms2013'][1]:.4f} ({r['bms2013'][2]:g})",
                 f"+{r['bms2014'][1] - r['mit']:.4f} / +{r['bms2013'][1] - r['mit']:.4f}"]
        lines.append(f"| {r['name']} ({r['n']}, {r['epoch']}) | {r['mit']:.4f} | "
                     + " | ".join(cells) + " |")
    n = sum(r["n"] for r in rows)
    mean = lambda value: sum(value(r) * r["n"] for r in rows) / n
    lines.append(f"| mean of {len(rows)} ({n} images) | {mean(lambda r: r['mit']):.4f} | "
                 f"{mean(lambda r: r['bms2014'][0]):.4f} / {mean(lambda r: r['bms2014'][1]):.4f}"
                 f" | {mean(lambda r: r['bms2013'][0]):.4f} / "
                 f"{mean(lambda r: r['bms2013'][1]):.4f} | "
                 f"+{mean(lambda r: r['bms2014'][1] - r['mit']):.4f} / "
                 f"+{mean(lambda r: r['bms2013'][1] - r['mit']):.4f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="folders written by test.py")
    args = parser.parse_args(argv)
    try:
        rows = [fold_row(folder) for folder in args.folders]
    except ValueError as error:  # a JSON error is one too
        sys.exit(f"error: {error}")
    except KeyError as error:
        sys.exit(f"error: a metrics.json has no {error}: pass folders written by test.py")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
