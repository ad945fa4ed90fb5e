"""Device and precision choices, shared by main.py, test.py and bench.py, and how a worker
process of a CPU pool starts."""
import ctypes
import os
import signal
import sys
import warnings

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


def checked_worker_count(worker_count):
    """``-j worker_count`` -> worker_count, after a one-line warning where it asks for more
    threads or processes than this machine's CPU cores: they would take turns on the cores,
    and run slower, not faster."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores and worker_count > cores:
        warnings.warn(f"-j {worker_count} is more than the {cores} CPU cores this process may "
                      f"use: the extra workers take turns on them and slow the work down; "
                      f"-j {cores} is the most that helps here")
    return worker_count


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


def keep_freed_memory():
    """Ask glibc's malloc to keep the memory a process frees for its next allocations rather
    than hand large blocks back to the kernel, which gives them back zeroed, a page fault per
    page. A CPU training step frees and allocates hundreds of MB of activations: MrCNN trains
    about 10% faster with this on a 2-core Intel Xeon. The process keeps its peak memory.
    Returns whether it took effect (not on other C libraries or systems)."""
    if not sys.platform.startswith("linux"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and
                    libc.mallopt(m_trim_threshold, 2 ** 31 - 1))
    except (OSError, AttributeError):  # another C library
        return False


def init_pool_worker():
    """Initialiser of a multiprocessing pool's workers: one torch thread each (a forked child
    must not reuse the parent's thread pool, and the workers share the cores), and Ctrl-C left
    to the parent, which stops the pool: the terminal sends it to every process, and each
    worker would print a traceback of its own."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
