"""Plot train loss and val sAUC per epoch of runs in docs/gpu_training_logs.txt and
docs/cpu_training_logs.txt.

    python -m tools.plot_training_curves   # writes docs/training_curves.png
"""
import argparse
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from files import write_atomically  # noqa: E402

HERE = Path(__file__).resolve().parent.parent / "docs"
RUNS = {"gpu_training_logs.txt": ("mrcnn_adam", "mrcnn_sgd", "mrcnn_adam_wd1e3", "mrcnns_adam",
                                  "mrcnns_sgd"),
        "cpu_training_logs.txt": ("cpu_mrcnn_distil_blur", "cpu_mrcnn_distil_ft")}
LABELS = {"mrcnn_adam_wd1e3": "mrcnn_adam_wd1e3 (teacher)",
          "mrcnns_adam": "mrcnns_adam (shipped MrCNNs, teacher)",
          "cpu_mrcnn_distil_ft": "cpu_mrcnn_distil_ft (shipped MrCNN; starts from the teacher)"}
LINE = re.compile(r"epoch (\d+)/\d+: loss ([\d.]+) .*sAUC ([\d.]+)")


def read_runs(path):
    """{run name: [(epoch, train loss, val sAUC)]} from the concatenated main.py logs."""
    runs, current = {}, None
    for line in path.read_text().splitlines():
        if line.startswith("==="):
            words = line.split()
            # GPU logs name the log file, CPU logs give the command with --run-name
            current = (words[words.index("--run-name") + 1] if "--run-name" in words
                       else Path(words[-1]).stem)
            runs[current] = []
        elif current and (match := LINE.search(line)):
            runs[current].append((int(match[1]), float(match[2]), float(match[3])))
    return runs


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # --help
    fig, (loss_ax, sauc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for log_name, names in RUNS.items():
        runs = read_runs(HERE / log_name)
        for name in names:
            epochs, losses, saucs = zip(*runs[name])
            style = "--" if log_name.startswith("cpu") else "-"
            loss_ax.plot(epochs, losses, style, label=LABELS.get(name, name))
            sauc_ax.plot(epochs, saucs, style, label=LABELS.get(name, name))
    loss_ax.set(xlabel="epoch", ylabel="train loss (BCE; soft targets for distil runs)",
                title="training loss")
    sauc_ax.set(xlabel="epoch", ylabel="val shuffled AUC", title="validation sAUC (100 images)")
    sauc_ax.axhline(0.719, color="grey", linestyle="--", label="paper (0.719)")
    sauc_ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomically(HERE / "training_curves.png", lambda tmp: fig.savefig(tmp, dpi=90))


if __name__ == "__main__":
    main()
