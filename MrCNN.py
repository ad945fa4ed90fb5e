"""Mr-CNN (Liu et al., CVPR 2015): three separate streams, one per resolution, fused.

Input: crops of shape [B, 3 scales, 3 channels, 42, 42] (the 400x400, 250x250 and 150x150
copies of the image, all centred on the same relative location), raw pixel values in [0, 1].
Output: one logit per sample, [B] ("is this location fixated?"). Train with
``BCEWithLogitsLoss``; ``torch.sigmoid`` gives the probability.

The model only computes: it reads no files and keeps no visualisation state (main.py captures
activations with forward hooks). The input normalisation statistics are buffers so that they
travel with the weights.
"""
import torch
from torch import nn

CROP_SIZE = 42
N_SCALES = 3


class Stream(nn.Module):
    """One resolution stream: 3 x (conv -> ReLU -> 2x2 max-pool), then FC 512 -> ReLU.

    ``features`` maps [B, 3, 42, 42] to [B, 288, 3, 3]; ``fc`` is the FC 512 layer. Dropout
    follows conv3 and the FC layer. Each ReLU runs after its max-pool: ReLU and max-pool
    commute, so values and gradients are the paper's, and the ReLU (forward and backward)
    touches a quarter of the elements (training runs about 9% faster on a CPU).
    ``batch_norm`` (off by default, not in the paper) adds BatchNorm2d after each convolution.
    """

    def __init__(self, crop_size=CROP_SIZE, dropout=0.5, batch_norm=False):
        super().__init__()
        layers = []
        for c_in, c_out, k in ((3, 96, 7), (96, 160, 3), (160, 288, 3)):
            layers.append(nn.Conv2d(c_in, c_out, k))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.MaxPool2d(2), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.feature_dropout = nn.Dropout(dropout)
        with torch.no_grad():
            n_features = self.features(torch.zeros(1, 3, crop_size, crop_size)).numel()
        self.fc = nn.Linear(n_features, 512)  # 2592 = 288 * 3 * 3 for 42x42 crops
        self.fc_dropout = nn.Dropout(dropout)

    @property
    def conv1(self):
        return self.features[0]

    def forward(self, x):
        """[B, 3, crop, crop] normalised crops -> [B, 512] features."""
        x = self.feature_dropout(self.features(x))
        return self.fc_dropout(torch.relu(self.fc(torch.flatten(x, 1))))


class Fusion(nn.Module):
    """FC 512 over the concatenated stream features, ReLU, dropout, then a single logit."""

    def __init__(self, n_inputs, dropout=0.5):
        super().__init__()
        self.fc = nn.Linear(n_inputs, 512)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(512, 1)

    def forward(self, x):
        """[B, n_inputs] -> [B] logits."""
        return self.out(self.dropout(torch.relu(self.fc(x)))).squeeze(1)


class MrCNN(nn.Module):
    """Three streams (one per scale, separate weights) fused into one logit. 6,473,153 parameters."""

    shared_stream = False

    def __init__(self, dropout=0.5, batch_norm=False, crop_size=CROP_SIZE):
        super().__init__()
        n_streams = 1 if self.shared_stream else N_SCALES
        self.streams = nn.ModuleList(Stream(crop_size, dropout, batch_norm)
                                     for _ in range(n_streams))
        self.fusion = Fusion(512 * N_SCALES, dropout)
        self.register_buffer("input_mean", torch.full((3,), 0.5))
        self.register_buffer("input_std", torch.full((3,), 0.25))

    def stream(self, scale):
        """The stream that processes scale index ``scale`` (0: 400, 1: 250, 2: 150)."""
        return self.streams[0 if self.shared_stream else scale]

    def normalise(self, x):
        """Pixel values in [0, 1], channels on dim -3 -> per-channel standardised values."""
        shape = (3, 1, 1)
        return (x - self.input_mean.view(shape)) / self.input_std.view(shape)

    def forward(self, crops):
        """[B, 3 scales, 3, 42, 42] crops in [0, 1] -> [B] logits."""
        crops = self.normalise(crops)
        features = [self.stream(s)(crops[:, s]) for s in range(N_SCALES)]
        return self.fusion(torch.cat(features, dim=1))

