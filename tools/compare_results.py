"""Compare two evaluations image by image: the paired difference A - B of every metric.

A and B are output folders of test.py (``--output-dir``, single split or ``--folds``) that
scored the same images; each holds a per_image.csv. Pairing removes what the images share
(some are hard for every model), so the paired 95% confidence interval of the difference is
much narrower than the two CIs side by side. Compares the images both scored.

    python -m tools.compare_results results/cv_mrcnns results/cv_adam
    python -m tools.compare_results results/cv_mrcnns results/cv_adam --rerun results/cv_adam_2

Two runs of one recipe (same command, same seed) differ too. ``--rerun`` names a second run of
A's recipe on the same images: their difference of means is the rerun spread of each metric,
and a difference counts as a ranking only where it exceeds both that spread and its paired
interval; otherwise the verdict column says "level".
"""
import argparse
import math
import sys
from pathlib import Path

if not __package__:  # run as python tools/<name>.py: the project's modules are one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metrics import METRIC_NAMES, confidence_table, read_per_image


def read_row(folder, row):
    """test.py output folder -> {image name: {metric: float}} of ``row``; SystemExit if the
    folder has no per_image.csv or no line of that row."""
    path = Path(folder) / "per_image.csv"
    try:
        scores = read_per_image(path).get(row)
    except OSError as error:
        sys.exit(f"error: cannot read {path} ({error.strerror}). Pass a folder that test.py "
                 f"wrote (its --output-dir).")
    except ValueError as error:
        sys.exit(f"error: {path} is not a per_image.csv of test.py ({error}).")
    if not scores:
        sys.exit(f"error: {path} has no row {row!r}. Pass a --row it has (raw, blurred, ...).")
    return scores


def paired_differences(a, b):
    """Two {image: {metric: value}} -> (shared image names, {metric: {'a', 'b', 'difference'}}
    each a {'mean', 'std', 'ci95'}). Per metric, A, B and A - B are all taken over the same
    images: those both scored with a finite value (NaN: an image without fixations)."""
    names = sorted(set(a) & set(b))
    nan = float("nan")
    pairs = [{m: (a[n][m], b[n][m]) if math.isfinite(a[n][m] - b[n][m]) else (nan, nan)
              for m in METRIC_NAMES} for n in names]
    table = confidence_table({
        "a": [{m: pair[m][0] for m in pair} for pair in pairs],
        "b": [{m: pair[m][1] for m in pair} for pair in pairs],
        "difference": [{m: pair[m][0] - pair[m][1] for m in pair} for pair in pairs]})
    return names, {m: {side: table[side][m] for side in table} for m in METRIC_NAMES}


def verdict(difference, spread=None):
    """'A ahead', 'B ahead' or 'level' for a paired difference ({'mean', 'ci95'}): ahead only
    where the interval excludes zero and, given a rerun ``spread``, the mean exceeds it."""
    mean = difference["mean"]
    if not abs(mean) > difference["ci95"] or (spread is not None and not abs(mean) > spread):
        return "level"
    return "A ahead" if mean > 0 else "B ahead"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("a", help="test.py output folder A")
    parser.add_argument("b", help="test.py output folder B")
    parser.add_argument("--row", default="raw", help="which row of per_image.csv")
    parser.add_argument("--rerun", metavar="FOLDER", help="a second run of A's recipe scored "
                        "on the same images: the rerun spread each difference must exceed")
    args = parser.parse_args(argv)
    a, b = read_row(args.a, args.row), read_row(args.b, args.row)
    names, table = paired_differences(a, b)
    if not names:
        sys.exit(f"error: {args.a} and {args.b} scored no image in common: nothing to pair.")
    spread = {}
    if args.rerun:
        rerun = read_row(args.rerun, args.row)
        shared = [n for n in names if n in rerun]
        if not shared:
            sys.exit(f"error: --rerun {args.rerun} scored none of the images of A and B.")
        _, runs = paired_differences({n: a[n] for n in shared}, rerun)
        spread = {m: abs(runs[m]["difference"]["mean"]) for m in METRIC_NAMES}
        print(f"rerun spread: A's recipe run twice differs by the last column's amount "
              f"({len(shared)} images)")
    print(f"{len(names)} images in both ({len(a)} in A, {len(b)} in B), row {args.row}; "
          f"mean +- 95% CI")
    print(f"{'':16s}{'A':>17s}{'B':>17s}{'A - B (paired)':>19s}  verdict"
          + ("   rerun spread" if spread else ""))
    for m in METRIC_NAMES:
        cells = [f"{table[m][s]['mean']:>9.4f} +-{table[m][s]['ci95']:6.4f}" for s in "ab"]
        d = table[m]["difference"]
        print(f"{m:16s}{''.join(cells)}  {d['mean']:>+8.4f} +-{d['ci95']:6.4f}  "
              f"{verdict(d, spread.get(m)):8s}" + (f"  {spread[m]:.4f}" if spread else ""))
    return table, spread


if __name__ == "__main__":
    main()
