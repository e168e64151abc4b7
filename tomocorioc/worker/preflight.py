"""What a worker checks before it takes jobs, runnable on its own in a short-lived process.

``python -m tomocorioc.worker.preflight [--backend NAME] [--tomocupy PATH] [--model PATH]``
prints one line — ``ok`` or the reason — and exits 0 or 1.  The CLI and the
IOC call it through :func:`tomocorioc.service.preflight.preflight`, so a
missing tomocupy or a bad checkpoint is a usage error up front, while their
own process never imports torch.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def check(backend: str = "torch", tomocupy: Optional[str] = None, model: Optional[str] = None) -> Optional[str]:
    """None when a worker could run these options, else a one-line reason."""
    if backend == "tomocupy":
        from tomocorioc.worker.recon.tomocupy_backend import find_tomocupy
        if not find_tomocupy(tomocupy):
            return "tomocupy program not found (install tomocupy or pass --tomocupy PATH)"
    elif backend not in ("auto", "torch"):
        return f"unknown backend {backend!r} (auto, torch, tomocupy)"
    if model:
        from tomocorioc.worker.ai import CheckpointError, load_checkpoint
        try:
            load_checkpoint(model)
        except (CheckpointError, OSError, ValueError, RuntimeError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"{model}: {text}" if model not in text else text
    return None


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry: print 'ok' or the reason."""
    ap = argparse.ArgumentParser(prog="python -m tomocorioc.worker.preflight")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--tomocupy")
    ap.add_argument("--model")
    args = ap.parse_args(argv)
    reason = check(args.backend, args.tomocupy, args.model)
    sys.stdout.write((reason or "ok") + "\n")
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main())
