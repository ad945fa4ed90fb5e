"""Dense saliency maps from a Mr-CNN: score a grid of locations over each image.

Two modes, which agree (tests/test_inference.py):

* ``crops`` (the reference): cut the three 42x42 crops of every grid location (the
  coursework's 2,500 crops for a 50x50 grid) and score them in large batches.
* ``fcn`` (fast): run each stream's convolutions once over the whole replicate-padded image,
  apply the stream's FC layer as a 3x3 convolution (stride 8 in image pixels), sample that
  feature map at the grid locations, and apply the fusion layers as 1x1 convolutions. At the
  400x400 scale the 50x50 grid falls exactly on the stride-8 lattice, so those features are
  exact; at 250 and 150 the features are computed on a finer lattice (step 4 pixels by
  default: the last max-pool at stride 1 and the FC layer dilated) and bilinearly
  interpolated between its points.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from cli import progress as progress_report
from dataset import SCALES, crop_starts, cut_crops, grid_locations, pad_images
from devices import autocast_context
from MrCNN import CROP_SIZE

STRIDE = 8  # three 2x2 max-pools
MODES = ("fcn", "crops")
FCN_PHASES = 2


@torch.no_grad()
def _crops_logits(model, scales, grid_size, batch_size, phases=None):
    device = next(model.parameters()).device
    rel = grid_locations(grid_size, device)
    out = []
    for i in range(scales[0].shape[0]):
        padded = [pad_images(s[i:i + 1].to(device)) for s in scales]
        logits = []
        for chunk in rel.split(batch_size):
            index = torch.zeros(len(chunk), dtype=torch.long, device=device)
            logits.append(model(cut_crops(padded, index, chunk)).float())
        out.append(torch.cat(logits).view(grid_size, grid_size))
    return torch.stack(out)


def _stream_lattice(stream, x, phases=1):
    """Stream over a padded image as a fully convolutional net: [N, 3, L, L] -> [N, 512, K, K].

    Output (k, l) is the stream's feature vector for the 42x42 crop starting at pixel
    (k * step, l * step), step = 8 / phases. With phases > 1 the last log2(phases) max-pools
    run at stride 1 and every later layer is dilated to match ("a trous"), so the layers
    before those pools run once instead of once per shifted copy of the image.
    """
    n_pools = sum(isinstance(m, nn.MaxPool2d) for m in stream.features)
    first_dense_pool = n_pools - int(math.log2(phases))
    dilation, pool_index = 1, 0
    for layer in stream.features:
        if isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, layer.weight, layer.bias, dilation=dilation)
        elif isinstance(layer, nn.MaxPool2d):
            if pool_index >= first_dense_pool:
                x = F.max_pool2d(x, 2, stride=1, dilation=dilation)
                dilation *= 2
            else:
                x = F.max_pool2d(x, 2)
            pool_index += 1
        else:  # ReLU, or BatchNorm (eval): position-wise
            x = layer(x)
    fc = stream.fc
    side = int(math.isqrt(fc.in_features // x.shape[1]))
    weight = fc.weight.view(fc.out_features, x.shape[1], side, side)
    return torch.relu(F.conv2d(x, weight, fc.bias, dilation=dilation))


def _stream_feature_map(stream, images, starts, phases):
    """Stream features at crop starts ``starts`` (int [G], same for rows and columns).

    images: float normalised [N, 3, S, S]; phases: 1, 2, 4 or 8: features are computed on a
    lattice of crop starts with step 8 / phases pixels and bilinearly interpolated to
    ``starts`` (8 is exact everywhere, at many times the cost). Returns [N, 512, G, G].
    """
    size = images.shape[-1]
    first = int(starts.min())
    if all(int(s - first) % STRIDE == 0 for s in starts):
        phases = 1  # every start falls on one stride-8 lattice: exact at the coarse step
    step = STRIDE // phases
    pad_lo = max(0, -first)
    pad_lo += -(first + pad_lo) % step  # the first crop start falls on the lattice
    positions = (starts + pad_lo).double() / step  # lattice coordinate of each start
    n_fine = math.ceil(float(positions.max())) + 1
    pad_hi = max(0, step * (n_fine - 1) + CROP_SIZE - (size + pad_lo))
    x = F.pad(images, (pad_lo, pad_hi, pad_lo, pad_hi), mode="replicate")
    x = x.contiguous(memory_format=torch.channels_last)  # oneDNN: no layout reorders, ~3x on CPU
    fine = _stream_lattice(stream, x, phases)[..., :n_fine, :n_fine]
    if torch.equal(positions, positions.round()):
        idx = positions.long().to(fine.device)
        return fine[:, :, idx][:, :, :, idx]
    coords = (2 * positions / max(n_fine - 1, 1) - 1).to(fine.device)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    grid = torch.stack([gx, gy], -1).expand(fine.shape[0], -1, -1, -1).to(fine.dtype)
    return F.grid_sample(fine, grid, mode="bilinear", align_corners=True)


@torch.no_grad()
def _fcn_logits(model, scales, grid_size, batch_size, phases):
    device = next(model.parameters()).device
    rel_1d = (torch.arange(grid_size, dtype=torch.float64) + 0.5) / grid_size
    out = []
    images_per_batch = max(1, batch_size // 512)
    for i in range(0, scales[0].shape[0], images_per_batch):
        features = []
        for k, (scale, size) in enumerate(zip(scales, SCALES)):
            images = model.normalise(scale[i:i + images_per_batch].to(device).float() / 255.0)
            starts = crop_starts(rel_1d, size)
            features.append(_stream_feature_map(model.stream(k), images, starts, phases))
        x = torch.cat(features, 1).permute(0, 2, 3, 1)  # [n, G, G, 1536]
        out.append(model.fusion(x.reshape(-1, x.shape[-1])).float().view(-1, grid_size, grid_size))
    return torch.cat(out)


def saliency_grid(model, scales, mode="fcn", grid_size=50, batch_size=1024, precision="fp32",
                  phases=FCN_PHASES):
    """Dense saliency of a batch of images.

    model: MrCNN or MrCNNs (put in eval mode here); scales: list of three uint8 tensors
    [N, 3, S, S] for S in (400, 250, 150); mode: 'fcn' or 'crops'; precision: 'fp32', 'bf16'
    or 'fp16' (autocast); phases: 'fcn' computes features on a lattice of step 8 / phases
    pixels at the scales whose grid misses the stride-8 lattice (see
    ``_stream_feature_map``). Returns float32 fixation probabilities [N, grid_size,
    grid_size] on the model's device, row-major over relative locations ((i + 0.5) / grid_size).
    """
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}: choose one of {', '.join(MODES)}")
    model.eval()
    device = next(model.parameters()).device
    with autocast_context(device, precision):
        run = _fcn_logits if mode == "fcn" else _crops_logits
        logits = run(model, scales, grid_size, batch_size, phases)
    return torch.sigmoid(logits.float())


def predict_maps(model, data, mode="fcn", precision="fp32", grid_size=50, images_per_call=8,
                 progress=False):
    """Dense maps of every image of a SaliencySet: list of float [grid, grid] tensors in (0, 1)
    (``progress``: report on stderr, cli.progress)."""
    maps, starts = [], range(0, len(data), images_per_call)
    for start in progress_report(starts, len(starts), "dense maps", "batch") if progress else starts:
        chunk = [s[start:start + images_per_call] for s in data.scales]
        maps.extend(saliency_grid(model, chunk, mode, grid_size, precision=precision))
    return maps


def centre_bias_map(size=200, sigma=0.25, device="cpu"):
    """A centred isotropic Gaussian in relative coordinates: float [size, size] with max 1.

    sigma is a fraction of the image's height (rows) and width (columns).
    """
    centres = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size - 0.5
    g = torch.exp(-0.5 * (centres / sigma) ** 2)
    return g[:, None] * g[None, :]


def blur_map(grid_map, blur_sigma, size=200):
    """Upsample a dense map to [size, size] (bilinear) and blur it with a Gaussian.

    grid_map: float [G, G]; blur_sigma: sigma as a fraction of the image size (0: no blur).
    Returns float [size, size] with the map's values (a blur keeps them in their range).
    """
    x = F.interpolate(grid_map[None, None].float(), size=(size, size), mode="bilinear",
                      align_corners=False)[0, 0]
    if blur_sigma > 0:
        radius = max(1, int(3 * blur_sigma * size))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
        kernel = torch.exp(-0.5 * (offsets / (blur_sigma * size)) ** 2)
        kernel = kernel / kernel.sum()
        x = F.pad(x[None, None], (radius, radius, radius, radius), mode="replicate")
        x = F.conv2d(F.conv2d(x, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))[0, 0]
    return x


def post_process(grid_map, blur_sigma=0.0, centre_weight=0.0, size=200):
    """Blur a dense map and blend it with the centre prior, as the MIT benchmark tunes both.

    grid_map: float [G, G] in [0, 1]; blur_sigma: Gaussian sigma as a fraction of the image
    size (0: none); centre_weight: w in (1 - w) * map + w * centre (maps min-max scaled
    first). Returns float [size, size] in [0, 1] (resize it to the image size afterwards).
    """
    x = blur_map(grid_map, blur_sigma, size)
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    if centre_weight > 0:
        x = (1 - centre_weight) * x + centre_weight * centre_bias_map(size, device=x.device)
    return x
