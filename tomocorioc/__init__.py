"""tomocorioc: automatic centre-of-rotation (COR) and reconstruction pipeline.

The package is layered: ``tomocorioc.core`` is pure Python/numpy (job model,
COR maths, output layout) and imports neither EPICS nor torch; ``data``,
``recon``, ``cor``, ``sim`` and ``ai`` do the numerical work; ``cli`` is the
command-line front end.
"""

__version__ = "0.1.0"
