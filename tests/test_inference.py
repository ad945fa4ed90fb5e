"""Dense inference: the fully convolutional mode agrees with scoring every crop."""
import numpy as np
import torch

import dataset
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
