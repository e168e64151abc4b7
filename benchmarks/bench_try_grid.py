#!/usr/bin/env python3
"""Try-grid speed: one sinogram, 200 candidate centres, three FBP implementations.

The same simulated sinogram (exact line integrals of an analytic phantom from
``tomocorioc.sim.project``) is reconstructed at the same 200 candidate centres
(search width 50 px, step 0.5 px, the CLI defaults) by

(a) tomocorioc's batched torch try: ``fbp.try_batches`` with the batch size the
    torch backend uses (``TorchBackend().try_batch_size``), all 200 centres;
(b) algotom's CPU FBP (``algotom.rec.reconstruction.fbp_reconstruction``,
    ``gpu=False``, numba), called once per centre;
(c) scikit-image's ``iradon`` once per centre.  ``iradon`` has no centre
    argument: its axis is the detector pixel ``n // 2`` (tomocorioc coordinate
    ``n // 2 + 0.5``), so each centre costs a ``scipy.ndimage.shift`` (linear)
    of the sinogram that moves the axis there, included in the time.

The competitors are called per centre in a loop; when that would take longer
than ``--budget`` seconds, only an evenly spread subset of the centres is
timed and the time is extrapolated per centre to 200 (the table says how many
were timed).  tomocorioc always runs all 200.  The competitors' centres are
interleaved with tomocorioc's batches (after each batch, a share of each
competitor's centres), so all methods see the same machine load; ratios
(method / tomocorioc) are measured in the same run and time windows, absolute
seconds are not comparable between runs.  Optional diagnostic rows time
tomocorioc with a forced batch size (``--batch-sweep``), after the others.

Accuracy: for a few centres the tomocorioc try images are compared with
``tomocorioc.worker.recon.reference.reference_fbp`` (plain float64 numpy, one angle at
a time): max |torch - reference| / max |reference|.

Usage: ``python benchmarks/bench_try_grid.py [--quick]``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from _common import load_average, machine_description  # this folder is on sys.path (run as a script)

from tomocorioc.core import layout
from tomocorioc.sim import make_phantom, normalised, project
from tomocorioc.worker.recon import fbp
from tomocorioc.worker.recon.reference import reference_fbp
from tomocorioc.worker.recon.torch_backend import TorchBackend

FILTER = "parzen"          # tomocorioc's default FBP filter
SEARCH_WIDTH = 50.0        # CLI default --search-width
SEARCH_STEP = 0.5          # CLI default --search-step
AXIS_OFFSET = 3.3          # true COR = n/2 + this (irrelevant for timing)


@dataclass
class Timing:
    """Time of one method on one size."""

    method: str
    timed: int                 # centres actually reconstructed inside the timer
    seconds: float             # measured wall time for those centres
    total: int                 # centres in the grid (200)
    note: str = ""
    extra: Dict[str, float] = field(default_factory=dict)

    @property
    def per_grid(self) -> float:
        """Seconds for the whole grid (extrapolated per centre when a subset was timed)."""
        return self.seconds / max(1, self.timed) * self.total


def thread_counts() -> str:
    """The sizes of torch's and numba's thread pools (load on the 2 cores hits them differently)."""
    import numba
    return f"torch threads {torch.get_num_threads()}, numba threads {numba.config.NUMBA_NUM_THREADS}"


def make_sinogram(n: int, nproj: int, cor: float, phantom: str = "shepp3d",
                  seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """A noiseless (nproj, n) float32 sinogram of the simulator's phantom, angles over [0, 180)."""
    radius = min(cor, n - cor) - 2.0
    ph = normalised(make_phantom(phantom, radius, 1, seed), 1, 1.5)
    theta = np.linspace(0.0, math.pi, nproj, endpoint=False)
    sino = project(ph, theta, n, 1, cor)[:, 0, :]
    return theta, np.ascontiguousarray(sino, dtype=np.float32)


def subset(count: int, k: int) -> List[int]:
    """``k`` indices spread evenly over ``range(count)`` (all of them when k >= count)."""
    if k >= count:
        return list(range(count))
    return sorted(set(int(round(x)) for x in np.linspace(0, count - 1, k)))


def time_tomocorioc(sino: np.ndarray, theta: np.ndarray, centers: np.ndarray, keep: Sequence[int],
                    batch: Optional[int] = None) -> Tuple[Timing, Dict[int, np.ndarray]]:
    """All centres through ``fbp.try_batches``; returns the timing and the images at ``keep``.

    ``batch`` None is the backend's own choice (the reference); a number is a diagnostic.
    """
    n, nproj = sino.shape[1], sino.shape[0]
    own = batch is None
    if batch is None:
        batch = TorchBackend(device="cpu").try_batch_size(n, nproj)
    kept: Dict[int, np.ndarray] = {}
    t0 = time.perf_counter()
    geom = fbp.FBPGeometry.create(n, theta, "cpu")
    row = torch.from_numpy(sino)
    done = 0
    for chunk, images in fbp.try_batches(row, geom, FILTER, centers, batch):
        for i in range(len(chunk)):
            if done + i in keep:
                kept[done + i] = images[i].numpy().copy()
        done += len(chunk)
    dt = time.perf_counter() - t0
    nb = math.ceil(len(centers) / batch)
    name = f"tomocorioc try (torch, batch {batch}, {nb} batches)"
    note = "" if own else "diagnostic: batch size forced (not what the backend picks); run after, not interleaved"
    tm = Timing(name if own else "(diagnostic) " + name, len(centers), dt, len(centers), note)
    tm.extra["batch"] = float(batch)
    return tm, kept


@dataclass
class Competitor:
    """A per-centre FBP timed on a subset of the grid, interleaved with tomocorioc's batches."""

    method: str
    one: Callable[[float], np.ndarray]
    note: str
    indices: List[int] = field(default_factory=list)
    seconds: float = 0.0
    done: int = 0

    def size(self, centers: np.ndarray, budget: float, min_count: int) -> None:
        """Probe one centre (untimed) and choose how many centres fit in ``budget`` seconds."""
        t0 = time.perf_counter()
        self.one(float(centers[len(centers) // 2]))
        first = time.perf_counter() - t0
        want = int(max(min_count, min(len(centers), budget // max(first, 1e-6))))
        self.indices = subset(len(centers), want)

    def run(self, centers: np.ndarray, indices: Sequence[int]) -> None:
        """Reconstruct ``centers[indices]`` one at a time, adding to the timing."""
        for i in indices:
            t0 = time.perf_counter()
            self.one(float(centers[i]))
            self.seconds += time.perf_counter() - t0
            self.done += 1

    def timing(self, total: int) -> Timing:
        """The result row."""
        note = self.note
        if self.done < total:
            note = (note + "; " if note else "") + f"{self.done} of {total} centres timed, extrapolated per centre"
        return Timing(self.method, self.done, self.seconds, total, note)


def algotom_competitor(sino: np.ndarray, theta: np.ndarray) -> Competitor:
    """algotom ``fbp_reconstruction(gpu=False)`` per centre (algotom COR = tomocorioc COR - 0.5)."""
    from algotom.rec import reconstruction as rec
    n, nproj = sino.shape[1], sino.shape[0]
    pad = min(int(0.15 * n), 150)  # algotom's own default padding
    ramp_win = rec.make_2d_ramp_window(nproj, n + 2 * pad, FILTER)  # built once, reused for every centre
    s32 = np.asarray(sino, dtype=np.float32)

    def one(c: float) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rec.fbp_reconstruction(s32, c - 0.5, angles=theta, ratio=None, ramp_win=ramp_win,
                                          filter_name=FILTER, pad=pad, apply_log=False, gpu=False)

    t0 = time.perf_counter()
    one(float(n / 2.0))  # numba JIT compile: not timed
    return Competitor("algotom fbp_reconstruction (CPU, numba)", one,
                      f"JIT compile {time.perf_counter() - t0:.1f} s excluded")


def skimage_competitor(sino: np.ndarray, theta: np.ndarray) -> Competitor:
    """scikit-image ``iradon`` per centre after shifting the axis to its pixel ``n // 2``."""
    from scipy import ndimage
    from skimage.transform import iradon
    n = sino.shape[1]
    deg = np.rad2deg(theta)
    s64 = np.asarray(sino, dtype=np.float64)

    def one(c: float) -> np.ndarray:
        # iradon's axis sits on pixel n//2, i.e. tomocorioc coordinate n//2 + 0.5.
        shifted = ndimage.shift(s64, (0.0, n // 2 + 0.5 - c), order=1, mode="nearest")
        return iradon(shifted.T, deg, output_size=n, filter_name="hann", interpolation="linear", circle=True)

    return Competitor("scikit-image iradon + ndimage.shift", one, "single-threaded")


def run_interleaved(sino: np.ndarray, theta: np.ndarray, centers: np.ndarray, keep: Sequence[int],
                    competitors: Sequence[Competitor]) -> Tuple[Timing, Dict[int, np.ndarray]]:
    """tomocorioc's try over all centres, with a share of each competitor's centres after every batch.

    Interleaving puts every method in the same time windows, so a change of
    machine load during the run hits them alike.  Only the work inside each
    method's calls is timed.  Returns tomocorioc's timing and its images at ``keep``.
    """
    n, nproj = sino.shape[1], sino.shape[0]
    batch = TorchBackend(device="cpu").try_batch_size(n, nproj)
    nb = math.ceil(len(centers) / batch)
    shares = [np.array_split(np.asarray(c.indices, dtype=np.int64), nb) for c in competitors]
    kept: Dict[int, np.ndarray] = {}
    t0 = time.perf_counter()
    geom = fbp.FBPGeometry.create(n, theta, "cpu")
    batches = fbp.try_batches(torch.from_numpy(sino), geom, FILTER, centers, batch)
    t_tomo = time.perf_counter() - t0
    done = 0
    for b in range(nb):
        t0 = time.perf_counter()
        chunk, images = next(batches)
        t_tomo += time.perf_counter() - t0
        for i in range(len(chunk)):
            if done + i in keep:
                kept[done + i] = images[i].numpy().copy()
        done += len(chunk)
        del images
        for comp, share in zip(competitors, shares):
            comp.run(centers, [int(i) for i in share[b]])
    tm = Timing(f"tomocorioc try (torch, batch {batch}, {nb} batches)", done, t_tomo, len(centers))
    tm.extra["batch"] = float(batch)
    return tm, kept


def accuracy(sino: np.ndarray, theta: np.ndarray, centers: np.ndarray,
             kept: Dict[int, np.ndarray]) -> List[Tuple[float, float]]:
    """(centre, max|torch - reference| / max|reference|) for each kept tomocorioc image."""
    out = []
    for i, img in sorted(kept.items()):
        ref = reference_fbp(sino.astype(np.float64), theta, float(centers[i]), FILTER)
        out.append((float(centers[i]), float(np.abs(img - ref).max() / np.abs(ref).max())))
    return out


def run_size(n: int, nproj: int, budget: float, min_count: int, n_accuracy: int, skip: Sequence[str],
             extra_batches: Sequence[int] = ()) -> Tuple[List[Timing], List[Tuple[float, float]]]:
    """All methods on one sinogram size; returns timings and accuracy rows."""
    cor = n / 2.0 + AXIS_OFFSET
    theta, sino = make_sinogram(n, nproj, cor)
    centers = layout.candidate_centers(n / 2.0, SEARCH_WIDTH, SEARCH_STEP)
    truth_idx = int(np.argmin(np.abs(centers - cor)))
    keep = [0, truth_idx, len(centers) - 1][:max(1, n_accuracy)]
    if n_accuracy > 3:
        keep += subset(len(centers), n_accuracy)
    keep = sorted(set(keep))
    print(f"\n[{n}x{nproj}] {len(centers)} centres {centers.min():.2f}..{centers.max():.2f}; {load_average()}",
          flush=True)
    competitors: List[Competitor] = []
    if "algotom" not in skip:
        competitors.append(algotom_competitor(sino, theta))
    if "skimage" not in skip:
        competitors.append(skimage_competitor(sino, theta))
    for comp in competitors:
        comp.size(centers, budget, min_count)
    tm, kept = run_interleaved(sino, theta, centers, keep, competitors)
    timings: List[Timing] = [tm]
    print(f"  {tm.method}: {tm.seconds:.1f} s", flush=True)
    for comp in competitors:
        timings.append(comp.timing(len(centers)))
        print(f"  {comp.method}: {comp.seconds:.1f} s for {comp.done} centres", flush=True)
    for b in extra_batches:
        if b == tm.extra.get("batch"):
            continue
        dtm, _ = time_tomocorioc(sino, theta, centers, [], batch=b)
        timings.append(dtm)
        print(f"  {dtm.method}: {dtm.seconds:.1f} s", flush=True)
    acc = accuracy(sino, theta, centers, kept)
    return timings, acc


def warm_up() -> None:
    """Load torch/MKL kernels on a tiny problem so the first size does not pay for it."""
    theta, sino = make_sinogram(64, 32, 32.0)
    geom = fbp.FBPGeometry.create(64, theta, "cpu")
    for _ in fbp.try_batches(torch.from_numpy(sino), geom, FILTER, [31.5, 32.0, 32.5], 3):
        pass


def print_table(results: List[Tuple[str, List[Timing], List[Tuple[float, float]]]]) -> None:
    """The speed table (ratios vs tomocorioc) and the accuracy table."""
    print("\nTry-grid speed (200 candidate centres, W=50, step 0.5; ratio = method time / tomocorioc time, "
          ">1 means tomocorioc is faster)\n")
    cols = ("size (n x nproj)", "method", "centres timed", "s measured", "s / 200 centres",
            "ratio vs tomocorioc", "note")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join(["---"] * len(cols)) + "|")
    for size, timings, _ in results:
        ref = timings[0].per_grid
        for tm in timings:
            print(f"| {size} | {tm.method} | {tm.timed} | {tm.seconds:.1f} | {tm.per_grid:.1f} "
                  f"| {tm.per_grid / ref:.2f} | {tm.note} |")
    print("\nAccuracy of the tomocorioc try images vs reference_fbp (plain float64 numpy FBP)\n")
    print("| size (n x nproj) | centre | max abs(torch - ref) / max abs(ref) |")
    print("|---|---|---|")
    for size, _, acc in results:
        for c, err in acc:
            print(f"| {size} | {c:.2f} | {err:.2e} |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse arguments, run every size, print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and short budgets (< 2 min)")
    ap.add_argument("--sizes", help="comma list of NxNPROJ, e.g. 512x360,1024x720 (default: 512x360,1024x720; "
                                    "--quick: 256x180,512x360)")
    ap.add_argument("--budget", type=float, help="seconds per competitor per size before extrapolating "
                                                 "(default 60; --quick 8)")
    ap.add_argument("--accuracy-centres", type=int, default=3, help="centres checked against the reference")
    ap.add_argument("--skip", default="", help="comma list of competitors to skip: algotom,skimage")
    ap.add_argument("--batch-sweep", help="comma list of forced tomocorioc batch sizes timed as diagnostics "
                                          "(default 200 = the whole grid in one batch; --quick: none)")
    args = ap.parse_args(argv)
    sizes_arg = args.sizes or ("256x180,512x360" if args.quick else "512x360,1024x720")
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in sizes_arg.split(",") if s.strip()]
    too_small = [n for n, _ in sizes if n <= 2 * SEARCH_WIDTH + 2]
    if too_small:
        ap.error(f"width {too_small[0]} is too small for a +-{SEARCH_WIDTH:g} px grid inside the detector")
    budget = args.budget if args.budget is not None else (8.0 if args.quick else 60.0)
    min_count = 2 if args.quick else 3
    skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    sweep_arg = args.batch_sweep if args.batch_sweep is not None else ("" if args.quick else "200")
    sweep = [int(b) for b in sweep_arg.split(",") if b.strip()]
    print(f"bench_try_grid: python {' '.join(sys.argv)}")
    print(machine_description(("torch", "numpy", "scipy", "algotom", "scikit-image", "numba"), thread_counts()))
    print(load_average())
    t_all = time.perf_counter()
    warm_up()
    results = []
    for n, nproj in sizes:
        timings, acc = run_size(n, nproj, budget, min_count, args.accuracy_centres, skip, sweep)
        results.append((f"{n} x {nproj}", timings, acc))
    print_table(results)
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
