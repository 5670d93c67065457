"""Where and in what precision the computation runs: one place for both training loops and inference.

The frozen backbone may be stored in bf16 or fp16 (`dtype`), and the forward pass may run under
autocast (`precision`); trained weights (the prompt's master copy) stay fp32 either way.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .errors import SoftpromptError

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str) -> torch.device:
    """"auto" means CUDA when there is one; raises SoftpromptError for a device this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SoftpromptError(f"device={name!r} is not a device name (auto, cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SoftpromptError(f"device={name!r} but no CUDA device is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SoftpromptError(f"device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu" and not _available(device):
        raise SoftpromptError(f"device={name!r} is not available on this machine")
    return device


def _available(device: torch.device) -> bool:
    module = getattr(torch, device.type, None)
    return bool(module is not None and getattr(module, "is_available", lambda: False)())


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """The storage dtype `name` on `device`; raises SoftpromptError where the device cannot run it."""
    if name not in TORCH_DTYPES:
        raise SoftpromptError(f"dtype={name!r}; use one of {', '.join(TORCH_DTYPES)}")
    if name == "fp16" and device.type == "cpu":
        raise SoftpromptError("dtype='fp16' runs on CUDA only; on the CPU use bf16 or fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SoftpromptError(f"dtype='bf16' is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    return TORCH_DTYPES[name]


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for the forward pass: bf16/fp16 where asked, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    torch_dtype(precision, device)  # refuses what the device cannot run
    return torch.autocast(device.type, dtype=TORCH_DTYPES[precision])


def enable_tf32(device: torch.device) -> None:
    """TF32 matmuls on CUDA: fp32 accuracy is not needed for these products, speed is."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def make_deterministic() -> None:
    """Deterministic kernels and one intra-op thread: the same inputs give the same bits, run after run.

    On the CPU, thread scheduling alone moves a trained prompt by ~1e-6 between two identical runs;
    one thread removes that. cuBLAS needs its workspace fixed before its first call.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(1)


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of a batch moved to `device`; other entries (prompt names) as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
