"""Every command line the tomocupy backend can produce is one tomocupy accepts.

tomocupy parses with ``parse_known_args``: a misspelt option or one the
subcommand does not have is silently ignored, and a bad choice fails only at
the beamline.  So the option table is recorded here, as data, from tomocupy's
own source and checked offline against every combination we emit.

Source: tomography/tomocupy, ``src/tomocupy/config.py`` (``SECTIONS``,
``RECON_PARAMS``, ``RECON_STEPS_PARAMS``) and ``src/tomocupy/__main__.py``
(``recon`` uses RECON_PARAMS, ``recon_steps`` RECON_STEPS_PARAMS, both plus
'general'), commit 25edcb99a302dcd5b42d865fb9955269a51a31fa.

One addition, recorded separately: ``--fbp-filter none``.  config.py at that
commit lists ramp, shepp, hann, hamming, parzen, cosine, cosine2; the later
layout (``src/tomocupy/reconstruction/fbp_filter.py``, commit
8244db0474e30789866271901c0a9e2eba904a6b) handles ``'none'`` in
``calc_filter`` and tomocupy-derived configs list it first.
"""
import argparse
import itertools
from pathlib import Path

import pytest

from tomocorioc.core.params import ALGORITHMS, FILTERS, FULL_FORMATS, ReconParams
from tomocorioc.worker.recon.base import ReconError
from tomocorioc.worker.recon.tomocupy_backend import STEPS_ALGORITHMS, TOMOCUPY_STRIPE, full_command, try_command

TOMOCUPY_COMMIT = "25edcb99a302dcd5b42d865fb9955269a51a31fa"
NEWER_FILTER_COMMIT = "8244db0474e30789866271901c0a9e2eba904a6b"

S, F, N, P = str, float, int, Path   # the 'type' of each option; 'flag' = store_true
# section -> option -> (type, choices or None), exactly as config.py declares them.
SECTIONS = {
    "general": {"config": (S, None), "logs-home": (S, None), "verbose": ("flag", None),
                "config-update": ("flag", None)},
    "file-reading": {"file-name": (P, None), "flat-file-name": (P, None), "dark-file-name": (P, None),
                     "out-path-name": (P, None), "file-type": (S, ["standard", "double_fov"]),
                     "binning": (N, [0, 1, 2, 3]), "blocked-views": (S, None)},
    "remove-stripe": {"remove-stripe-method": (S, ["none", "fw", "ti", "vo-all"])},
    "fw": {"fw-sigma": (F, None), "fw-filter": (S, ["haar", "db5", "sym5", "sym16"]), "fw-level": (N, None),
           "fw-pad": ("flag", None)},
    "vo-all": {"vo-all-snr": (F, None), "vo-all-la-size": (N, None), "vo-all-sm-size": (N, None),
               "vo-all-dim": (S, None)},
    "ti": {"ti-beta": (F, None), "ti-mask": (F, None)},
    "retrieve-phase": {"retrieve-phase-method": (S, ["none", "paganin"]), "energy": (F, None),
                       "propagation-distance": (F, None), "pixel-size": (F, None),
                       "retrieve-phase-alpha": (F, None), "retrieve-phase-pad": (N, None)},
    "rotate-proj": {"rotate-proj-angle": (F, None), "rotate-proj-order": (N, None)},
    "lamino": {"lamino-search-width": (F, None), "lamino-search-step": (F, None), "lamino-angle": (F, None),
               "lamino-start-row": (N, None), "lamino-end-row": (N, None)},
    "reconstruction-types": {"reconstruction-type": (S, ["full", "try"]),
                             "reconstruction-algorithm": (S, ["fourierrec", "lprec", "linerec"])},
    "reconstruction-steps-types": {"reconstruction-type": (S, ["full", "try", "try_lamino"]),
                                   "reconstruction-algorithm": (S, ["fourierrec", "linerec"]),
                                   "pre-processing": (S, ["True", "False"])},
    "reconstruction": {
        "rotation-axis": (F, None), "center-search-width": (F, None), "center-search-step": (F, None),
        "nsino": (S, None), "nsino-per-chunk": (N, None), "nproj-per-chunk": (N, None),
        "start-row": (N, None), "end-row": (N, None), "start-column": (N, None), "end-column": (N, None),
        "start-proj": (N, None), "end-proj": (N, None), "rotation-axis-auto": (S, ["manual", "auto"]),
        "rotation-axis-pairs": (S, None), "rotation-axis-sift-threshold": (F, None),
        "rotation-axis-method": (S, ["sift", "vo"]), "find-center-start-row": (N, None),
        "find-center-end-row": (N, None), "dtype": (S, ["float32", "float16"]),
        "save-format": (S, ["tiff", "h5", "h5sino", "h5nolinks"]), "clear-folder": (S, ["True", "False"]),
        "fbp-filter": (S, ["ramp", "shepp", "hann", "hamming", "parzen", "cosine", "cosine2"]),
        "dezinger": (N, None), "dezinger-threshold": (N, None), "max-write-threads": (N, None),
        "max-read-threads": (N, None), "minus-log": (S, None), "flat-linear": (S, None),
        "pad-endpoint": (S, None)},
}
COMMANDS = {
    "recon": ("file-reading", "remove-stripe", "reconstruction", "fw", "ti", "vo-all", "reconstruction-types",
              "general"),
    "recon_steps": ("file-reading", "remove-stripe", "reconstruction", "retrieve-phase", "fw", "ti", "vo-all",
                    "lamino", "reconstruction-steps-types", "rotate-proj", "general"),
}
NEWER_CHOICES = {"fbp-filter": ["none"]}   # see the module docstring


def tomocupy_parser(command: str) -> argparse.ArgumentParser:
    """An argparse parser with the recorded options of one tomocupy subcommand (strict: no unknowns)."""
    ap = argparse.ArgumentParser(prog=f"tomocupy {command}", exit_on_error=False, add_help=False)
    for section in COMMANDS[command]:
        for name, (kind, choices) in SECTIONS[section].items():
            if kind == "flag":
                ap.add_argument(f"--{name}", action="store_true")
                continue
            allowed = None if choices is None else list(choices) + NEWER_CHOICES.get(name, [])
            ap.add_argument(f"--{name}", type=kind, choices=allowed)
    return ap


def check(cmd):
    assert cmd[0] == "tomocupy" and cmd[1] in COMMANDS, cmd[:2]
    parser = tomocupy_parser(cmd[1])
    try:
        ns, unknown = parser.parse_known_args(cmd[2:])
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"tomocupy would reject {' '.join(cmd)}: {exc}")
    assert not unknown, f"tomocupy {cmd[1]} would silently ignore {unknown}"
    # Each option once: a repeated option means one of our values is silently overridden.
    opts = [a for a in cmd[2:] if a.startswith("--")]
    assert len(opts) == len(set(opts)), opts
    return ns


def param_sets():
    """Every filter, ring removal, format, algorithm, binning, dtype, dezinger and rotation choice."""
    for filt, stripe, fmt, alg in itertools.product(FILTERS, TOMOCUPY_STRIPE, FULL_FORMATS, ALGORITHMS):
        for angle in (0.0, -1.25):
            if angle and alg not in STEPS_ALGORITHMS:
                continue
            yield ReconParams(fbp_filter=filt, remove_stripe_method=stripe, full_format=fmt,
                              reconstruction_algorithm=alg, rotate_proj_angle=angle)
    for binning, dtype, dez, thr in itertools.product((0, 1, 2, 3), ("float32", "float16"), (0, 5), (5000.0, 12.7)):
        yield ReconParams(binning=binning, dtype=dtype, dezinger=dez, dezinger_threshold=thr)


def test_the_recorded_table_matches_what_the_project_offers():
    assert set(FILTERS) == set(SECTIONS["reconstruction"]["fbp-filter"][1]) | set(NEWER_CHOICES["fbp-filter"])
    assert set(TOMOCUPY_STRIPE) == set(SECTIONS["remove-stripe"]["remove-stripe-method"][1])
    assert set(ALGORITHMS) == set(SECTIONS["reconstruction-types"]["reconstruction-algorithm"][1])
    assert set(STEPS_ALGORITHMS) == set(SECTIONS["reconstruction-steps-types"]["reconstruction-algorithm"][1])
    assert len(TOMOCUPY_COMMIT) == 40 and len(NEWER_FILTER_COMMIT) == 40


def test_every_command_line_is_accepted():
    n = 0
    for p in param_sets():
        for cmd in (try_command(Path("/d/s.h5"), p, 1023.5, config=Path("/tmp/c.conf")),
                    full_command(Path("/d/s.h5"), p, 1021.25, config=Path("/tmp/c.conf"))):
            ns = check(cmd)
            assert ns.fbp_filter == p.fbp_filter and ns.remove_stripe_method == p.remove_stripe_method
            assert ns.binning == p.binning and ns.dtype == p.dtype
            if p.rotate_proj_angle:
                assert cmd[1] == "recon_steps" and ns.rotate_proj_angle == p.rotate_proj_angle
            else:
                assert cmd[1] == "recon"
            n += 1
    assert n > 400


def test_double_fov_is_in_the_table():
    """Part A of issue 15 emits ``--file-type double_fov``; the table covers it."""
    cmd = full_command(Path("/d/s.h5"), ReconParams(), 93.0)
    i = cmd.index("--file-type")
    for kind in ("standard", "double_fov"):
        check(cmd[:i + 1] + [kind] + cmd[i + 2:])


def test_a_rotation_with_lprec_is_refused_clearly():
    with pytest.raises(ReconError, match="recon_steps .* has no algorithm 'lprec'"):
        full_command(Path("/d/s.h5"), ReconParams(reconstruction_algorithm="lprec", rotate_proj_angle=0.5), 1.0)


def test_the_checker_catches_mistakes():
    good = full_command(Path("/d/s.h5"), ReconParams(), 10.0)
    for bad in (good + ["--fbp-filter", "butterworth"], good + ["--rotate-proj-angle", "1"],
                good[:2] + ["--no-such-option", "1"] + good[2:]):
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            check(bad)
