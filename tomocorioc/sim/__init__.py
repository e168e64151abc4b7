"""tomocorioc.sim: simulated DXfile scans with a known centre of rotation.

* :class:`SimConfig`, :func:`simulate_scan`, :func:`simulate_series` write
  HDF5 scans (``/exchange/data``, ``data_white``, ``data_dark``, ``theta``)
  and record the truth only in ``truth.json`` beside them.
* :func:`project` gives exact pixel-averaged line integrals of an analytic
  phantom (:func:`make_phantom`) for sinograms without any file.
* :func:`add_simulate_arguments` / :func:`run_simulate` are the CLI.

Geometry: ``t = cor + x cos(theta) + y sin(theta)`` in detector pixels,
column ``j`` covers ``[j, j + 1)``, so ``cor = ncols / 2`` is a centred axis.
"""
from tomocorioc.sim.command import add_simulate_arguments, run_simulate
from tomocorioc.sim.phantoms import PHANTOMS, Cylinder, Ellipsoid, Phantom, evaluate, make_phantom
from tomocorioc.sim.projector import line_integrals, max_line_integral, normalised, project
from tomocorioc.sim.scan import (
                   TRUTH_FILE,
                   SimConfig,
                   build_phantom,
                   merge_truth,
                   read_truth,
                   simulate_scan,
                   simulate_series,
                   write_scan,
)

__all__ = [
    "PHANTOMS",
    "TRUTH_FILE",
    "Cylinder",
    "Ellipsoid",
    "Phantom",
    "SimConfig",
    "add_simulate_arguments",
    "build_phantom",
    "evaluate",
    "line_integrals",
    "make_phantom",
    "max_line_integral",
    "merge_truth",
    "normalised",
    "project",
    "read_truth",
    "run_simulate",
    "simulate_scan",
    "simulate_series",
    "write_scan",
]
