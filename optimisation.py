"""The optimisation step and the two recipes: Adam, or the paper's SGD (momentum rising from
0.9 to 0.99 over the run, conv1 filters max-norm clipped after every step)."""
import torch
from torch import nn

from devices import autocast_context

FINAL_MOMENTUM = 0.99  # the paper's SGD momentum at the last epoch


def make_optimizer(model, name, learning_rate, weight_decay, momentum, schedule, epochs):
    """-> (Adam or SGD optimiser, LR scheduler stepped once per epoch: constant or cosine)."""
    if name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum,
                                    weight_decay=weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate,
                                     weight_decay=weight_decay)
    if schedule == "cosine":
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def momentum_at(start, epoch, epochs):
    """The paper's SGD momentum at ``epoch`` (0-based): linear from ``start`` to 0.99."""
    return start + (FINAL_MOMENTUM - start) * epoch / max(epochs - 1, 1)


def clip_conv1(model, max_norm):
    """Scale every conv1 filter whose L2 norm exceeds ``max_norm`` back onto that norm."""
    with torch.no_grad():
        for stream in model.streams:
            w = stream.conv1.weight
            norms = w.flatten(1).norm(dim=1).clamp_min(1e-12)
            w.mul_((max_norm / norms).clamp(max=1.0).view(-1, 1, 1, 1))


def train_step(model, optimizer, crops, target, precision, max_norm=0.0, scaler=None):
    """One optimisation step; returns (logits, loss) as device tensors (no host sync).

    crops: float [B, 3, 3, 42, 42] in [0, 1]; target: float [B] in [0, 1]; precision: autocast
    'fp32', 'bf16' or 'fp16' (loss in fp32); scaler: a GradScaler for fp16, else None."""
    with autocast_context(crops.device, precision):
        logits = model(crops)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:  # fp16 gradients would underflow unscaled; an overflowing step is skipped
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    if max_norm > 0:
        clip_conv1(model, max_norm)
    return logits, loss
