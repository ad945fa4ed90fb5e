"""Device and precision choices, shared by main.py, test.py and bench.py."""
import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device(name):
    """'auto' (cuda if available, else cpu), 'cpu' or 'cuda' -> torch.device.

    Raises SystemExit with one line when cuda is asked for but absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available; use --device cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def pick_precision(name, device):
    """'auto' -> 'bf16' on a GPU or CPU with native bf16 (fp16 on an older GPU), else 'fp32';
    any other name is returned as it is."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.backends.mkldnn.is_available() and \
        torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def autocast_context(device, precision):
    """torch.autocast for 'bf16'/'fp16' on ``device``; a disabled one for 'fp32'."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
