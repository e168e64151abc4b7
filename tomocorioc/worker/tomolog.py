"""Publish a dataset to a Google Slides log with TomoLog, and always write a local summary.

TomoLog (``xray-imaging/tomolog-cli``) is run as a subprocess with an exact
argument list.  Three facts about it, read from its source, shape this module:

* **Config leakage.**  ``config.parse_known_args`` (``src/tomolog_cli/config.py``)
  prepends every value stored in ``~/logs/tomolog.conf`` to the command line,
  and ``run_log`` (``src/tomolog_cli/__main__.py``) rewrites that file after
  every run with the run's ``file-reading`` and ``parameters`` sections
  (beamline, file-name, min, max, presentation-url, cloud-service, count).
  A ``--min`` from yesterday's run would silently be today's contrast.  We
  pass every flag explicitly *and* point ``--config`` at an empty per-run file
  in a private folder (which is also the working directory, because TomoLog
  writes its ``projection.jpg``/``reconstruction.jpg`` into the cwd).
* **Exit code.**  Its failure paths call ``exit()`` (status 0): a missing
  Google token or presentation URL (``auth.py``/``tomolog.py init_slide``), a
  failed imgur upload (``cloud.py upload``).  A missing reconstruction is only
  a warning (``read_recon``: "Skipping reconstruction") and the slide is
  still made without it.  So the exit code is ignored; see
  :func:`judge_output` for the rule.
* **Auto contrast.**  ``plot_recon`` auto-scales only when ``min == max``; we
  always pass our own 5-95 % range from the middle slice, so the slide and the
  local summary show the same grey levels.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from tomocorioc.core.result import PhaseResult
from tomocorioc.core.tomolog_settings import TomoLogSettings
from tomocorioc.worker.recon.base import ReconError

# auto_contrast and write_summary are re-exported: callers need only this module.
from tomocorioc.worker.summary import (
    SummaryInfo,
    auto_contrast,
    find_volume,
    make_summary,
    open_volume,
    resolve_indices,
    summary_path,
    write_summary,
)

try:  # POSIX only; without it uploads are serialised within one process only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["TomoLogSettings", "TomoLogResult", "Verdict", "auto_contrast", "find_tomolog", "judge_output",
           "run_phase", "run_tomolog", "tomolog_command", "upload_lock", "write_summary"]

DEFAULT_LOCK = Path(tempfile.gettempdir()) / f"tomocorioc-tomolog-{os.getuid() if hasattr(os, 'getuid') else 0}.lock"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RED = "\x1b[91m"                                  # tomolog log.py: ERROR records are printed red
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - ")
_ERRORISH = re.compile(r"\b\w*error\b|❌", re.IGNORECASE)
_URL_LINE = re.compile(r"Image url created\s+(\S+)")


# -- command line and verdict --------------------------------------------------------
def find_tomolog(program: str = "tomolog") -> Optional[str]:
    """Absolute path of the TomoLog program (a path, or a name looked up on PATH), or None."""
    if os.path.sep in program:
        return program if os.path.isfile(program) and os.access(program, os.X_OK) else None
    return shutil.which(program)


def _num(lo: float, hi: float) -> Tuple[str, str]:
    """Short decimal forms of lo/hi that still parse to lo < hi (TomoLog auto-scales if they are equal)."""
    for fmt in ("{:.6g}", "{:.9g}", "{!r}"):
        a, b = fmt.format(float(lo)), fmt.format(float(hi))
        if float(a) < float(b):
            return a, b
    return repr(float(lo)), repr(float(hi))


def tomolog_command(projection_file: Path, settings: TomoLogSettings, vrange: Tuple[float, float],
                    indices: Tuple[int, int, int], *, program: str = "tomolog",
                    config: Optional[Path] = None) -> List[str]:
    """``tomolog run ...`` as an argument list, every flag explicit.

    ``indices`` are ``(idx, idy, idz)`` as TomoLog addresses them (idz = the
    TIFF file number).  Values that may begin with '-' (min, max, note) use
    the ``--flag=value`` form so argparse never mistakes them for options.
    """
    lo, hi = _num(*vrange)
    ix, iy, iz = (int(i) for i in indices)
    cmd = [program, "run"]
    if config is not None:
        cmd += ["--config", str(config)]
    cmd += ["--file-name", str(projection_file),
            "--cloud-service", settings.cloud_service,
            "--presentation-url", settings.presentation_url,
            "--beamline", settings.beamline,
            "--idx", str(ix), "--idy", str(iy), "--idz", str(iz),
            f"--min={lo}", f"--max={hi}"]
    if settings.note:
        # 'note' lives in TomoLog's 'general' section, which it never saves, so
        # leaving it out cannot leak; an empty one would add an empty text box.
        cmd.append(f"--note={settings.note}")
    if settings.public:
        cmd.append("--public")
    return cmd


@dataclass
class Verdict:
    """How a TomoLog run went, judged from its output."""

    success: bool
    reason: str
    image_urls: List[str] = field(default_factory=list)


def _clean(line: str) -> str:
    return _STAMP.sub("", _ANSI.sub("", line)).strip()


def judge_output(output: str, ignore: Sequence[str] = ()) -> Verdict:
    """Decide from TomoLog's console output (stdout + stderr) whether the slide was published.

    Success needs both markers TomoLog prints only at the end of a complete
    slide (``src/tomolog_cli/tomolog.py`` and ``__main__.py``):

    * ``Publish reconstruction`` - logged in ``publish_recon`` right after the
      reconstruction image was uploaded (``cloud.upload`` returned a URL), and
      only when all three orthogonal slices were read;
    * ``publication end`` - the last line of ``run_log``, reached only when no
      ``exit()``/exception cut the run short.

    and none of the failure signs: a line logged at ERROR level (TomoLog's
    console formatter prints those in red, ``\\x1b[91m``), a Python traceback,
    a line naming an error ("Error", "HttpError", "❌", ...), or the warnings
    ``Skipping reconstruction`` / ``No reconstruction found`` (slide made
    without the reconstruction).  ``reason`` is one line: the first error
    message, the exception line of a traceback, or which marker is missing.
    The image URLs come from ``*** Image url created <url>`` (``cloud.upload``).
    """
    raw_lines = output.splitlines()
    lines = [_clean(ln) for ln in raw_lines]
    urls = [m.group(1) for ln in lines for m in [_URL_LINE.search(ln)] if m]

    def scrub(text: str) -> str:   # file names must not look like errors
        for s in ignore:
            if s:
                text = text.replace(s, "")
        return text

    errors = [ln for raw, ln in zip(raw_lines, lines) if _RED in raw and ln]
    if errors:
        return Verdict(False, errors[0], urls)
    heads = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if heads:
        # The exception line is the first unindented line after the last traceback header.
        after = [_ANSI.sub("", ln).rstrip() for ln in raw_lines[heads[-1] + 1:]]
        exc_line = next((ln for ln in after if ln and not ln[0].isspace()), "traceback")
        return Verdict(False, f"TomoLog crashed: {exc_line}", urls)
    for ln in lines:
        if not _URL_LINE.search(ln) and _ERRORISH.search(scrub(ln)):
            return Verdict(False, ln, urls)
    for ln in lines:
        if "Skipping reconstruction" in ln or "No reconstruction found" in ln:
            return Verdict(False, f"slide made without the reconstruction: {ln}", urls)
    published = any(ln.endswith("Publish reconstruction") for ln in lines)
    ended = any(ln.lower().endswith("publication end") for ln in lines)
    if not (published and ended):
        missing = " and ".join(m for m, ok in (("'Publish reconstruction'", published),
                                               ("'publication end'", ended)) if not ok)
        last = next((ln for ln in reversed(lines) if ln), "no output")
        return Verdict(False, f"no {missing} in TomoLog's output (last line: {last[:160]})", urls)
    return Verdict(True, "published", urls)


# -- one upload at a time ------------------------------------------------------------
@contextlib.contextmanager
def upload_lock(lock_path: Optional[Path] = None, timeout: float = 600.0, poll: float = 0.2) -> Iterator[None]:
    """Hold the machine-wide TomoLog lock (one upload at a time across processes); TimeoutError if busy.

    The queue already runs one ``tomolog`` phase at a time; this also covers a
    CLI run beside the service and two services on one host, which would
    otherwise race on the same slide deck and on TomoLog's files in ``~``.
    """
    path = Path(lock_path) if lock_path is not None else DEFAULT_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another TomoLog upload still holds {path} after {timeout:g} s") from None
                time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# -- running ---------------------------------------------------------------------------
@dataclass
class TomoLogResult:
    """One TomoLog run: the verdict, what was run, and its output."""

    success: bool
    reason: str
    command: List[str]
    returncode: Optional[int]
    seconds: float
    output: str = ""
    image_urls: List[str] = field(default_factory=list)
    log_path: Optional[Path] = None


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the TomoLog process and anything it started (it runs in its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_tomolog(projection_file: Path, settings: TomoLogSettings, vrange: Tuple[float, float],
                indices: Tuple[int, int, int], *, log_path: Optional[Path] = None) -> TomoLogResult:
    """Run ``tomolog run`` once (no shell, with a timeout) and judge it by its output."""
    projection_file = Path(projection_file)
    program = find_tomolog(settings.program)
    if program is None:
        return TomoLogResult(False, f"TomoLog program {settings.program!r} not found (install tomolog-cli or "
                                    "set program)", [settings.program], None, 0.0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tomocorioc-tomolog-") as td:
        conf = Path(td) / "tomolog.conf"   # absent: TomoLog reads nothing; it writes its leftovers here
        cmd = tomolog_command(projection_file, settings, vrange, indices, program=program, config=conf)
        log.info("running: %s", " ".join(cmd))
        env = dict(os.environ, PYTHONUNBUFFERED="1")   # keep stdout/stderr interleaved in order
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=td, env=env, start_new_session=True)
        except OSError as exc:
            return TomoLogResult(False, f"cannot run {program}: {exc.strerror or exc}", cmd, None, 0.0)
        timed_out = False
        try:
            out_b, _ = proc.communicate(timeout=settings.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out_b, _ = proc.communicate()
    output = (out_b or b"").decode("utf-8", errors="replace")
    seconds = time.perf_counter() - t0
    if log_path is not None:
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(" ".join(cmd) + "\n\n" + output)
        except OSError as exc:
            log.warning("cannot write %s: %s", log_path, exc)
    if timed_out:
        verdict = Verdict(False, f"TomoLog timed out after {settings.timeout:g} s")
    else:
        verdict = judge_output(output, ignore=(str(projection_file), projection_file.name))
        if proc.returncode != 0:
            log.warning("tomolog exited %s; judged by its output: %s", proc.returncode, verdict.reason)
    return TomoLogResult(verdict.success, verdict.reason, cmd, proc.returncode, seconds, output,
                         verdict.image_urls, log_path)


def tomolog_log_path(projection_file: Path) -> Path:
    """``<dir>_rec/<name>.tomolog.log``: the command and TomoLog's output of the last run."""
    p = Path(projection_file)
    return summary_path(p).with_name(f"{p.stem}.tomolog.log")


def run_phase(path: Union[str, Path], settings: Union[Mapping[str, Any], TomoLogSettings, None],
              cor: Optional[float] = None, *, lock_path: Optional[Path] = None) -> PhaseResult:
    """The worker's ``tomolog`` phase: write the summary PNG, then publish with TomoLog."""
    t0 = time.perf_counter()
    path = Path(path)

    def done(success: bool, msg: str) -> PhaseResult:
        return PhaseResult(success, msg, seconds=round(time.perf_counter() - t0, 3))

    problem: Optional[str] = None
    s: Optional[TomoLogSettings] = None
    try:
        s = settings if isinstance(settings, TomoLogSettings) else TomoLogSettings.from_dict(settings or {})
    except ValueError as exc:
        problem = f"TomoLog settings: {exc}"
    # The summary is written whatever happens to the upload, so there is always a local record.
    try:
        volume = find_volume(path)
        vol = open_volume(volume)
        wanted = (s.idx, s.idy, s.idz) if s else (None, None, None)
        try:
            resolve_indices(vol.shape, *wanted)
        except ValueError as exc:
            problem = problem or f"TomoLog settings: {exc}"
            wanted = (None, None, None)
        info: SummaryInfo = make_summary(path, cor=cor, vrange=s.manual_range if s else None, indices=wanted,
                                         volume=volume)
    except (ReconError, ValueError, OSError) as exc:
        return done(False, f"no summary: {exc}")
    where = f"summary {info.path}"
    if problem or s is None:
        return done(False, f"{problem}; {where}")
    ix, iy, _ = info.indices
    try:
        with upload_lock(lock_path, timeout=s.timeout):
            res = run_tomolog(path, s, info.vrange, (ix, iy, info.z_number), log_path=tomolog_log_path(path))
    except TimeoutError as exc:
        return done(False, f"{exc}; {where}")
    if not res.success:
        log.error("%s: TomoLog failed: %s", path, res.reason)
        return done(False, f"TomoLog: {res.reason}; {where}")
    image = f"; image {res.image_urls[-1]}" if res.image_urls else ""
    return done(True, f"slide added to {s.presentation_url}{image}; {where}")

