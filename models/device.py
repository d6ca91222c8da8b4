"""Compute devices: validate a device string and check that this machine has it."""

from __future__ import annotations

import re

import torch

__all__ = ["resolve_device"]

_DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def resolve_device(device: str | torch.device) -> torch.device:
    """Validate a device string (``cpu``, ``cuda``, ``cuda:N`` or ``mps``) and check it exists.

    Raises
    ------
    ValueError
        For any other string, or a device this machine does not have.
    """
    name = str(device)
    if not _DEVICE_PATTERN.match(name):
        raise ValueError(f"device must be one of 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only "
                             f"{torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available")
    return torch.device(name)
