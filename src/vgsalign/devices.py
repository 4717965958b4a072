"""The torch device of a stage, from a ``device`` parameter (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device parameter that names a device this machine does not have."""


def resolve_device(name: str, key: str) -> torch.device:
    """Return the torch device for parameter ``key`` set to ``name`` (``auto``: CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{key} is {name!r} but no CUDA device is available; set {key} to auto or cpu")
    return device
