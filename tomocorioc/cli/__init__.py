"""The command line (``tomocorioc ...``): the only layer that prints; nothing imports it."""
from tomocorioc.cli.main import main

__all__ = ["main"]
