"""Choose the reconstruction backend a worker uses (torch here, tomocupy at the beamline)."""
from __future__ import annotations

from typing import Optional

from tomocorioc.worker.recon.base import Backend
from tomocorioc.worker.recon.tomocupy_backend import TomocupyBackend, find_tomocupy

BACKENDS = ("auto", "torch", "tomocupy")


def make_backend(name: str, tomocupy: Optional[str] = None, device: Optional[str] = None) -> Backend:
    """The reconstruction backend by name ('auto' prefers tomocupy when installed)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "tomocupy" or (name == "auto" and find_tomocupy(tomocupy)):
        return TomocupyBackend(tomocupy)
    from tomocorioc.worker.recon.torch_backend import TorchBackend  # local: tomocupy hosts need no torch FBP
    return TorchBackend(device)


__all__ = ["make_backend", "BACKENDS"]
