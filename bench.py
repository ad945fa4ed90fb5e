"""Benchmark on the current device: GEMM ceilings, training throughput, dense inference, metrics.

    python bench.py                       # a table: 65 s on a 2-core AMD EPYC (more without bf16)
    python bench.py --json bench.json     # also write the numbers as JSON
    python bench.py --full                # more repeats and steps, batch 128 too (3-4x longer)
    python bench.py --pipeline --data-dir data/MIT1003   # instead: a whole epoch, validation
                                          # and test.py on MIT1003 (on a GPU, the CPU beside it)

Every number is a median over repeats, measured in this one run, so ratios between rows are
comparable; absolute numbers vary between machines and runs. Images are MIT1003-sized
(1024x768) synthetic scenes, so no dataset is needed.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dataset
import map_folders
import metrics
from checkpoints import CheckpointError, load_checkpoint, model_from_checkpoint
from devices import DEVICES, keep_freed_memory, pick_device, pick_precision
from files import WriteError, write_text
from features import log_validation, save_feature_maps
from inference import saliency_grid
from MrCNN import CROP_SIZE, N_SCALES
from models import MODELS, build_model
from optimisation import train_step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, repeats, device, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_ways(a, b):
    """The product of square matrices a, b (n x n) two ways -> {way: fn() -> a @ b}: ``matmul``
    (the BLAS library) and a 1x1 convolution (the convolution library: oneDNN on a CPU, cuDNN
    on a GPU), since a training step runs both and they can differ twofold (fp32 on a 2-core
    AMD EPYC: matmul 226 GFLOP/s, 1x1 convolution 429)."""
    n = len(a)
    image = a.T.contiguous().reshape(1, n, 1, n)  # (b.T @ a.T).T = a @ b, with contiguous
    filters = b.T.contiguous().reshape(n, n, 1, 1)  # inputs (a strided one runs slower)
    return {"matmul": lambda: a @ b,
            "1x1 conv": lambda: torch.nn.functional.conv2d(image, filters).reshape(n, n).T}


def gemm_gflops(dtype, device, n=2048, repeats=15):
    """GFLOP/s of an n x n x n matrix product each way of ``gemm_ways`` -> {way: median rate};
    a product takes milliseconds and single ones vary by a third, hence the many repeats."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with torch.no_grad():
        return {way: 2 * n ** 3 / median_seconds(fn, repeats, device, warmup=3) / 1e9
                for way, fn in gemm_ways(a, b).items()}


def training_gflop_per_sample(model):
    """GFLOP of one training step per sample, counted on ``model`` (convolutions and linear
    layers): the forward multiply-adds, the same again for the weight gradients, and again for
    the input gradients of every layer but the first of a stream (the crops need none)."""
    multiply_adds = []

    def count(module, inputs, output):
        weight = module.weight
        per_output = weight[0].numel() if isinstance(module, torch.nn.Conv2d) else weight.shape[1]
        forward = output.numel() * per_output
        multiply_adds.append(forward * (3 if inputs[0].requires_grad else 2))
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(count) for m in layers]
    try:
        model(torch.zeros(1, N_SCALES, 3, CROP_SIZE, CROP_SIZE))
    finally:
        for hook in hooks:
            hook.remove()
    return 2 * sum(multiply_adds) / 1e9


def training_samples_per_s(name, batch_size, precision, device, scales, steps, repeats):
    torch.manual_seed(0)
    model = build_model(name).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    padded = [dataset.pad_images(s).to(device) for s in scales]
    generator = torch.Generator().manual_seed(0)
    n = batch_size * steps
    index = torch.randint(len(scales[0]), (n,), generator=generator).to(device)
    rel = torch.rand(n, 2, generator=generator).to(device)
    target = (torch.rand(n, generator=generator) < 1 / 3).float().to(device)
    flip = torch.rand(n, generator=generator).to(device) < 0.5

    def run():
        for k in range(steps):
            sl = slice(k * batch_size, (k + 1) * batch_size)
            crops = dataset.cut_crops(padded, index[sl], rel[sl], flip[sl])
            train_step(model, optimizer, crops, target[sl], precision)
    return n / median_seconds(run, repeats, device)


# the layer of a convolution, from its input channels (forward) or output channels (backward)
CONV_LAYERS = {"forward": {3: "conv1", 96: "conv2", 160: "conv3"},
               "backward": {96: "conv1", 160: "conv2", 288: "conv3"}}
# the other parts of a step, by words in their ops' names (the first part that matches)
STEP_PARTS = {"optimiser (Adam step, zero_grad)": ("Optimizer.",),
              "crop gathering": ("crops",),
              "fully connected (fc, fusion)": ("mm", "linear"),
              "max-pool": ("max_pool",), "dropout": ("dropout", "bernoulli"),
              "ReLU": ("relu", "threshold_backward"), "loss": ("binary_cross",),
              "dtype and layout conversions": ("_to_copy", "copy_", "to_dense", "to_mkldnn",
                                               "contiguous", "clone")}


def step_part(key, shapes):
    """What a profiled op (name ``key``, input ``shapes``) of a training step belongs to."""
    if "convolution" in key:
        direction = "backward" if "backward" in key else "forward"
        channels = shapes[0][1] if shapes and len(shapes[0]) == 4 else None
        return f"{CONV_LAYERS[direction].get(channels, 'conv')} {direction}"
    return next((part for part, words in STEP_PARTS.items()
                 if any(word in key for word in words)), "other")


def profile_training_step(name, batch_size, precision, scales, steps=6):
    """Where a training step's time goes on the CPU (torch.profiler over ``steps`` steps after
    two warm-up steps, the optimiser as main.py builds it) -> [(part, ms per step)], largest
    first, and the measured ms per step. Each op's own time counts once: in crop gathering or
    the optimiser where it runs inside them, else in the part that ``step_part`` names after it
    or after its nearest caller that names one."""
    from torch.profiler import ProfilerActivity, profile, record_function
    from optimisation import make_optimizer
    torch.manual_seed(0)
    model = build_model(name).train()
    optimizer, _ = make_optimizer(model, "adam", 1e-3, 2e-4, 0.9, "constant", 1)
    padded = [dataset.pad_images(s) for s in scales]
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(len(scales[0]), (batch_size,), generator=generator)
    rel = torch.rand(batch_size, 2, generator=generator)
    target = (torch.rand(batch_size, generator=generator) < 1 / 3).float()

    def step():
        with record_function("crops"):
            crops = dataset.cut_crops(padded, index, rel)
        train_step(model, optimizer, crops, target, precision)
    step()
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = (time.perf_counter() - start) / steps
    parts = {}
    for event in prof.events():
        part, node, top = "other", event, event
        while top.cpu_parent is not None:
            top = top.cpu_parent
        if top.name == "crops" or top.name.startswith("Optimizer."):
            part = step_part(top.name, [])
        while part == "other" and node is not None:  # e.g. max-pool backward's zero-fill
            part, node = step_part(node.name, node.input_shapes), node.cpu_parent
        parts[part] = parts.get(part, 0.0) + event.self_cpu_time_total / 1e3 / steps
    return sorted(parts.items(), key=lambda item: -item[1]), 1e3 * seconds


def print_profiles(batch_size=256):
    """Print and return ``profile_training_step`` of both models at the CPU's default
    precision: {model: {'ms_per_step', 'parts': {part: ms}}}."""
    precision = pick_precision("auto", torch.device("cpu"))
    scales = dataset.load_synthetic(8, seed=0).scales
    results = {}
    for name in MODELS:
        parts, ms = profile_training_step(name, batch_size, precision, scales)
        results[name] = {"ms_per_step": ms, "parts": dict(parts)}
        profiled = sum(value for _, value in parts)
        print(f"{name}, batch {batch_size}, {precision}, {torch.get_num_threads()} threads: "
              f"{ms:.0f} ms a step ({batch_size / ms * 1e3:.0f} samples/s) under the profiler")
        for part, value in parts:
            print(f"  {part:<34s} {value:7.1f} ms  {100 * value / profiled:5.1f}%")
    return results


def inference_seconds(model, scales, mode, precision, device, repeats, batch_size=1024):
    return median_seconds(lambda: saliency_grid(model, scales, mode, batch_size=batch_size,
                                                precision=precision), repeats, device)


def crops_batch1_seconds(model, scales, device, n_locations):
    """The seed's loop: one location per forward pass; timed on n_locations, scaled to 2,500."""
    model.eval()
    padded = [dataset.pad_images(s[:1]).to(device) for s in scales]
    rel = dataset.grid_locations(50, device)[:n_locations]
    index = torch.zeros(1, dtype=torch.long, device=device)

    def run():
        with torch.no_grad():
            for k in range(n_locations):
                model(dataset.cut_crops(padded, index, rel[k:k + 1]))
    return median_seconds(run, 3, device) * 2500 / n_locations


def pipeline_seconds(data_dir, device):
    """Wall-clock of the real scripts on MIT1003 on ``device``: one training epoch after the
    first and its validation (``main.py --epochs 2``, as its epoch line prints them), and
    ``test.py`` on the 100 test images (all rows, all metrics, the figure), start-up included."""
    import re
    import subprocess
    import sys
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--data-dir", data_dir, "--device", device]
        here = Path(__file__).resolve().parent
        trained = subprocess.run([sys.executable, here / "main.py", *common, "--epochs", "2",
                                  "--checkpoint-dir", tmp, "--log-dir", tmp, "--run-name",
                                  "bench"],
                                 capture_output=True, text=True)
        epoch = re.search(r"epoch 2/2: .* ([\d.]+)s \(.*\| val .* ([\d.]+)s", trained.stdout)
        if trained.returncode or not epoch:
            raise SystemExit(f"error: main.py failed on {device}: {trained.stderr[-500:]}")
        start = time.perf_counter()
        tested = subprocess.run([sys.executable, here / "test.py", *common, "--output-dir", tmp],
                                capture_output=True, text=True)
        if tested.returncode:
            raise SystemExit(f"error: test.py failed on {device}: {tested.stderr[-500:]}")
        return {"epoch": float(epoch[1]), "validation": float(epoch[2]),
                "test_py": time.perf_counter() - start}


def fcn_agreement(args):
    """Print and return how far fcn (each phase count, fp32 and bf16) is from crops."""
    model = model_from_checkpoint(load_checkpoint(args.checkpoint), args.checkpoint).eval()
    val = dataset.load_mit(args.data_dir, "val")
    if args.agreement > len(val):
        raise dataset.DatasetError(f"--agreement {args.agreement} asks for more images than the "
                                   f"{len(val)} of the val split of {args.data_dir}: pass at "
                                   f"most {len(val)}")
    val = val.subset(list(range(args.agreement)))
    reference = saliency_grid(model, val.scales, "crops")
    judd_ref = [metrics.auc_judd(m, f) for m, f in zip(reference, val.fixations)]
    results = {}
    for phases in (1, 2, 4):
        for precision in ("fp32", "bf16"):
            maps = saliency_grid(model, val.scales, "fcn", precision=precision, phases=phases)
            corr = [np.corrcoef(a.flatten(), b.flatten())[0, 1] for a, b in zip(reference, maps)]
            judd = [metrics.auc_judd(m, f) for m, f in zip(maps, val.fixations)]
            key = f"phases{phases}_{precision}"
            results[key] = {"mean_correlation": float(np.mean(corr)),
                            "min_correlation": float(np.min(corr)),
                            "mean_abs_auc_judd_diff": float(np.mean(np.abs(np.subtract(judd, judd_ref))))}
            print(f"fcn {key}: map correlation mean {np.mean(corr):.4f} min {np.min(corr):.4f}, "
                  f"mean |AUC-Judd diff| {results[key]['mean_abs_auc_judd_diff']:.4f}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--json", default=None, metavar="PATH", help="write the numbers here")
    parser.add_argument("--full", action="store_true", help="more repeats and steps, and "
                        "batch size 128 beside 256")
    parser.add_argument("--agreement", type=int, default=0, metavar="N",
                        help="instead: compare fcn with crops on the first N MIT1003 val images "
                             "with --checkpoint (map correlation, AUC-Judd difference)")
    parser.add_argument("--pipeline", action="store_true", help="instead: time a training "
                        "epoch, its validation and test.py on --data-dir (MIT1003), on --device "
                        "and, for a GPU, on the CPU beside it")
    parser.add_argument("--profile", action="store_true", help="instead: where a training step "
                        "of MrCNN and MrCNNs (batch 256, the CPU's default precision) spends "
                        "its time on the CPU, from torch.profiler")
    parser.add_argument("--checkpoint", default="checkpoint/pretrained/MrCNN.pth")
    parser.add_argument("--data-dir", default="data/MIT1003")
    args = parser.parse_args(argv)
    dataset.show_warnings_plainly()
    if args.agreement < 0:
        sys.exit(f"error: --agreement must be at least 1 (got {args.agreement})")
    try:
        if args.agreement:
            return fcn_agreement(args)
        if args.pipeline:
            results = {d: pipeline_seconds(args.data_dir, d)
                       for d in dict.fromkeys([pick_device(args.device).type, "cpu"])}
    except (CheckpointError, dataset.DatasetError) as error:
        sys.exit(f"error: {error}")
    if args.profile:
        keep_freed_memory()  # as main.py trains
        return print_profiles()
    device = pick_device(args.device)
    if args.pipeline:
        for d, seconds in results.items():
            print(f"{d}: epoch {seconds['epoch']:.1f} s, validation {seconds['validation']:.1f} s "
                  f"(epoch + validation {seconds['epoch'] + seconds['validation']:.1f} s), "
                  f"test.py {seconds['test_py']:.1f} s")
        return results
    repeats, steps = (5, 8) if args.full else (3, 3)
    keep_freed_memory()  # as main.py trains
    default_precision = pick_precision("auto", device)
    low = "bf16" if default_precision == "bf16" else "fp16" if device.type == "cuda" else "fp32"
    precisions = ["fp32"] + ([low] if low != "fp32" else [])
    results = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "default_precision": default_precision}
    rows = []

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    results["gemm_gflops"] = {p: gemm_gflops(dtypes[p], device) for p in precisions}
    # the ceiling is the faster way: a training step runs both (convolutions, linear layers)
    results["ceiling_gflops"] = {p: max(rates.values())
                                 for p, rates in results["gemm_gflops"].items()}
    for p, rates in results["gemm_gflops"].items():
        rows.append((f"GEMM 2048^3 {p}", ", ".join(f"{way} {rate:.0f}"
                                                    for way, rate in rates.items())
                     + " GFLOP/s"))

    train_scenes = dataset.load_synthetic(16, seed=0).scales
    results["training"] = {}
    for name in ("MrCNN", "MrCNNs"):
        gflop_per_sample = training_gflop_per_sample(build_model(name))
        rows.append((f"train {name}: GFLOP per sample", f"{gflop_per_sample:.3f}"))
        for batch_size in (128, 256) if args.full else (256,):
            for precision in precisions:
                rate = training_samples_per_s(name, batch_size, precision, device, train_scenes,
                                              steps, repeats)
                fraction = rate * gflop_per_sample / results["ceiling_gflops"][precision]
                results["training"][f"{name}_bs{batch_size}_{precision}"] = {
                    "samples_per_s": rate, "fraction_of_gemm_ceiling": fraction}
                rows.append((f"train {name} batch {batch_size} {precision}",
                             f"{rate:.0f} samples/s ({100 * fraction:.0f}% of GEMM)"))
    results["train_samples_per_s"] = \
        results["training"][f"MrCNN_bs256_{default_precision}"]["samples_per_s"]

    rng = np.random.default_rng(0)
    image, points, density = dataset.synthetic_image(rng, height=768, width=1024)
    pil = Image.fromarray(image)
    scales = [dataset.resize_rgb(pil, s)[None] for s in dataset.SCALES]
    torch.manual_seed(0)
    model = build_model("MrCNN").to(device).eval()
    inference = {}
    for precision in precisions:
        inference[f"fcn_{precision}"] = inference_seconds(model, scales, "fcn", precision,
                                                          device, repeats)
        inference[f"crops_batched_{precision}"] = inference_seconds(
            model, scales, "crops", precision, device, max(1, repeats // 2))
    inference["crops_batch1_fp32"] = crops_batch1_seconds(model, scales, device, 250)
    results["inference_seconds_per_image"] = inference
    # fcn and batched crops compared in the same (default) precision; batch-1 as the seed runs it
    results["fcn_seconds_per_image"] = inference[f"fcn_{default_precision}"]
    results["crops_batched_seconds_per_image"] = inference[f"crops_batched_{default_precision}"]
    results["crops_batch1_seconds_per_image"] = inference["crops_batch1_fp32"]
    for key, value in inference.items():
        rows.append((f"dense map {key.replace('_', ' ')}", f"{value:.3f} s/image"))
    for label, key in (("batch-1 crops (fp32)", "crops_batch1_seconds_per_image"),
                       (f"batched crops ({default_precision})", "crops_batched_seconds_per_image")):
        rows.append((f"fcn ({default_precision}) speed-up vs {label}",
                     f"{results[key] / results['fcn_seconds_per_image']:.0f}x"))

    grid = saliency_grid(model, scales)[0]
    other = np.zeros_like(points)
    other[rng.integers(0, 768, 1000), rng.integers(0, 1024, 1000)] = True
    shuffle = metrics.bms_shuffle_map([other, points], density.shape)
    with tempfile.TemporaryDirectory() as tmp:  # another model's map, as test.py --maps reads it
        png = Path(tmp) / "map.png"
        Image.fromarray((metrics.as_submitted_map(grid, density.shape).cpu().numpy() * 255
                         ).astype(np.uint8)).save(png)
        scoring = {"decoding an 8-bit 1024x768 map (test.py --maps)": median_seconds(
            lambda: map_folders.read_map(png), repeats, device)}
        for source, saliency in (("the model's 50x50 map", grid),
                                 ("an 8-bit 1024x768 map", map_folders.read_map(png))):
            scoring[f"8 metrics, {source}"] = median_seconds(lambda: metrics.score_image(
                metrics.as_submitted_map(saliency, density.shape), points, density, other),
                repeats, device)
            scoring[f"BMS protocols (13 blurs, 2 codes), {source}"] = median_seconds(
                lambda: metrics.bms_shuffled_auc(saliency, points, shuffle, metrics.BMS_SIGMAS),
                repeats, device)
    results["scoring_seconds_per_image"] = scoring
    results["metrics_seconds_per_image"] = scoring["8 metrics, the model's 50x50 map"]
    rows += [(key, f"{value:.3f} s/image") for key, value in scoring.items()]

    with tempfile.TemporaryDirectory() as tmp:  # what a run writes to TensorBoard
        from torch.utils.tensorboard import SummaryWriter
        writer, folder = SummaryWriter(tmp), Path(tmp) / "features"
        val = dataset.load_synthetic(8, seed=1)
        index, rel, labels = dataset.sample_locations(val.maps, torch.Generator().manual_seed(0))
        crops = dataset.cut_crops([dataset.pad_images(s) for s in val.scales], index[:256],
                                  rel[:256])
        cpu_model = build_model("MrCNN")
        pictures = {"first batch's feature pictures (once a run)": lambda: save_feature_maps(
            cpu_model, crops, labels[:256], writer, folder, 0),
            "validation pictures (each validation)": lambda: log_validation(
                writer, cpu_model, {}, [grid.cpu()] * len(val), val, folder, 0)}
        results["tensorboard_seconds"] = {k: median_seconds(fn, repeats, torch.device("cpu"))
                                          for k, fn in pictures.items()}
        writer.close()
    rows += [(f"TensorBoard: {k}", f"{v:.2f} s") for k, v in results["tensorboard_seconds"].items()]

    width = max(len(r[0]) for r in rows)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"default precision {default_precision} (medians)")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    if args.json:
        try:
            write_text(args.json, json.dumps(results, indent=2))
        except WriteError as error:
            sys.exit(f"error: {error}. Pass a writable --json path.")
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
