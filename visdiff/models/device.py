"""Where a model runs and in which float type: one place for the GPU/CPU fallback rules."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_warned: set[str] = set()


def pick_device(num_gpus: float) -> torch.device:
    """CUDA only when the actor was given GPUs *and* one is visible; a CPU actor never grabs one."""
    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def torch_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """Half precision is a GPU optimisation; on CPU it is slow or unsupported, so use fp32."""
    if precision not in _DTYPES:
        raise ValueError(f"precision '{precision}' is not one of: {', '.join(_DTYPES)}")
    dtype = _DTYPES[precision]
    if torch.device(device).type != "cuda" and dtype != torch.float32:
        if precision not in _warned:
            _warned.add(precision)
            logger.warning("precision=%s needs a GPU; running in fp32 on CPU instead", precision)
        return torch.float32
    return dtype


def precision_name(dtype: torch.dtype) -> str:
    """Inverse of `torch_dtype` for libraries (open_clip) that take the string form."""
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}")
