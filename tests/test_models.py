"""Layer shapes and parameter counts of MrCNN and MrCNNs."""
import pytest
import torch

from models import build_model
from MrCNN import MrCNN, Stream
from MrCNNs import MrCNNs


def n_parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_paper_architecture():
    assert n_parameters(MrCNN()) == 6_473_153
    assert n_parameters(MrCNNs()) == 2_682_689


def test_stream_layer_shapes():
    stream = Stream()
    convs = [m for m in stream.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 96, (7, 7)), (96, 160, (3, 3)), (160, 288, (3, 3))]
    assert all(c.padding == (0, 0) for c in convs)  # valid convolutions
    assert stream.features(torch.zeros(2, 3, 42, 42)).shape == (2, 288, 3, 3)
    assert (stream.fc.in_features, stream.fc.out_features) == (2592, 512)
    assert stream(torch.zeros(2, 3, 42, 42)).shape == (2, 512)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_stream_features_equal_the_papers_conv_relu_pool_in_values_and_gradients(batch_norm):
    """The stream pools before its ReLU (cheaper); the two orders must agree exactly."""
    torch.manual_seed(0)
    stream = Stream(batch_norm=batch_norm).eval()
    paper, pending_relu = [], None
    for layer in stream.features:  # the same modules, each ReLU moved before its pool
        if isinstance(layer, torch.nn.MaxPool2d):
            pending_relu = layer
        elif isinstance(layer, torch.nn.ReLU):
            paper += [torch.nn.ReLU(), pending_relu]
        else:
            paper.append(layer)
    assert [type(m).__name__ for m in paper[-3:]] == ["Conv2d" if not batch_norm else
                                                      "BatchNorm2d", "ReLU", "MaxPool2d"]
    crops = torch.randn(6, 3, 42, 42)
    ours = stream.features(crops)
    ours.square().sum().backward()
    ours_grads = [p.grad.clone() for p in stream.features.parameters()]
    stream.zero_grad()
    theirs = torch.nn.Sequential(*paper)(crops)
    theirs.square().sum().backward()
    assert torch.equal(ours, theirs) and ours.gt(0).any() and ours.eq(0).any()
    for ours_grad, p in zip(ours_grads, stream.features.parameters(), strict=True):
        assert torch.equal(ours_grad, p.grad)


def test_fc_size_is_derived_from_the_crop_size():
    assert Stream(crop_size=50).fc.in_features == 288 * 4 * 4


def test_forward_returns_one_logit_per_sample_and_streams_are_shared_only_in_mrcnns():
    crops = torch.rand(5, 3, 3, 42, 42)
    for model, n_streams in ((MrCNN(), 3), (MrCNNs(), 1)):
        model.eval()
        assert model(crops).shape == (5,)
        assert len(model.streams) == n_streams
        assert all(isinstance(s, Stream) for s in model.streams)
    shared = MrCNNs()
    assert shared.stream(0) is shared.stream(2)
    separate = MrCNN()
    assert separate.stream(0) is not separate.stream(2)


def test_dropout_is_active_in_training_only():
    model = MrCNN()
    crops = torch.rand(4, 3, 3, 42, 42)
    model.eval()
    assert torch.equal(model(crops), model(crops))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(crops), model(crops))


def test_batch_norm_is_opt_in():
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in MrCNN().modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in MrCNN(batch_norm=True).modules()) == 9


def test_normalisation_uses_the_stored_statistics():
    model = MrCNN()
    model.input_mean.copy_(torch.tensor([0.1, 0.2, 0.3]))
    model.input_std.copy_(torch.tensor([0.5, 0.5, 0.25]))
    x = torch.ones(1, 3, 2, 2)
    out = model.normalise(x)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.8, 1.6, 2.8]))


def test_build_model_rejects_unknown_names():
    assert isinstance(build_model("MrCNNs"), MrCNNs)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("ResNet")


@pytest.mark.parametrize("name", ["MrCNN", "MrCNNs"])
def test_training_flops_are_counted_from_the_layers(name):
    """bench.py's fraction of the GEMM ceiling divides by this count: forward multiply-adds
    by hand from the layer shapes; the backward pass costs twice the forward, less the input
    gradient of each stream's conv1 (the crops need none). A shared stream costs the same."""
    from bench import training_gflop_per_sample
    conv1 = 36 * 36 * 96 * (7 * 7 * 3)  # 42 - 7 + 1 = 36; pool 18; conv2 16; pool 8; conv3 6
    stream = conv1 + 16 * 16 * 160 * (3 * 3 * 96) + 6 * 6 * 288 * (3 * 3 * 160) + 2592 * 512
    forward = 3 * stream + 1536 * 512 + 512 * 1
    expected = 2 * (3 * forward - 3 * conv1) / 1e9
    assert training_gflop_per_sample(build_model(name)) == pytest.approx(expected, rel=1e-12)


def test_both_ways_of_timing_a_gemm_compute_the_same_product():
    """bench.py's GEMM ceiling is the faster of matmul and a 1x1 convolution: both must be a @ b."""
    from bench import gemm_ways
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(48, 48, generator=generator, dtype=torch.float64) for _ in range(2))
    ways = gemm_ways(a, b)
    assert set(ways) == {"matmul", "1x1 conv"}
    for way, product in ways.items():
        torch.testing.assert_close(product(), a @ b, rtol=1e-12, atol=1e-12, msg=way)


def test_the_training_step_profile_names_each_layer_and_accounts_for_the_step():
    """bench.py --profile: every convolution, forward and backward, is found by layer, and the
    parts add up to most of the measured step (the rest is Python between the ops)."""
    import dataset
    from bench import profile_training_step
    scales = dataset.load_synthetic(2, seed=0).scales
    parts, ms = profile_training_step("MrCNN", 8, "fp32", scales, steps=2)
    names = dict(parts)
    for layer in ("conv1", "conv2", "conv3"):
        assert names[f"{layer} forward"] > 0 and names[f"{layer} backward"] > 0
    assert {"max-pool", "dropout", "optimiser (Adam step, zero_grad)",
            "crop gathering"} <= set(names)
    assert 0.3 * ms < sum(names.values()) <= 1.05 * ms
