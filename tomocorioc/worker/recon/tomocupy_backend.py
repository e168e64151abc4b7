"""The tomocupy backend: exact command lines, run as subprocesses, judged by outputs.

tomocupy reads ``~/tomocupyon.conf`` and merges it under the command line, so
a value a user once saved would silently change our reconstructions.  We pass
every parameter explicitly *and* point ``--config`` at an empty per-run file.
tomocupy exits 0 even when its input is missing, so success is decided only by
the slices it leaves on disk.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

from tomocorioc.core import geometry as geo
from tomocorioc.core import layout
from tomocorioc.core.params import ReconParams
from tomocorioc.data.dxfile import DXFile
from tomocorioc.worker.recon.base import (
    FullOutput,
    Progress,
    ReconError,
    TryOutput,
    check_full_outputs,
    check_try_outputs,
    write_json,
)

log = logging.getLogger(__name__)

TOMOCUPY_STRIPE = ("none", "fw", "ti", "vo-all")
# ``tomocupy recon_steps`` (the only command that rotates projections) knows fewer algorithms.
STEPS_ALGORITHMS = ("fourierrec", "linerec")


def subcommand(params: ReconParams) -> str:
    """``recon``, or ``recon_steps`` when projections must be rotated (plain ``recon`` ignores the angle)."""
    return "recon_steps" if params.rotate_proj_angle else "recon"


def find_tomocupy(explicit: Optional[str] = None) -> Optional[str]:
    """Path of the ``tomocupy`` program (explicit, $TOMOCUPY, or PATH), or None."""
    for cand in (explicit, os.environ.get("TOMOCUPY")):
        if cand:
            return cand if os.path.sep in cand else shutil.which(cand)
    return shutil.which("tomocupy")


def _file_type(geometry: str) -> str:
    """tomocupy's ``--file-type`` for a scan geometry (double_fov: the axis near an edge of a 360° scan)."""
    return "double_fov" if geometry == geo.OFFSET else "standard"


def _with_file_type(args: List[str], geometry: str) -> List[str]:
    """``args`` with ``--file-type`` set for the geometry."""
    out = list(args)
    if "--file-type" in out:
        out[out.index("--file-type") + 1] = _file_type(geometry)
    else:
        out += ["--file-type", _file_type(geometry)]
    return out


def _common(params: ReconParams) -> List[str]:
    if params.remove_stripe_method not in TOMOCUPY_STRIPE:
        raise ReconError(f"tomocupy has no ring removal {params.remove_stripe_method!r} "
                         f"(tomocupy: {', '.join(TOMOCUPY_STRIPE)})")
    steps = subcommand(params) == "recon_steps"
    if steps and params.reconstruction_algorithm not in STEPS_ALGORITHMS:
        raise ReconError(f"tomocupy recon_steps (needed to rotate projections by {params.rotate_proj_angle:g}°) "
                         f"has no algorithm {params.reconstruction_algorithm!r} "
                         f"(recon_steps: {', '.join(STEPS_ALGORITHMS)})")
    args = [
        "--file-type", "standard",
        "--binning", str(params.binning),
        "--fbp-filter", params.fbp_filter,
        "--remove-stripe-method", params.remove_stripe_method,
        "--dezinger", str(params.dezinger),
        "--reconstruction-algorithm", params.reconstruction_algorithm,
        "--dtype", params.dtype,
        "--nsino-per-chunk", str(params.nsino_per_chunk),
        "--start-row", "0", "--end-row", "-1",
        "--start-column", "0", "--end-column", "-1",
        "--start-proj", "0", "--end-proj", "-1",
        "--minus-log", "True",
    ]
    if params.dezinger:
        # Only newer tomocupy releases know this flag; it matters only when dezinger is on.
        # tomocupy parses it as an int.
        args += ["--dezinger-threshold", str(max(1, int(round(params.dezinger_threshold))))]
    if steps:
        args += ["--rotate-proj-angle", f"{params.rotate_proj_angle:g}", "--rotate-proj-order", "1"]
    return args


def try_command(scan: Path, params: ReconParams, rotation_axis: float, *, program: str = "tomocupy",
                config: Optional[Path] = None, geometry: str = geo.HALF) -> List[str]:
    """``tomocupy recon[_steps] --reconstruction-type try ...`` as an argument list.

    360-offset: ``--file-type double_fov`` with the axis in the original
    detector's columns (tomocupy stitches; its try names keep those columns).
    """
    width = geo.offset_search_width(params.search_width, geometry)
    cmd = [program, subcommand(params), "--file-name", str(scan), "--reconstruction-type", "try",
           "--rotation-axis-auto", "manual", "--rotation-axis", f"{rotation_axis:g}",
           "--center-search-width", f"{width:g}", "--center-search-step", f"{params.search_step:g}",
           "--nsino", f"{params.nsino:g}", "--save-format", "tiff"]
    cmd += _with_file_type(_common(params), geometry)
    if config is not None:
        cmd += ["--config", str(config)]
    return cmd


def full_command(scan: Path, params: ReconParams, cor: float, *, program: str = "tomocupy",
                 config: Optional[Path] = None, geometry: str = geo.HALF) -> List[str]:
    """``tomocupy recon[_steps] --reconstruction-type full ...`` as an argument list (360-offset: double_fov)."""
    cmd = [program, subcommand(params), "--file-name", str(scan), "--reconstruction-type", "full",
           "--rotation-axis-auto", "manual", "--rotation-axis", f"{cor:g}",
           "--save-format", params.full_format, "--clear-folder", "True"]
    cmd += _with_file_type(_common(params), geometry)
    if config is not None:
        cmd += ["--config", str(config)]
    return cmd


class TomocupyBackend:
    """Runs the ``tomocupy`` program; never trusts its exit code."""

    name = "tomocupy"

    def __init__(self, program: Optional[str] = None, timeout: Optional[float] = None) -> None:
        found = find_tomocupy(program)
        if not found:
            raise ReconError("tomocupy program not found (install tomocupy or pass --tomocupy PATH)")
        self.program = found
        self.timeout = timeout

    def _run(self, cmd_builder, log_path: Path) -> List[str]:
        with tempfile.TemporaryDirectory(prefix="tomocorioc-") as td:
            conf = Path(td) / "tomocupyon.conf"
            conf.write_text("")  # an empty config: no user defaults leak in
            cmd = cmd_builder(conf)
            log.info("running: %s", " ".join(cmd))
            env = dict(os.environ)
            try:
                with open(log_path, "w") as out:
                    proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=td,
                                          timeout=self.timeout, check=False)
            except subprocess.TimeoutExpired:
                raise ReconError(f"tomocupy timed out after {self.timeout:g} s (log: {log_path})") from None
            except OSError as exc:
                raise ReconError(f"cannot run {cmd[0]}: {exc.strerror or exc}") from None
        if proc.returncode != 0:
            log.warning("tomocupy exited %d (log %s); judging by outputs", proc.returncode, log_path)
        return cmd

    def run_try(self, scan_path: Path, params: ReconParams, rotation_axis: float,
                progress: Progress = None, geometry: str = geo.HALF) -> TryOutput:
        """Run a tomocupy try and verify the slices it wrote."""
        t0 = time.perf_counter()
        scan_path = Path(scan_path)
        with DXFile(scan_path) as scan:  # fail early and clearly on a bad file
            row = scan.row_index(params.nsino)
        folder = layout.try_dir(scan_path)
        folder.parent.mkdir(parents=True, exist_ok=True)
        for old in layout.list_try_slices(folder) if folder.is_dir() else []:
            old.path.unlink()  # a stale grid must not mix into the new stack
        centers = layout.candidate_centers(rotation_axis, geo.offset_search_width(params.search_width, geometry),
                                           params.search_step)
        log_path = folder.parent / f"{scan_path.stem}.tomocupy_try.log"
        cmd = self._run(lambda conf: try_command(scan_path, params, rotation_axis, program=self.program,
                                                 config=conf, geometry=geometry), log_path)
        found = check_try_outputs(folder, centers)
        row = found[0].row if found else row
        write_json(folder / "tomocorioc_try.json", {"params": params.to_dict(), "digest": params.digest(phase="try"),
                                                    "row": row, "rotation_axis": float(rotation_axis),
                                                    "geometry": geometry, "centers": [float(c) for c in centers],
                                                    "backend": self.name, "command": cmd})
        if progress:
            progress(len(centers), len(centers))
        return TryOutput(folder, row, [float(c) for c in centers], float(rotation_axis),
                         time.perf_counter() - t0, cmd)

    def run_full(self, scan_path: Path, params: ReconParams, cor: float, progress: Progress = None,
                 rows: Optional[Sequence[int]] = None, geometry: str = geo.HALF) -> FullOutput:
        """Run a tomocupy full reconstruction and verify the slices it wrote."""
        if rows:
            raise ReconError("the tomocupy backend reconstructs whole volumes (no row range)")
        t0 = time.perf_counter()
        scan_path = Path(scan_path)
        with DXFile(scan_path) as scan:
            expected = scan.nrows // (2 ** params.binning)
        target = layout.full_dir(scan_path)
        if params.full_format == "h5":
            target = target.with_suffix(".h5")
        target.parent.mkdir(parents=True, exist_ok=True)
        log_path = target.parent / f"{scan_path.stem}.tomocupy_full.log"
        cmd = self._run(lambda conf: full_command(scan_path, params, cor, program=self.program, config=conf,
                                                  geometry=geometry), log_path)
        n = check_full_outputs(target, expected)
        if progress:
            progress(n, expected)
        return FullOutput(target, n, float(cor), time.perf_counter() - t0, cmd)
