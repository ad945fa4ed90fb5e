"""Val-split checks of cheap ways to raise sAUC without retraining (RESULTS.md quotes them).

    python docs/val_experiments.py --data-dir ../shared/data/MIT1003

For the MrCNN trained with binary labels (shipped until the distilled one replaced it, now
checkpoint/pretrained/teachers/MrCNN.pth) and the shipped MrCNNs, raw maps (fcn, bf16)
scored as test.py scores them: the 50x50 grid, flip test-time augmentation, a 100x100
grid, monotone transforms of the map (shuffled AUC thresholds the min-max scaled map in
steps of 0.1, so it is not rank invariant), the post-processing's blur alone at several
sigmas, and the average of the two models.

    python docs/val_experiments.py --data-dir ../shared/data/MIT1003 --checks teachers

The distillation teachers instead: the blurred mean map of the two teachers (the target
the shipped MrCNN was trained towards), with flip test-time augmentation, with the shipped
MrCNN as a third member, and the shipped MrCNN blurred: how far a student could rise.

    python docs/val_experiments.py --data-dir ../shared/data/MIT1003 --checks ensemble \
        --member A.pth --member B.pth ... --student S.pth ...

Any ensemble: each member raw, the members' mean map raw and blurred, each student raw and
blurred (RESULTS.md, seventh session: the GPU-trained teachers and students).

    python docs/val_experiments.py --data-dir ../shared/data/MIT1003 --checks student

How the shipped MrCNN (a student) relates to its distillation target, the teachers' mean
map blurred at 0.03, on the split and on every fourth training image: how closely it
reproduces the target (correlation, mean absolute difference), and whether dividing either
map by its position prior (its mean over those training images) raises sAUC, which draws
its negatives from other images' fixations, so a map's centre bias costs it (RESULTS.md,
eighth session).
"""
import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dataset  # noqa: E402
import metrics  # noqa: E402
from checkpoints import load_checkpoint, model_from_checkpoint  # noqa: E402
from inference import blur_map, post_process, predict_maps  # noqa: E402

PRETRAINED = Path(__file__).resolve().parents[1] / "checkpoint" / "pretrained"


def score(maps, data):
    """Mean AUC-Judd and shuffled AUC of grid maps on a SaliencySet (seeds as in test.py)."""
    means, _ = metrics.evaluate_dataset(maps, data.fixations, data.densities,
                                        names=("auc_judd", "auc_shuffled"), workers=None)
    return means["auc_judd"], means["auc_shuffled"]


def dense_maps(model, data, grid_size=50):
    """Grid maps of every image (fcn, bf16)."""
    return predict_maps(model, data, "fcn", "bf16", grid_size)


def with_flip(model, data, maps):
    """Flip test-time augmentation: ``maps`` (dense_maps of data) averaged with the maps of
    the mirrored images, mirrored back."""
    mirrored = dense_maps(model, replace(data, scales=[s.flip(-1) for s in data.scales]))
    return [0.5 * (m + r.flip(-1)) for m, r in zip(maps, mirrored)]


def mean_maps(map_lists):
    """The per-image mean of several models' maps: lists of [G, G] maps -> one list."""
    return [sum(group) / len(group) for group in zip(*map_lists)]


def print_blurred_scores(split, label, grid_maps, data, sigmas):
    """Print AUC-Judd and sAUC of ``grid_maps`` blurred at each of ``sigmas`` (0: raw)."""
    for sigma in sigmas:
        blurred = [post_process(m, sigma) for m in grid_maps] if sigma else grid_maps
        print(f"{split} {label}, blur {sigma:.2f}: AUC-Judd %.4f sAUC %.4f"
              % score(blurred, data), flush=True)


def teacher_checks(data, split):
    """Print the split's scores of the teachers' blurred mean maps and of the shipped MrCNN."""
    paths = {"teacher MrCNN": PRETRAINED / "teachers" / "MrCNN.pth",
             "MrCNNs": PRETRAINED / "MrCNNs.pth", "shipped MrCNN": PRETRAINED / "MrCNN.pth"}
    maps = {}
    for name, path in paths.items():
        model = model_from_checkpoint(load_checkpoint(path), path).eval()
        maps[name] = dense_maps(model, data)
        if name != "shipped MrCNN":
            maps[name + " + flip"] = with_flip(model, data, maps[name])

    def mean(names):
        return mean_maps([maps[n] for n in names])

    pair = ("teacher MrCNN", "MrCNNs")
    rows = {"shipped MrCNN": maps["shipped MrCNN"],
            "teachers' mean": mean(pair),
            "teachers' mean + flip": mean([n + " + flip" for n in pair]),
            "teachers' mean and shipped MrCNN": mean(pair + ("shipped MrCNN",))}
    for label, grid_maps in rows.items():
        print_blurred_scores(split, label, grid_maps, data, (0.0, 0.02, 0.03))


def ensemble_checks(data, split, members, students):
    """Print the split's scores of each ensemble member (raw), of the members' mean map (raw
    and blurred) and of each of ``students`` (raw and blurred)."""
    rows, member_maps = {}, []
    for path in members + students:
        model = model_from_checkpoint(load_checkpoint(path), path).eval()
        rows[path] = dense_maps(model, data)
        if path in members:
            member_maps.append(rows[path])
    rows[f"mean of the {len(members)} members"] = mean_maps(member_maps)
    for label, grid_maps in rows.items():
        sigmas = (0.0,) if label in members else (0.0, 0.02, 0.03)
        print_blurred_scores(split, label, grid_maps, data, sigmas)


def student_checks(data, split, train):
    """Print how closely the shipped MrCNN reproduces its target (the teachers' mean map
    blurred at 0.03) on the split and on ``train`` (a SaliencySet), and the split's scores of
    both maps divided by ``prior ** a``, the prior being their mean map over ``train``."""
    maps, train_maps = {}, {}
    for name in ("MrCNN.pth", "teachers/MrCNN.pth", "MrCNNs.pth"):
        model = model_from_checkpoint(load_checkpoint(PRETRAINED / name), PRETRAINED / name).eval()
        maps[name], train_maps[name] = dense_maps(model, data), dense_maps(model, train)
    teachers = ("teachers/MrCNN.pth", "MrCNNs.pth")
    student = (maps["MrCNN.pth"], train_maps["MrCNN.pth"])
    target = tuple([blur_map(m, 0.03, 50) for m in mean_maps([source[t] for t in teachers])]
                   for source in (maps, train_maps))
    for k, label in enumerate((split, f"{len(train)} train images")):
        cc = sum(map(metrics.cc, student[k], target[k])) / len(student[k])
        mae = sum((s - t).abs().mean().item()
                  for s, t in zip(student[k], target[k])) / len(target[k])
        print(f"{label}: shipped MrCNN against its target: CC {cc:.4f}, mean |difference| "
              f"{mae:.4f}", flush=True)
    rows = {"shipped MrCNN": student, "target (teachers' mean, blur 0.03)": target}
    for label, (grid_maps, prior_maps) in rows.items():
        prior = torch.stack(prior_maps).mean(0)
        for power in (0.0, 0.25, 0.5, 1.0):
            divided = [m / prior ** power for m in grid_maps]
            print(f"{split} {label} / prior^{power:.2f}: AUC-Judd %.4f sAUC %.4f"
                  % score(divided, data), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data/MIT1003")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--checks", default="models",
                        choices=("models", "teachers", "ensemble", "student"),
                        help="the two binary-label models, the two distillation teachers, "
                             "the ensemble of --member and each --student, or the shipped "
                             "MrCNN against its distillation target")
    parser.add_argument("--member", action="append", default=[],
                        help="with --checks ensemble: an ensemble member (repeatable)")
    parser.add_argument("--student", action="append", default=[],
                        help="with --checks ensemble: also score this checkpoint (repeatable)")
    args = parser.parse_args()
    if args.checks == "ensemble" and not args.member:
        parser.error("--checks ensemble needs at least one --member checkpoint")
    data = dataset.load_mit(args.data_dir, args.split, ground_truth=True)
    if args.checks == "teachers":
        return teacher_checks(data, args.split)
    if args.checks == "ensemble":
        return ensemble_checks(data, args.split, args.member, args.student)
    if args.checks == "student":
        train = dataset.load_mit(args.data_dir, "train")
        return student_checks(data, args.split, train.subset(range(0, len(train), 4)))
    transforms = {"sqrt": torch.sqrt,
                  "logit": lambda p: torch.logit(p.double().clamp(1e-12, 1 - 1e-12)).float()}
    plain = {}
    for name, path in (("MrCNN", PRETRAINED / "teachers" / "MrCNN.pth"),
                       ("MrCNNs", PRETRAINED / "MrCNNs.pth")):
        model = model_from_checkpoint(load_checkpoint(path), path).eval()
        plain[name] = dense_maps(model, data)
        rows = {"50x50": plain[name], "50x50 + flip": with_flip(model, data, plain[name]),
                "100x100": dense_maps(model, data, grid_size=100)}
        rows.update({f"50x50, {label}": [f(m) for m in plain[name]]
                     for label, f in transforms.items()})
        rows.update({f"blur {sigma:.2f} (post-processing without the centre blend)":
                     [post_process(m, sigma) for m in plain[name]]
                     for sigma in (0.0, 0.01, 0.02, 0.03, 0.04, 0.06)})
        for label, maps in rows.items():
            print(f"{args.split} {name} {label}: AUC-Judd %.4f sAUC %.4f" % score(maps, data),
                  flush=True)
    mean = mean_maps([plain["MrCNN"], plain["MrCNNs"]])
    print(f"{args.split} MrCNN + MrCNNs average: AUC-Judd %.4f sAUC %.4f" % score(mean, data))


if __name__ == "__main__":
    main()
