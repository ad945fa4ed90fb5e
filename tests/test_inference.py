"""Dense inference: the fully convolutional mode agrees with scoring every crop."""
import numpy as np
import pytest
import torch

import dataset
import inference
from inference import saliency_grid
from MrCNN import MrCNN
from MrCNNs import MrCNNs


def random_scenes(n=2, seed=3):
    return dataset.load_synthetic(n, seed=seed).scales


def test_fcn_with_all_phases_equals_crops_exactly():
    torch.manual_seed(0)
    scales = random_scenes(1)
    model = MrCNN()
    crops = saliency_grid(model, scales, "crops", grid_size=12)
    fcn = saliency_grid(model, scales, "fcn", grid_size=12, phases=8)
    assert crops.shape == fcn.shape == (1, 12, 12)
    torch.testing.assert_close(fcn, crops, atol=1e-5, rtol=1e-4)


def test_default_fcn_agrees_with_crops_on_random_weights():
    torch.manual_seed(1)
    scales = random_scenes(1)
    for model in (MrCNN(), MrCNNs()):
        crops = saliency_grid(model, scales, "crops", grid_size=50)
        fcn = saliency_grid(model, scales, "fcn", grid_size=50)
        for a, b in zip(crops, fcn):
            assert np.corrcoef(a.flatten(), b.flatten())[0, 1] > 0.9


def test_scale_400_path_is_exact_for_the_50x50_grid():
    torch.manual_seed(2)
    model = MrCNN()
    with torch.no_grad():  # silence the interpolated scales: what is left must be exact
        model.fusion.fc.weight[:, 512:] = 0
    scales = random_scenes(1)
    torch.testing.assert_close(saliency_grid(model, scales, "fcn", phases=1),
                               saliency_grid(model, scales, "crops"), atol=1e-5, rtol=1e-4)


def test_sample_maps_is_bilinear_between_grid_centres_and_exact_on_them():
    maps = torch.stack([torch.arange(16.).view(4, 4), -torch.arange(16.).view(4, 4)])
    rel = torch.tensor([[0.125, 0.375], [0.625, 0.125], [0.25, 0.25], [0.5, 0.5]])
    values = dataset.sample_maps(maps, torch.tensor([0, 0, 0, 1]), rel)
    torch.testing.assert_close(values, torch.tensor([1.0, 8.0, 2.5, -7.5]))


def test_blur_map_keeps_the_mean_and_range_and_spreads_a_peak():
    grid = torch.zeros(50, 50)
    grid[25, 25] = 1.0
    sharp, blurred = inference.blur_map(grid, 0.0), inference.blur_map(grid, 0.03)
    assert sharp.shape == blurred.shape == (200, 200)
    assert blurred.max() < sharp.max() and blurred.min() >= 0
    assert float(blurred.sum()) == pytest.approx(float(sharp.sum()), rel=1e-3)
    assert (blurred > 0.5 * blurred.max()).sum() > (sharp > 0.5 * sharp.max()).sum()


def test_progress_in_a_log_is_one_line_every_few_seconds_with_the_time_left(monkeypatch,
                                                                          capsys):
    """Where stderr is a file or a pipe (as here), no bar: a line at most every 10 s."""
    import cli
    clock = iter(range(0, 1000, 4))  # each reading 4 s after the last
    monkeypatch.setattr(cli.time, "perf_counter", lambda: next(clock))
    assert list(cli.progress(range(10), 10, "dense maps", "batch")) == list(range(10))
    assert capsys.readouterr().err.splitlines() == [
        "dense maps: 3/10 batches, 28 s left", "dense maps: 6/10 batches, 16 s left",
        "dense maps: 9/10 batches, 4 s left"]
