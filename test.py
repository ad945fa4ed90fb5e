"""Evaluate a trained Mr-CNN, or compute saliency maps for your own images.

    python test.py --data-dir data/MIT1003                      # shipped MrCNN, test split
    python test.py --checkpoint checkpoint/<run>/best.pth --split val --save-maps
    python test.py --checkpoint checkpoint/<run>/best.pth --tune-post-processing tuned.pth
    python test.py --images photo.jpg other.png --output-dir maps/
    python test.py --data-dir data/MIT1003 --folds checkpoint/cv_fold{0..9}/best.pth

Scores every image with the MIT benchmark's metrics (metrics.py) for the model (raw and,
when the checkpoint carries it, post-processed), a centre-bias baseline and a chance map;
writes OUT/per_image.csv, OUT/metrics.json and OUT/best_worst.png, and prints the table.
"""
import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dataset
import map_folders
import metrics
from checkpoints import (CheckpointError, held_out_fold, load_checkpoint, model_from_checkpoint,
                         protocol_name, save_checkpoint)
from cli import HelpFormatter
from devices import DEVICES, PRECISIONS, checked_worker_count, pick_device, pick_precision
from files import WriteError, write_atomically, write_text
from inference import MODES, centre_bias_map, post_process, predict_maps, saliency_grid

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoint" / "pretrained" / "MrCNN.pth"
RAW_MAPS = "raw_maps.npz"  # the raw grid maps of a scored split, beside its scores
BLUR_SIGMAS = (0.0, 0.02, 0.04, 0.06)
CENTRE_WEIGHTS = (0.0, 0.2, 0.4, 0.6)


class UsageError(Exception):
    """Bad input to test.py: the message says what, which file and what to do."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate Mr-CNN saliency maps.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint written by main.py (default: the "
                        "shipped MrCNN, checkpoint/pretrained/MrCNN.pth; with --maps: none)")
    parser.add_argument("--data-dir", default="data/MIT1003", help="MIT-layout folder")
    parser.add_argument("--split", default="test", help="MIT1003 split: train, val, test, "
                        "fold<K>/test (cross-validation fold K), or all: every image in "
                        "--data-dir")
    parser.add_argument("--folds", nargs="+", metavar="RUN",
                        help="cross-validation: the ten runs of main.py --fold 0..9, fold 0 "
                             "first, each its checkpoint (scores the images it held out) or "
                             "the folder that test.py --split fold<K>/test wrote for it (read "
                             "as scored); pooled over all")
    parser.add_argument("--maps", nargs="+", metavar="DIR",
                        help="score other models' maps: each folder one row of the table, one "
                             "map per image named <image>.png/.jpg/.jpeg/.npy or "
                             "<image>_saliency.png, any size (resized to the image as the MIT "
                             "benchmark's code does: bicubic, antialiased)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="with --maps: score the images that every folder has a map for")
    parser.add_argument("--images", nargs="+", default=None, metavar="IMAGE",
                        help="your own images, or folders of them: write maps and overlays, no "
                             "ground truth")
    parser.add_argument("--output-dir", default="results", help="where results are written")
    parser.add_argument("--inference", default="fcn", choices=MODES, help="dense inference")
    parser.add_argument("--grid-size", type=int, default=50, help="grid of scored locations")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="autocast precision of inference; auto: bf16 where the CPU or GPU "
                             "has it, else fp32")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="auto: cuda if available")
    parser.add_argument("--save-maps", action="store_true", help="write every map as a PNG")
    parser.add_argument("--tune-post-processing", metavar="PATH",
                        help="tune blur and centre blend on the val split, write the checkpoint "
                             "with them to PATH (a new file), then evaluate with them")
    parser.add_argument("--cache-dir", default=".cache", help="resized-image cache")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random AUC splits")
    parser.add_argument("-j", "--worker-count", type=int, default=None,
                        help="processes that decode images and score maps (default: all cores)")
    return parser.parse_args(argv)


def load_model(path, device):
    """A checkpoint file -> (its dict, its model in eval mode on ``device``)."""
    state = load_checkpoint(path)
    model = model_from_checkpoint(state, path).to(device).eval()
    return state, model


def ensure_output_dir(path, flag="--output-dir"):
    """Create folder ``path`` if needed and check that it can be written; UsageError if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        reason = ("a file stands where a folder is needed"
                  if isinstance(error, (FileExistsError, NotADirectoryError)) else error.strerror)
        raise UsageError(f"cannot write to {'output dir' if flag == '--output-dir' else 'folder'}"
                         f" {path} ({reason}). Pass a writable {flag}.")
    return path


def load_split(args):
    if dataset.is_coursework_dir(args.data_dir) and args.split in ("val", "test"):
        return dataset.load_coursework(args.data_dir, args.split)
    return dataset.load_mit(args.data_dir, args.split, args.cache_dir, args.worker_count,
                            ground_truth=True)


def tune_post_processing(state, model, args, precision):
    """Grid-search blur sigma and centre weight for mean AUC-Judd on the split that the run
    behind ``state`` validated on: val, or fold K+1 for a --fold K run."""
    fold = held_out_fold(state)
    val = dataset.load_mit(args.data_dir, "val" if fold is None else f"fold{fold}/val",
                           args.cache_dir, args.worker_count)
    maps = predict_maps(model, val, args.inference, precision, args.grid_size)
    best = (-1.0, 0.0, 0.0)
    for sigma in BLUR_SIGMAS:
        for weight in CENTRE_WEIGHTS:
            score = float(np.nanmean([metrics.auc_judd(post_process(m, sigma, weight),
                                                       val.fixations[i])
                                      for i, m in enumerate(maps)]))
            print(f"  blur {sigma:.2f} centre {weight:.1f}: val AUC-Judd {score:.4f}")
            best = max(best, (score, sigma, weight))
    return {"blur_sigma": best[1], "centre_weight": best[2], "val_auc_judd": best[0]}


SHORT_NAMES = {"auc_judd": "AUC-Judd", "auc_shuffled": "sAUC", "auc_borji": "AUC-Borji",
               "nss": "NSS", "cc": "CC", "similarity": "SIM", "kl_divergence": "KL",
               "coursework_auc": "cw-AUC"}
SUMMARY_METRICS = ("auc_shuffled", "auc_judd", "nss", "cc")  # the cross-validation table's


def print_table(table, n_images, no_fixation=()):
    """The table of ``table`` (metrics.confidence_table) over ``n_images`` images, of which
    ``no_fixation`` (names) have no fixation and count in no mean of a fixation metric."""
    short = SHORT_NAMES
    print(f"\n{n_images} images, mean +- 95% CI" if n_images > 1 else
          f"\n{n_images} image: no 95% CI, and no sAUC (its negatives are other images' "
          f"fixations)")
    if no_fixation:
        print(f"{fixation_metrics()} over {n_images - len(no_fixation)}: "
              f"{dataset.shown_names(no_fixation)} "
              f"{'has' if len(no_fixation) == 1 else 'have'} no fixation")
    print(f"{'':16s}" + "".join(f"{short[m]:>17s}" for m in metrics.METRIC_NAMES))
    for row, values in table.items():
        cells = "".join(f"{values[m]['mean']:>9.4f} +-{values[m]['ci95']:6.4f}"
                        for m in metrics.METRIC_NAMES)
        print(f"{row:16s}{cells}")


LITERATURE_ROWS = ("raw", "centre_bias")  # the rows scored under the BMS protocols too
TABLE_ROWS = ("raw", "blurred", "post_processed", "centre_bias", "chance")
PROTOCOL_LABELS = {"bms2014": "BMS code, 2014", "bms2013": "BMS code, ICCV 2013"}


def literature(args, rows, fixations, scored=LITERATURE_ROWS):
    """Shuffled AUC of the rows ``scored`` of ``rows`` ({row: maps}) under the BMS protocols
    (metrics.bms_shuffled_auc), whose shuffle map holds every image of --data-dir: {'size',
    'shuffle_images', 'rows': {row: metrics.bms_summary}}, or None for data that is not in the
    MIT layout (said so)."""
    if dataset.is_coursework_dir(args.data_dir):
        print("note: no literature-protocol block: it needs the MIT layout's fixation points")
        return None
    shuffle, n_images = dataset.shuffle_map(args.data_dir, args.cache_dir, args.worker_count)
    scored = [row for row in scored if row in rows]
    print(f"scoring {len(fixations)} images x {len(scored)} rows with the BMS protocols",
          flush=True)
    with warnings.catch_warnings():  # images without a fixation: named with the table
        warnings.filterwarnings("ignore", ".*the fixation map has no fixations")
        return {"size": list(shuffle.shape), "shuffle_images": n_images, "rows": {
            row: metrics.bms_summary(metrics.bms_dataset_scores(
                rows[row], fixations, shuffle, seed=args.seed, workers=args.worker_count))
            for row in scored}}


def print_literature(block, data_dir):
    height, width = block["size"]
    print(f"\nshuffled AUC as the 2013-2016 papers scored it (Zhang & Sclaroff's BMS code): maps "
          f"compared at {width}x{height}\n(the most common image size) against the fixations of "
          f"the {block['shuffle_images']} images of {data_dir}; 'best' is the blur s\n(a "
          f"fraction of the image size) chosen on these same images, as the papers did")
    print(f"{'':16s}" + "".join(f"{PROTOCOL_LABELS[p]:>30s}" for p in metrics.BMS_PROTOCOLS))
    print(f"{'':16s}" + f"{'s = 0':>15s}{'best':>8s}{'(s)':>6s} " * len(metrics.BMS_PROTOCOLS))
    for row, summary in block["rows"].items():
        print(f"{row:16s}" + "".join(
            f"{summary[p]['means'][0]:>15.4f}{summary[p]['best']:>8.4f} "
            f"({summary[p]['best_sigma']:.2f})" for p in metrics.BMS_PROTOCOLS))


def save_raw_maps(path, names, maps):
    """Keep a run's raw grid maps small: ``names`` and maps (each [G, G] in [0, 1]) -> one
    compressed .npz of 'names' and float16 'maps' [N, G, G]."""
    kept = np.stack([np.asarray(torch.as_tensor(m).float().cpu(), dtype=np.float16) for m in maps])
    write_atomically(path, lambda tmp: np.savez_compressed(tmp, names=np.array(names, dtype=str),
                                                           maps=kept))


def load_raw_maps(path):
    """A file written by ``save_raw_maps`` -> (names, float32 maps [N, G, G]); OSError or
    ValueError where it is not one."""
    with np.load(path, allow_pickle=False) as kept:
        names, maps = [str(n) for n in kept["names"]], kept["maps"].astype(np.float32)
    if maps.ndim != 3 or len(maps) != len(names) or not np.isfinite(maps).all():
        raise ValueError(f"{path} does not hold one finite [G, G] map per name")
    return names, maps


def save_png(array, path):
    """float [H, W] in [0, 1] -> 8-bit grey PNG."""
    picture = Image.fromarray((np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8))
    write_atomically(path, picture.save)


def full_size(grid_map, post, height, width):
    """A model's grid map -> float [H, W] in [0, 1] at the image size (post-processed if given)."""
    x = post_process(grid_map, post["blur_sigma"], post["centre_weight"]) if post else grid_map
    return metrics.as_submitted_map(x, (height, width)).cpu().numpy()


def overlay(image, saliency):
    """RGB uint8 [H, W, 3] and a map [H, W] in [0, 1] -> uint8 heat-map overlay."""
    import matplotlib
    colours = matplotlib.colormaps["jet"](saliency)[..., :3]
    return (0.5 * image / 255.0 + 0.5 * colours).clip(0, 1)


def write_figure(data, maps, scores, path, source_images, row="raw"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    judd = np.array([r["auc_judd"] for r in scores])
    order = np.argsort(np.nan_to_num(judd, nan=-1))
    picks = list(order[::-1][:3]) + list(order[:3])
    fig, axes = plt.subplots(len(picks), 4, figsize=(13, 2.6 * len(picks)))
    for row, i in enumerate(picks):
        image = source_images(i)
        fixations, density = data.ground_truth(i)
        pred = full_size(maps[i], None, *fixations.shape)  # the image's size, as scored
        ys, xs = np.nonzero(fixations)
        panels = [(image, dataset.printable(data.names[i])), (density, "ground truth + fixations"),
                  (pred, f"prediction (AUC-Judd {judd[i]:.3f})"), (overlay(image, pred), "overlay")]
        for col, (picture, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            if col == 1:
                ax.scatter(xs, ys, s=3, c="red")
            ax.set_title(title[:40], fontsize=8)
            ax.axis("off")
    fig.suptitle(f"best (top 3) and worst (bottom 3) images by AUC-Judd of the {row} maps")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the title
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=80))
    plt.close(fig)


def model_rows(args, state, model, precision, data):
    """The model's dense maps of every image of ``data``: {'raw': maps} plus 'blurred' and
    'post_processed' when the checkpoint carries post-processing (each a list of [G, G])."""
    post = state.get("post_processing")
    maps = predict_maps(model, data, args.inference, precision, args.grid_size, progress=True)
    rows = {"raw": maps}
    if post:  # the blur alone, then with the centre blend: the blend costs sAUC
        rows["blurred"] = [post_process(m, post["blur_sigma"]) for m in maps]
        rows["post_processed"] = [post_process(m, post["blur_sigma"], post["centre_weight"])
                                  for m in maps]
    return rows


def baseline_rows(args, n_images):
    """The centre-bias and chance rows for ``n_images`` images (chance seeded by --seed)."""
    rng = np.random.default_rng(args.seed)
    return {"centre_bias": [centre_bias_map()] * n_images,
            "chance": [torch.from_numpy(rng.random((args.grid_size, args.grid_size)))
                       for _ in range(n_images)]}


def score_rows(args, rows, data):
    """Every metric of every image of ``data`` for each row ({row: maps}) -> {row: per-image
    metric dicts}. Images without a fixation are named once (their metrics are NaN)."""
    print(f"scoring {len(data)} image{'s' * (len(data) != 1)} x {len(rows)} rows with "
          f"{len(metrics.METRIC_NAMES)} metrics", flush=True)
    empty = [name for name, points in zip(data.names, data.fixations)
             if points is not None and not points.any()]
    if empty:
        warnings.warn(f"{len(empty)} of the {len(data)} images have no fixation (an empty "
                      f"_fixPts map): {dataset.shown_names(empty)}. {fixation_metrics()} are "
                      f"undefined there: their means are over the other "
                      f"{len(data) - len(empty)}.")
    with warnings.catch_warnings():  # said above, once, with the names
        warnings.filterwarnings("ignore", ".*the fixation map has no fixations")
        return metrics.evaluate_dataset(rows, data.fixations, data.densities, seed=args.seed,
                                        workers=args.worker_count)[1]


def fixation_metrics():
    """'AUC-Judd, sAUC, AUC-Borji and NSS': the metrics that need fixation points."""
    labels = [SHORT_NAMES[m] for m in metrics.FIXATION_METRICS]
    return ", ".join(labels[:-1]) + " and " + labels[-1]


def images_without_fixations(names, scores):
    """The names of the images on which no row ({row: per-image dicts}) has an AUC-Judd: those
    without a fixation."""
    return [name for i, name in enumerate(names)
            if not any(math.isfinite(per_image[i]["auc_judd"]) for per_image in scores.values())]


def score_split(args, state, model, precision, data):
    """The model's rows and the baselines of every image of ``data``, scored. Returns ({row:
    maps}, {row: per-image dicts}, default row)."""
    rows = model_rows(args, state, model, precision, data) | baseline_rows(args, len(data))
    return rows, score_rows(args, rows, data), (
        "post_processed" if state.get("post_processing") else "raw")


def strict_json(value):
    """``value`` with every NaN or infinite float (a metric undefined on the images) replaced by
    None, so that json.dumps writes null: NaN is not JSON, and strict readers refuse it."""
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_results(output_dir, names, scores, summary, default_row, literature_block=None,
                  data_dir=None):
    """metrics.json (``summary``, the default row's means, and mean / std / 95% CI of every row;
    null where undefined; the BMS protocols' ``literature_block`` as 'literature', the raw
    row's, and 'literature_rows', every row's) and per_image.csv; prints the table and the
    block. Returns the table."""
    table = metrics.confidence_table(scores)
    no_fixation = images_without_fixations(names, scores)
    summary = {**summary, "n_images": len(names), "without_fixations": no_fixation,
               "default_row": default_row,
               **{m: table[default_row][m]["mean"] for m in metrics.METRIC_NAMES}, "rows": table}
    if literature_block is not None:
        first = next(iter(literature_block["rows"].values()))
        summary |= {"literature": {**first, "size": literature_block["size"],
                                   "shuffle_images": literature_block["shuffle_images"]},
                    "literature_rows": literature_block["rows"]}
    write_text(output_dir / "metrics.json", json.dumps(strict_json(summary), indent=2,
                                                       allow_nan=False))
    metrics.write_per_image(output_dir / "per_image.csv", names, scores)
    print_table(table, len(names), no_fixation)
    if literature_block is not None:
        print_literature(literature_block, data_dir)
    return table


def flattery_warning(split, names):
    """The warning for scoring ``split`` of images ``names`` when it holds MIT1003's training
    images (a model trained on MIT1003 learnt from them), else None."""
    if split == "all" and set(dataset.read_split("train")) <= set(names):
        return ("--split all holds MIT1003's training images, which a model trained on MIT1003 "
                "learnt from (the shipped ones: splits/mit1003_train.txt; a --fold K run: all "
                "folds but K), so its scores there flatter it. For a fair figure use --split "
                "test, or fold<K>/test for a fold run.")
    return None


def source_images(data_dir, data):
    """i -> the stimulus of image i of ``data`` at its ground truth's size (where scores and the
    figure compare), read from ``data_dir``, else from the cached 400x400 copy."""
    stimuli = Path(data_dir) / dataset.STIMULI

    def source_image(i):
        h, w = data.fixations[i].shape
        matches = sorted(p for p in stimuli.glob(f"{data.names[i]}.*")
                         if p.suffix.lower() in dataset.IMAGE_SUFFIXES)
        image = (dataset.open_rgb(matches[0]) if matches else
                 Image.fromarray(data.scales[0][i].permute(1, 2, 0).numpy()))
        return np.asarray(image if image.size == (w, h) else image.resize((w, h)))
    return source_image


def evaluate_maps(args, device, precision):
    """--maps: each folder's maps of the split as a row of the table, beside the centre bias and
    chance (and the model's rows where --checkpoint is given); everything is checked before
    the output folder is touched."""
    state = model = None
    if args.checkpoint:
        state, model = load_model(args.checkpoint, device)
        refuse_flattering_split(args, state)
    data = load_split(args) if model else dataset.load_ground_truth(
        args.data_dir, args.split, args.worker_count)
    files, missing = map_folders.find_map_folders(args.maps, data.names, TABLE_ROWS)
    lacking = next(((row, names) for row, names in missing.items() if names), None)
    missing_somewhere = {name for names in missing.values() for name in names}
    left_out = sorted(missing_somewhere)
    if lacking and not args.skip_missing:
        row, names = lacking
        raise UsageError(f"{len(names)} of the {len(data)} images of --split {args.split} have no "
                         f"map in {args.maps[list(files).index(row)]}, e.g. "
                         f"{', '.join(names[:3])}. Add them, or pass --skip-missing to score "
                         f"the others.")
    if left_out:
        kept = [i for i, name in enumerate(data.names) if name not in missing_somewhere]
        if not kept:
            raise UsageError(f"no image of --split {args.split} has a map in every folder of "
                             f"--maps. Check the folders' file names (<image name>.png, ...).")
        data = data.subset(kept)
        print(f"--skip-missing: {len(left_out)} image{'s' * (len(left_out) > 1)} without a "
              f"map in every folder left out, e.g. {', '.join(left_out[:3])}; {len(data)} "
              f"scored", flush=True)
    rows = {row: [map_folders.read_map(paths[name]) for name in data.names]
            for row, paths in files.items()}
    print(f"maps of {', '.join(files)}" + (f" and {args.checkpoint} ({state['model']}) on "
          f"{device}, {precision}" if model else "") + f": split {args.split} of "
          f"{args.data_dir}", flush=True)
    if model is not None:
        rows = model_rows(args, state, model, precision, data) | rows
    output_dir = ensure_output_dir(args.output_dir)
    rows |= baseline_rows(args, len(data))
    scores = score_rows(args, rows, data)
    first = next(iter(files))
    block = literature(args, rows, data.fixations, [*files, *(["raw"] if model else []),
                                                   "centre_bias"]) if len(data) > 1 else None
    write_results(output_dir, data.names, scores, {
        "maps": {row: str(folder) for row, folder in zip(files, args.maps)},
        "checkpoint": args.checkpoint, "split": args.split, "seed": args.seed,
        "skipped": {"count": len(left_out), "names": left_out}}, first, block, args.data_dir)
    write_figure(data, rows[first], scores[first], output_dir / "best_worst.png",
                 source_images(args.data_dir, data), first)
    print(f"\nwrote {output_dir / 'metrics.json'}, {output_dir / 'per_image.csv'} and "
          f"{output_dir / 'best_worst.png'} (of {first})")


def evaluate(args, state, model, precision, output_dir):
    data = load_split(args)
    if (warning := flattery_warning(args.split, data.names)) is not None:
        warnings.warn(warning)
    rows, scores, default_row = score_split(args, state, model, precision, data)
    post = state.get("post_processing")
    block = literature(args, rows, data.fixations) if len(data) > 1 else None
    write_results(output_dir, data.names, scores, {
        "checkpoint": str(args.checkpoint), "epoch": state.get("epoch"), "split": args.split,
        "inference": args.inference, "seed": args.seed, "post_processing": post}, default_row,
        block, args.data_dir)
    save_raw_maps(output_dir / RAW_MAPS, data.names, rows["raw"])
    write_figure(data, rows[default_row], scores[default_row], output_dir / "best_worst.png",
                 source_images(args.data_dir, data), default_row)
    if args.save_maps:
        (output_dir / "maps").mkdir(exist_ok=True)
        for i, name in enumerate(data.names):
            save_png(full_size(rows["raw"][i], post, *data.fixations[i].shape),
                     output_dir / "maps" / f"{name}.png")
        print(f"wrote the {default_row} row's maps to {output_dir / 'maps'} (8-bit PNG at each "
              f"image's size; test.py --maps {output_dir / 'maps'} scores them again)")
    print(f"\nwrote {output_dir / 'metrics.json'}, {output_dir / 'per_image.csv'}, "
          f"{output_dir / RAW_MAPS} (the raw maps, for scoring again) and "
          f"{output_dir / 'best_worst.png'}")


def read_fold_results(folder, k, args):
    """A folder that ``test.py --split fold<k>/test`` wrote -> (its metrics.json summary, its
    image names, {row: per-image metric dicts}, its raw maps [N, G, G] or None where it keeps
    none); UsageError where it is not fold k's held-out images scored as ``args`` would score
    them."""
    folder = Path(folder)
    redo = (f"Pass the folder that test.py --split fold{k}/test --output-dir wrote for fold "
            f"{k}'s run, or that run's checkpoint.")
    try:
        summary = json.loads((folder / "metrics.json").read_text())
        if not isinstance(summary, dict):
            raise ValueError("metrics.json is not an object")
        scores = metrics.read_per_image(folder / "per_image.csv")
    except OSError as error:
        raise UsageError(f"cannot read the scores in {folder} ({error.strerror}: "
                         f"{error.filename}). {redo}")
    except ValueError as error:
        raise UsageError(f"{folder} does not hold test.py's scores ({error}). {redo}")
    if summary.get("split") != f"fold{k}/test":
        raise UsageError(f"{folder} holds scores of --split {summary.get('split')}, not "
                         f"fold{k}/test. {redo}")
    for key, flag in (("inference", "--inference"), ("seed", "--seed")):
        if summary.get(key) != getattr(args, key):
            raise UsageError(f"{folder} was scored with {flag} {summary.get(key)}, not "
                             f"{getattr(args, key)}: pass {flag} {summary.get(key)} to pool it "
                             f"as it is, or score it again.")
    names = list(scores.get(summary.get("default_row"), {}))
    if sorted(names) != dataset.read_split(f"fold{k}/test") or \
            any(list(per_image) != names for per_image in scores.values()):
        raise UsageError(f"{folder}/per_image.csv does not score each image of fold {k} "
                         f"(splits/mit1003_folds{dataset.N_FOLDS}.txt) once in every row. {redo}")
    maps = None
    if (folder / RAW_MAPS).exists():
        try:
            map_names, maps = load_raw_maps(folder / RAW_MAPS)
        except (OSError, ValueError, KeyError) as error:
            raise UsageError(f"cannot read the raw maps {folder / RAW_MAPS} ({error}). {redo}")
        if map_names != names:
            raise UsageError(f"{folder / RAW_MAPS} holds the maps of other images than "
                             f"{folder}/per_image.csv scores. {redo}")
    return (summary, names, {row: list(per_image.values()) for row, per_image in scores.items()},
            maps)


def cross_validate(args, device, precision, output_dir):
    """Score ten fold runs (``--folds``, fold 0 first): every image by the model that held it
    out, each fold exactly as ``--split fold<K>/test`` scores it; metrics pooled over all
    images, plus a per-fold table. Writes metrics.json and per_image.csv. A run given as the
    folder that ``--split fold<K>/test`` wrote is read, not scored again."""
    if len(args.folds) != dataset.N_FOLDS:
        raise UsageError(f"--folds takes the {dataset.N_FOLDS} fold runs (checkpoints or "
                         f"their fold<K>/test scores), fold 0 first (got {len(args.folds)})")
    read_scores = {}  # fold -> (summary, names, scores) of a run given as its scores' folder
    for k, path in enumerate(args.folds):  # all checked before minutes of scoring
        if Path(path).is_dir():
            read_scores[k] = read_fold_results(path, k, args)
            tuned = "post_processed" in read_scores[k][2]
        else:  # read again when scored: ten checkpoints at once would take 0.5 GB
            state = load_checkpoint(path)
            if held_out_fold(state) != k:
                raise UsageError(f"{path} was not trained with --fold {k} (it comes from a run "
                                 f"on {protocol_name(held_out_fold(state))}). Pass the runs in "
                                 f"fold order 0..{dataset.N_FOLDS - 1}.")
            tuned = bool(state.get("post_processing"))
        if k == 0:
            fold0_tuned = tuned
        elif tuned != fold0_tuned:
            raise UsageError(f"{path} {'has' if tuned else 'lacks'} post-processing, unlike "
                             f"fold 0: tune all folds or none")
    names, pooled, per_fold, raw_maps, without_maps = [], {}, [], [], []
    for k, path in enumerate(args.folds):
        read = k in read_scores
        if read:
            summary, fold_names, scores, maps = read_scores[k]
            default_row, checkpoint, epoch = (summary["default_row"], summary.get("checkpoint"),
                                              summary.get("epoch"))
        else:
            state, model = load_model(path, device)
            data = dataset.load_mit(args.data_dir, f"fold{k}/test", args.cache_dir,
                                    args.worker_count, ground_truth=True)
            rows, scores, default_row = score_split(args, state, model, precision, data)
            fold_names, checkpoint, epoch = data.names, str(path), state.get("epoch")
            maps = rows["raw"]
        names += fold_names
        if maps is None:
            without_maps.append(str(k))
        else:
            raw_maps.extend(maps)
        for row, values in scores.items():
            pooled.setdefault(row, []).extend(values)
        means = metrics.confidence_table({default_row: scores[default_row]})[default_row]
        per_fold.append({"fold": k, "checkpoint": checkpoint, "n_images": len(fold_names),
                         "epoch": epoch, **({"scores": str(path)} if read else {}),
                         **{m: means[m]["mean"] for m in metrics.METRIC_NAMES}})
        print(f"fold {k}: {len(fold_names)} images, sAUC {means['auc_shuffled']['mean']:.4f}, "
              f"AUC-Judd {means['auc_judd']['mean']:.4f} ({path})", flush=True)
    block = None
    if without_maps:
        print(f"note: no literature-protocol block: {RAW_MAPS} is missing in the folder"
              f"{'s' * (len(without_maps) > 1)} of fold {', '.join(without_maps)} (scored "
              f"before maps were kept, or copied without them)")
    elif not Path(args.data_dir, dataset.STIMULI).is_dir():
        print(f"note: no literature-protocol block: it reads the fixations in --data-dir "
              f"({args.data_dir} is not the MIT1003 folder)")
    else:
        fixations = [dataset.read_fixation_points(args.data_dir, name) for name in names]
        block = literature(args, {"raw": raw_maps, "centre_bias": [centre_bias_map()] * len(
            names)}, fixations)
    try:  # the images that chose the recipes' settings
        val = set(dataset.read_split("val"))
    except (OSError, dataset.DatasetError):
        val = set()
    blind = [i for i, name in enumerate(names) if name not in val]
    blind_table = metrics.confidence_table({default_row: [pooled[default_row][i]
                                                          for i in blind]})[default_row]
    write_results(output_dir, names, pooled, {
        "protocol": f"{dataset.N_FOLDS}-fold cross-validation", "split": "all folds",
        "inference": args.inference, "seed": args.seed, "folds": per_fold,
        "without_val_split": {"n_images": len(blind), **blind_table}}, default_row,
        block, args.data_dir)
    if len(blind) < len(names):
        print(f"\n{default_row}, without the {len(names) - len(blind)} images of the 803/100/100 "
              f"split's val set (fold 8), on which the recipes' settings were chosen: "
              + ", ".join(f"{SHORT_NAMES[m]} {blind_table[m]['mean']:.4f} +- "
                          f"{blind_table[m]['ci95']:.4f}" for m in SUMMARY_METRICS))
    if not without_maps:
        save_raw_maps(output_dir / RAW_MAPS, names, raw_maps)
    print(f"\nwrote {output_dir / 'metrics.json'} and {output_dir / 'per_image.csv'}"
          f"{'' if without_maps else ' and ' + str(output_dir / RAW_MAPS)}")


OUTPUT_SUFFIXES = ("_saliency.png", "_overlay.png")


def image_files(paths, output_dir):
    """--images arguments (files, or folders whose image files are all taken, sorted, but for
    maps an earlier run wrote there) -> list of Paths; raises UsageError for a missing path, a
    folder without images, two images whose outputs would share a name, or an output in
    ``output_dir`` that would overwrite one of the images."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in dataset.IMAGE_SUFFIXES
                           and not p.name.endswith(OUTPUT_SUFFIXES))
            if not found:
                raise UsageError(f"folder {path} holds no images "
                                 f"({'/'.join(dataset.IMAGE_SUFFIXES)}). Check the path.")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"image {path} does not exist. Check the path.")
    by_stem = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(str(path))
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:
        raise UsageError(f"{' and '.join(clashes[0])} would write the same output files "
                         f"({Path(clashes[0][0]).stem}_saliency.png). Rename one or run them "
                         f"with different --output-dir.")
    if Path(output_dir).resolve().name in (dataset.STIMULI, dataset.MAPS):
        raise UsageError(f"--output-dir {output_dir} is a dataset's {Path(output_dir).name} "
                         f"folder: maps written there would break the dataset. Pass another "
                         f"--output-dir.")
    inputs = {p.resolve() for p in files}
    for path in files:
        for suffix in OUTPUT_SUFFIXES:
            if (Path(output_dir) / f"{path.stem}{suffix}").resolve() in inputs:
                raise UsageError(f"the map of {path} would overwrite the input "
                                 f"{Path(output_dir) / f'{path.stem}{suffix}'}. Pass another "
                                 f"--output-dir.")
    return files


def own_images(args, files, state, model, precision, output_dir):
    """Write <stem>_saliency.png and <stem>_overlay.png for every file (``image_files``); an image
    that cannot be read is reported and skipped, and the run then ends with an error that
    names every such file (the other maps are written)."""
    post = state.get("post_processing")
    unreadable = []
    for path in files:
        try:
            image = dataset.open_rgb(path)
        except dataset.DatasetError as error:
            if len(files) == 1:
                raise UsageError(str(error))
            print(f"skipped: {error}", file=sys.stderr)
            unreadable.append(path.name)
            continue
        scales = [dataset.resize_rgb(image, s)[None] for s in dataset.SCALES]
        grid = saliency_grid(model, scales, args.inference, args.grid_size, precision=precision)[0]
        saliency = full_size(grid, post, image.height, image.width)
        saliency_png, overlay_png = (output_dir / f"{path.stem}{s}" for s in OUTPUT_SUFFIXES)
        save_png(saliency, saliency_png)
        picture = overlay(np.asarray(image, dtype=np.float64), saliency)
        write_atomically(overlay_png, Image.fromarray((picture * 255 + 0.5).astype(np.uint8)).save)
        print(f"wrote {saliency_png} and {overlay_png.name}")
    if unreadable:
        raise UsageError(f"{len(unreadable)} of the {len(files)} images could not be read "
                         f"({', '.join(unreadable)}; see above), the other maps were written. "
                         f"Replace or remove the unreadable files.")


def fold_of_split(split):
    """K for --split fold<K>/test, else None."""
    digits = split[4:-5]
    return (int(digits) if split.startswith("fold") and split.endswith("/test")
            and digits.isascii() and digits.isdigit() else None)


def refuse_flattering_split(args, state):
    """UsageError where the run behind checkpoint ``state`` trained on images of --split."""
    if args.split not in ("train", "all") and held_out_fold(state) != fold_of_split(args.split):
        raise UsageError(f"{args.checkpoint} comes from a run on "
                         f"{protocol_name(held_out_fold(state))}, which trained on images of "
                         f"--split {args.split}: its scores there would flatter it. Score a "
                         f"--fold K run on fold<K>/test (or all ten with --folds), any other "
                         f"on val or test.")


def main(argv=None):
    args = parse_args(argv)
    dataset.show_warnings_plainly()
    try:
        device = pick_device(args.device)
        for flag, value, low in (("--grid-size", args.grid_size, 1), ("--seed", args.seed, 0),
                                 ("-j", args.worker_count or 1, 1)):
            if value < low:
                raise UsageError(f"{flag} must be at least {low} (got {value})")
        checked_worker_count(args.worker_count or 1)
        if args.grid_size > dataset.SCALES[0]:
            raise UsageError(f"--grid-size must be at most {dataset.SCALES[0]}, one location per "
                             f"pixel of the {dataset.SCALES[0]}x{dataset.SCALES[0]} copy (got "
                             f"{args.grid_size})")
        split_fold = fold_of_split(args.split)
        if args.split not in ("train", "val", "test", "all") and \
                (split_fold is None or split_fold >= dataset.N_FOLDS):
            raise UsageError(f"unknown --split {args.split!r}: choose train, val, test, all or "
                             f"fold<K>/test with K in 0..{dataset.N_FOLDS - 1}")
        tuned = args.tune_post_processing
        evaluated = Path(args.checkpoint or DEFAULT_CHECKPOINT)
        if tuned and Path(tuned).resolve() == evaluated.resolve():
            raise UsageError(f"--tune-post-processing {tuned} would overwrite the checkpoint "
                             f"it evaluates; name a new file.")
        if tuned and Path(tuned).exists():
            raise UsageError(f"--tune-post-processing {tuned} exists, and it writes a new file: "
                             f"name one that does not exist, or remove {tuned} first.")
        if tuned:
            ensure_output_dir(Path(tuned).parent, "--tune-post-processing")
        precision = pick_precision(args.precision, device)
        if args.folds:
            if args.images or tuned:
                raise UsageError("--folds scores fold runs: it takes no --images or "
                                 "--tune-post-processing")
            cross_validate(args, device, precision, ensure_output_dir(args.output_dir))
            return 0
        if args.maps:
            if args.images or tuned:
                raise UsageError("--maps scores folders of maps: it takes no --images or "
                                 "--tune-post-processing")
            evaluate_maps(args, device, precision)
            return 0
        args.checkpoint = args.checkpoint or str(DEFAULT_CHECKPOINT)
        state, model = load_model(args.checkpoint, device)
        files = image_files(args.images, args.output_dir) if args.images else None
        if not files:
            refuse_flattering_split(args, state)
        if not files and not dataset.is_coursework_dir(args.data_dir):
            dataset.mit_layout_names(args.data_dir)  # a missing folder: said before the header
        output_dir = ensure_output_dir(args.output_dir)
        scored = (f"{len(files)} image{'s' * (len(files) > 1)}" if files
                  else f"split {args.split} of {args.data_dir}")
        print(f"{args.checkpoint} ({state['model']}) on {device}, {precision}: {scored}",
              flush=True)
        if tuned:
            state["post_processing"] = tune_post_processing(state, model, args, precision)
            try:
                save_checkpoint(state, tuned)
            except WriteError as error:
                raise UsageError(f"{error}. Pass a writable path to --tune-post-processing.")
            print(f"wrote {tuned} with post-processing {state['post_processing']}")
        if files:
            own_images(args, files, state, model, precision, output_dir)
        else:
            evaluate(args, state, model, precision, output_dir)
    except (UsageError, CheckpointError, dataset.DatasetError,
            map_folders.MapFolderError) as error:
        sys.exit(f"error: {error}")
    except WriteError as error:
        sys.exit(f"error: {error}. Free some space, or pass another --output-dir.")
    except KeyboardInterrupt:
        sys.exit("interrupted: nothing more was written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
