"""``tomocorioc simulate``: write a series of simulated scans plus ``truth.json``."""
from __future__ import annotations

import argparse
import logging
import time

from tomocorioc.sim.phantoms import PHANTOMS
from tomocorioc.sim.scan import SimConfig, simulate_series

log = logging.getLogger(__name__)


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    d = SimConfig()
    parser.add_argument("outdir", metavar="OUTDIR", help="folder for the .h5 files and truth.json")
    parser.add_argument("--n", type=int, default=1, help="number of scans in the series (default 1)")
    parser.add_argument("--width", type=int, default=d.ncols, help=f"detector columns (default {d.ncols})")
    parser.add_argument("--rows", type=int, default=d.nrows, help=f"detector rows (default {d.nrows})")
    parser.add_argument("--nproj", type=int, default=d.nproj, help=f"planned projections (default {d.nproj})")
    parser.add_argument("--offset", type=float, default=d.offset,
                        help="rotation-axis offset from the detector centre in px; COR = width/2 + offset")
    parser.add_argument("--theta-range", type=float, default=None, choices=(180.0, 360.0),
                        help="rotation range in degrees: 180 or 360 (default 180)")
    parser.add_argument("--axis-offset", type=float, default=None, metavar="PX",
                        help="360-degree scan with the axis PX from the detector centre, near an edge "
                             "(negative: left); the sample is wider than the detector (double field of "
                             "view); COR = width/2 + PX; implies --theta-range 360; not with --offset")
    parser.add_argument("--offset-jitter", type=float, default=None,
                        help="uniform random COR jitter per scan, +-px (default 0.3 for a series, 0 for one scan)")
    parser.add_argument("--noise", type=float, default=d.noise,
                        help=f"photons per pixel in the flat field; 0 = noiseless (default {d.noise:g})")
    parser.add_argument("--rings", type=float, default=d.rings,
                        help="relative per-column gain error in the projections only (ring artefacts), e.g. 0.01")
    parser.add_argument("--zingers", type=float, default=d.zingers,
                        help="fraction of projection pixels hit by zingers, e.g. 1e-4")
    parser.add_argument("--fov-ratio", type=float, default=None, metavar="R",
                        help="sample diameter / detector width; > 1 = a sample wider than the field of view "
                             "(local tomography; default: the sample fits)")
    parser.add_argument("--phantom", default=d.phantom, choices=sorted(PHANTOMS),
                        help=f"sample kind (default {d.phantom})")
    parser.add_argument("--series", default="sample", metavar="NAME",
                        help="file-name prefix: NAME_0001.h5, NAME_0002.h5 ... (default sample)")
    parser.add_argument("--no-endpoint", dest="endpoint", action="store_false",
                        help="theta in [0, 180) instead of [0, 180]")
    parser.add_argument("--flats", type=int, default=d.nflat, help=f"flat-field frames (default {d.nflat})")
    parser.add_argument("--darks", type=int, default=d.ndark, help=f"dark-field frames (default {d.ndark})")
    parser.add_argument("--contiguous", action="store_true",
                        help="contiguous /exchange/data instead of one chunk per frame")
    parser.add_argument("--aborted-index", type=int, default=None, metavar="I",
                        help="0-based index of a scan that is aborted (fewer frames, no theta)")
    parser.add_argument("--abort-fraction", type=float, default=d.abort_fraction,
                        help=f"fraction of projections an aborted scan writes (default {d.abort_fraction:g})")
    parser.add_argument("--outlier-index", type=int, default=None, metavar="I",
                        help="0-based index of a scan whose COR jumps by --outlier-jump")
    parser.add_argument("--outlier-jump", type=float, default=30.0, metavar="PX",
                        help="outlier COR jump in px (default 30)")
    parser.add_argument("--tilt", type=float, default=d.tilt, metavar="DEG",
                        help="camera tilt: the axis drifts with the row; DEG is the --rotate-proj-angle "
                             "(tomocupy, counter-clockwise) that straightens it (default 0)")
    parser.add_argument("--seed", type=int, default=d.seed, help="sample/instrument seed (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="simulation threads (default: up to 4 cores)")


def run_simulate(args: argparse.Namespace) -> int:
    """Run ``tomocorioc simulate``; 0 on success, 2 on bad arguments, 1 on I/O errors."""
    jitter = args.offset_jitter
    if jitter is None:
        jitter = 0.3 if args.n > 1 else 0.0
    try:
        offset, half = args.offset, args.axis_offset is not None
        theta_range = args.theta_range if args.theta_range is not None else 180.0
        if half:
            if args.offset != 0.0:
                raise ValueError("give --offset or --axis-offset, not both")
            if args.theta_range not in (None, 360.0):
                raise ValueError("--axis-offset needs --theta-range 360")
            offset, theta_range = args.axis_offset, 360.0
        config = SimConfig(ncols=args.width, nrows=args.rows, nproj=args.nproj, offset=offset,
                           theta_range=theta_range, half_acquisition=half,
                           noise=args.noise, phantom=args.phantom, rings=args.rings, zingers=args.zingers,
                           endpoint=args.endpoint, nflat=args.flats, ndark=args.darks, seed=args.seed,
                           abort_fraction=args.abort_fraction, chunked=not args.contiguous,
                           tilt=args.tilt, fov_ratio=args.fov_ratio)
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        start = time.perf_counter()
        truths = simulate_series(args.outdir, config, args.n, name=args.series,
                                 outlier_index=args.outlier_index, outlier_jump=args.outlier_jump,
                                 aborted_index=args.aborted_index, offset_jitter=jitter, workers=args.workers)
    except ValueError as exc:
        log.error("simulate: error: %s", exc)
        return 2
    except OSError as exc:
        log.error("simulate: cannot write to %s: %s", args.outdir, exc)
        return 1
    log.info("simulate: wrote %d scan(s) to %s in %.1f s (truth in truth.json)", len(truths), args.outdir,
             time.perf_counter() - start)
    return 0
