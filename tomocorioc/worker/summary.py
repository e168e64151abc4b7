"""The local per-dataset summary image: three orthogonal slices and the COR curve.

Written for every dataset whether or not TomoLog is installed, so the operator
always has a quick look at ``<dir>_rec/<name>_summary.png``.  The volume is
the full reconstruction in tomocupy's layout (a folder of ``recon_*.tiff`` or
``<name>_rec.h5`` with ``/exchange/data``); only the planes shown are read, a
slice (or one chunk) at a time, so a large volume never sits in memory.
Drawn with Pillow: matplotlib is not a dependency of this service.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tomocorioc.core import layout
from tomocorioc.data.volume import Volume, find_volume, open_volume
from tomocorioc.worker.recon.base import FULL_META

log = logging.getLogger(__name__)

PERCENTILES = (5.0, 95.0)
# Panels are at most ~400 px tall, so more z samples than this are never visible;
# striding z keeps the XZ/YZ read of a 2k-slice TIFF stack to a fraction.
MAX_Z_SAMPLES = 512
WIDTH = 1200
PANEL_BOX = (370, 370)
MIN_PANEL_H = 48          # flat volumes: stretch z so the XZ/YZ strips stay legible
PLOT_H = 300
COLORS = {"xy": (240, 200, 40), "xz": (255, 120, 40), "yz": (60, 200, 230),
          "classical": (40, 90, 200), "ai": (30, 150, 60), "cor": (220, 30, 30), "alt": (130, 130, 130)}


def contrast_of(img: np.ndarray) -> Tuple[float, float]:
    """5-95 % percentiles of the finite pixels; always lo < hi."""
    vals = np.asarray(img, dtype=np.float64).ravel()
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(vals, PERCENTILES))
    if not lo < hi:
        # A mostly-uniform slice (e.g. a wide zero background): fall back to the full range.
        lo, hi = float(vals.min()), float(vals.max())
    if not lo < hi:
        half = 0.5 * (abs(lo) * 0.01 if lo != 0.0 else 1.0)
        lo, hi = lo - half, hi + half
    return lo, hi


def auto_contrast(volume_path: Path) -> Tuple[float, float]:
    """Display range ``(lo, hi)`` from the 5-95 % percentiles of the volume's middle slice."""
    vol = open_volume(volume_path)
    return contrast_of(vol.read_slice(vol.shape[0] // 2))


def resolve_indices(shape: Sequence[int], idx: Optional[int] = None, idy: Optional[int] = None,
                    idz: Optional[int] = None) -> Tuple[int, int, int]:
    """``(idx, idy, idz)`` with None meaning the middle; ValueError when outside the volume."""
    nz, ny, nx = (int(n) for n in shape)
    out = []
    for name, val, n in (("idx", idx, nx), ("idy", idy, ny), ("idz", idz, nz)):
        v = n // 2 if val is None else int(val)
        if not 0 <= v < n:
            raise ValueError(f"{name}={v} is outside the volume (0..{n - 1})")
        out.append(v)
    return out[0], out[1], out[2]


def summary_path(projection_file: Path) -> Path:
    """``<dir>_rec/<name>_summary.png``."""
    p = Path(projection_file)
    return layout.rec_root(p) / f"{p.stem}_summary.png"


# -- COR information ---------------------------------------------------------------
def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _full_meta_cor(volume: Optional[Path]) -> Optional[float]:
    if volume is None:
        return None
    meta = volume / FULL_META if volume.is_dir() else volume.with_name(volume.stem + "_" + FULL_META)
    data = _read_json(meta) or {}
    cor = data.get("cor")
    return float(cor) if isinstance(cor, (int, float)) else None


def _choose_cor(projection_file: Path, scores: Optional[Dict[str, Any]], volume: Optional[Path],
                cor: Optional[float], source: Optional[str]) -> Tuple[Optional[float], str]:
    """The COR to show and where it came from: explicit, then the volume's own, then the try folder."""
    picked = scores.get("cor") if scores else None
    picked = float(picked) if isinstance(picked, (int, float)) else None
    if cor is None:
        cor = _full_meta_cor(volume)
    if cor is None and picked is not None:
        return picked, source or str(scores.get("method") or "scores")  # type: ignore[union-attr]
    if cor is None:
        try:
            return layout.read_cor_file(layout.try_dir(projection_file)), source or "file"
        except (OSError, ValueError):
            return None, "unknown"
    if source:
        return float(cor), source
    if picked is not None and abs(picked - float(cor)) < 0.005:
        return float(cor), str(scores.get("method") or "scores")  # type: ignore[union-attr]
    try:
        if abs(layout.read_cor_file(layout.try_dir(projection_file)) - float(cor)) < 0.005:
            return float(cor), "file"
    except (OSError, ValueError):
        pass
    # Neither the scores nor center_of_rotation.txt hold this COR: the operator set it.
    return float(cor), "manual"


def _score_series(scores: Dict[str, Any]) -> List[Tuple[str, np.ndarray, np.ndarray, Tuple[int, int, int]]]:
    out = []
    for key in ("classical", "ai"):
        rec = scores.get(key)
        if not isinstance(rec, dict):
            continue
        try:
            xs = np.asarray(rec.get("centers") or [], dtype=np.float64)
            ys = np.asarray([np.nan if v is None else v for v in rec.get("scores") or []], dtype=np.float64)
        except (TypeError, ValueError):
            continue
        n = min(xs.size, ys.size)
        xs, ys = xs[:n], ys[:n]
        ok = np.isfinite(xs) & np.isfinite(ys)
        if ok.sum() < 1:
            continue
        if key == "ai":
            label = "AI"
        else:
            label = f"classical ({rec['metric']})" if rec.get("metric") else "classical"
        out.append((label, xs[ok], ys[ok], COLORS[key]))
    return out


# -- drawing -------------------------------------------------------------------------
def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _to_u8(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.nan_to_num(img, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _panel(img: np.ndarray, lo: float, hi: float, size: Tuple[int, int]) -> Image.Image:
    pil = Image.fromarray(_to_u8(img, lo, hi), mode="L")
    shrink = size[0] < pil.width or size[1] < pil.height
    return pil.resize(size, Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR).convert("RGB")


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _nice_ticks(lo: float, hi: float, n: int = 6) -> List[float]:
    """Round-valued ticks (1-2-5 steps) covering [lo, hi]."""
    span = hi - lo
    if not span > 0:
        return [lo]
    raw = span / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _text(draw: ImageDraw.ImageDraw, xy: Tuple[float, float], text: str, font: ImageFont.ImageFont,
          fill: Tuple[int, int, int] = (20, 20, 20), anchor: str = "la") -> None:
    draw.text(xy, text, font=font, fill=fill, anchor=anchor)


def _ticks_on(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], frac: float, vertical: bool,
              color: Tuple[int, int, int]) -> None:
    """Small triangles outside the panel edges marking where another view cuts this one."""
    x0, y0, x1, y1 = box
    s = 6
    if vertical:   # a cut at x = frac: marks above and below
        x = x0 + frac * (x1 - x0)
        draw.polygon([(x - s, y0 - s - 2), (x + s, y0 - s - 2), (x, y0 - 2)], fill=color)
        draw.polygon([(x - s, y1 + s + 2), (x + s, y1 + s + 2), (x, y1 + 2)], fill=color)
    else:          # a cut at y = frac: marks left and right
        y = y0 + frac * (y1 - y0)
        draw.polygon([(x0 - s - 2, y - s), (x0 - s - 2, y + s), (x0 - 2, y)], fill=color)
        draw.polygon([(x1 + s + 2, y - s), (x1 + s + 2, y + s), (x1 + 2, y)], fill=color)


def _draw_plot(img: Image.Image, box: Tuple[int, int, int, int], scores: Optional[Dict[str, Any]],
               missing_reason: str, cor: Optional[float], source: str) -> None:
    draw = ImageDraw.Draw(img)
    f_small, f_mid = _font(13), _font(15)
    x0, y0, x1, y1 = box
    _text(draw, (x0, y0), "COR score curve", _font(16))
    _text(draw, (x0 + 150, y0 + 2), "(higher = better; each method scaled to 0-1)", f_small, (100, 100, 100))
    series = _score_series(scores) if scores else []
    px0, py0, px1, py1 = x0 + 40, y0 + 46, x1 - 20, y1 - 46   # plotting area
    draw.rectangle((px0, py0, px1, py1), outline=(90, 90, 90))
    if not series:
        _text(draw, ((px0 + px1) / 2, (py0 + py1) / 2), missing_reason, f_mid, (120, 120, 120), "mm")
        return
    xs_all = np.concatenate([s[1] for s in series])
    xlo, xhi = float(xs_all.min()), float(xs_all.max())
    if cor is not None:
        xlo, xhi = min(xlo, cor), max(xhi, cor)
    pad = 0.02 * (xhi - xlo) if xhi > xlo else 1.0
    xlo, xhi = xlo - pad, xhi + pad

    def sx(v: float) -> float:
        return px0 + (v - xlo) / (xhi - xlo) * (px1 - px0)

    def sy(v: float) -> float:   # normalised score 0..1, with a small margin
        return py1 - (0.05 + 0.9 * v) * (py1 - py0)

    for t in _nice_ticks(xlo, xhi, 8):
        draw.line((sx(t), py1, sx(t), py1 + 5), fill=(90, 90, 90))
        draw.line((sx(t), py0, sx(t), py1), fill=(232, 232, 232))
        _text(draw, (sx(t), py1 + 8), f"{t:g}", f_small, anchor="ma")
    for t in (0.0, 0.5, 1.0):
        draw.line((px0 - 5, sy(t), px0, sy(t)), fill=(90, 90, 90))
        _text(draw, (px0 - 8, sy(t)), f"{t:g}", f_small, anchor="rm")
    _text(draw, ((px0 + px1) / 2, y1 - 4), "centre of rotation (pixels)", f_small, anchor="md")

    picked = scores.get("cor") if scores else None
    if isinstance(picked, (int, float)) and (cor is None or abs(float(picked) - cor) >= 0.005):
        xp = sx(float(picked))
        for ya in range(int(py0), int(py1), 8):   # dashed: the scores' own pick, not the COR used
            draw.line((xp, ya, xp, min(ya + 4, py1)), fill=COLORS["alt"], width=2)
        _text(draw, (xp + 4, py1 - 4), f"scores: {float(picked):.2f}", f_small, COLORS["alt"], "ld")
    if cor is not None:
        draw.line((sx(cor), py0, sx(cor), py1), fill=COLORS["cor"], width=2)
        label = f"COR {cor:.2f} ({source})"
        half = draw.textlength(label, font=f_mid) / 2
        lx = min(max(sx(cor), px0 + half), px1 - half)   # keep the label inside the plot's width
        _text(draw, (lx, py0 - 3), label, f_mid, COLORS["cor"], "md")

    legend_y = py0 + 6
    for label, xs, ys, color in series:
        span = float(ys.max() - ys.min())
        norm = (ys - ys.min()) / span if span > 0 else np.full_like(ys, 0.5)
        order = np.argsort(xs)
        pts = [(sx(float(a)), sy(float(b))) for a, b in zip(xs[order], norm[order])]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for x, y in pts if len(pts) <= 200 else []:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=color)
        draw.line((px1 - 190, legend_y + 8, px1 - 165, legend_y + 8), fill=color, width=3)
        _text(draw, (px1 - 158, legend_y), label, f_small, color)
        legend_y += 18


def render_summary(vol: Volume, name: str, cor: Optional[float], source: str, vrange: Tuple[float, float],
                   auto: bool, indices: Tuple[int, int, int], scores: Optional[Dict[str, Any]],
                   missing_reason: str) -> Image.Image:
    """Draw the summary image (pure drawing; reads only the three planes of ``vol``)."""
    nz, ny, nx = vol.shape
    ix, iy, iz = indices
    lo, hi = vrange
    step = max(1, math.ceil(nz / MAX_Z_SAMPLES))
    xy = vol.read_slice(iz)
    xz, yz = vol.read_planes(iy, ix, step)

    bw, bh = PANEL_BOX
    scale = min(bw / max(nx, ny), bh / max(ny, nz))
    zh = max(1, round(nz * scale))
    zstretch = MIN_PANEL_H / zh if zh < MIN_PANEL_H else 1.0
    zh = max(zh, MIN_PANEL_H)
    sizes = {"xy": (max(1, round(nx * scale)), max(1, round(ny * scale))),
             "xz": (max(1, round(nx * scale)), zh), "yz": (max(1, round(ny * scale)), zh)}
    top = 84
    canvas_h = top + bh + 60 + PLOT_H + 20
    img = Image.new("RGB", (WIDTH, canvas_h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    cor_txt = f"COR {cor:.2f} ({source})" if cor is not None else "COR unknown"
    _text(draw, (20, 12), f"{name}    {cor_txt}", _font(22))
    how = "auto 5-95 % of the middle slice" if auto else "manual"
    _text(draw, (20, 44), f"volume {nz} x {ny} x {nx} (z, y, x; {vol.kind})    display [{_fmt(lo)}, {_fmt(hi)}] "
                          f"({how})", _font(14), (80, 80, 80))

    f_lab = _font(14)
    slot_w = WIDTH // 3
    boxes = {}
    for k, (key, plane) in enumerate((("xy", xy), ("xz", xz), ("yz", yz))):
        w, h = sizes[key]
        bx = k * slot_w + (slot_w - w) // 2
        by = top + 22 + (bh - h) // 2
        img.paste(_panel(plane, lo, hi, (w, h)), (bx, by))
        boxes[key] = (bx, by, bx + w, by + h)
        draw.rectangle((bx - 1, by - 1, bx + w, by + h), outline=COLORS[key], width=2)
    labels = {"xy": f"XY  z = {vol.z_number(iz)}", "xz": f"XZ  y = {iy}", "yz": f"YZ  x = {ix}"}
    for key, text in labels.items():
        if key != "xy" and zstretch > 1.0:
            text += f"  (z stretched x{zstretch:.0f})"
        cx, ly = (boxes[key][0] + boxes[key][2]) / 2, boxes[key][1] - 30
        _text(draw, (cx, ly), text, f_lab, (40, 40, 40), "ma")
        half = draw.textlength(text, font=f_lab) / 2   # a swatch in the frame colour names the view
        draw.rectangle((cx - half - 16, ly + 3, cx - half - 6, ly + 13), fill=COLORS[key])
    # Where the other views cut each panel (colour = the other view's frame).
    _ticks_on(draw, boxes["xy"], (iy + 0.5) / ny, False, COLORS["xz"])
    _ticks_on(draw, boxes["xy"], (ix + 0.5) / nx, True, COLORS["yz"])
    _ticks_on(draw, boxes["xz"], (iz + 0.5) / nz, False, COLORS["xy"])
    _ticks_on(draw, boxes["yz"], (iz + 0.5) / nz, False, COLORS["xy"])

    # Grey ramp showing the display range.
    ry = top + 22 + bh + 14
    ramp = np.tile(np.linspace(0, 255, 300).astype(np.uint8), (10, 1))
    img.paste(Image.fromarray(ramp, mode="L").convert("RGB"), (WIDTH // 2 - 150, ry))
    draw.rectangle((WIDTH // 2 - 151, ry - 1, WIDTH // 2 + 150, ry + 10), outline=(90, 90, 90))
    _text(draw, (WIDTH // 2 - 158, ry + 5), _fmt(lo), f_lab, anchor="rm")
    _text(draw, (WIDTH // 2 + 158, ry + 5), _fmt(hi), f_lab, anchor="lm")

    _draw_plot(img, (20, top + bh + 60, WIDTH - 20, canvas_h - 10), scores, missing_reason, cor, source)
    return img


@dataclass
class SummaryInfo:
    """What a summary image shows: the file written, the volume, its display range and cut indices."""

    path: Path
    volume: Path
    shape: Tuple[int, int, int]
    vrange: Tuple[float, float]
    auto_range: bool
    indices: Tuple[int, int, int]      # (idx, idy, idz) as positions in the volume
    z_number: int                      # idz as the slice number tools address (TIFF file number)
    cor: Optional[float]
    cor_source: str


def make_summary(projection_file: Path, *, cor: Optional[float] = None, cor_source: Optional[str] = None,
                 vrange: Optional[Tuple[float, float]] = None, indices: Optional[Sequence[Optional[int]]] = None,
                 volume: Optional[Path] = None) -> SummaryInfo:
    """Write the summary PNG and say what it shows (``indices`` entries of None mean the middle)."""
    projection_file = Path(projection_file)
    vol_path = Path(volume) if volume is not None else find_volume(projection_file)
    vol = open_volume(vol_path)
    auto = vrange is None
    if vrange is None:
        vrange = contrast_of(vol.read_slice(vol.shape[0] // 2))
    lo, hi = float(vrange[0]), float(vrange[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"display range must be finite with min < max, got [{lo}, {hi}]")
    idx = resolve_indices(vol.shape, *(tuple(indices or ()) + (None, None, None))[:3])
    scores_file = layout.try_dir(projection_file) / layout.SCORES_FILE
    scores = _read_json(scores_file)
    if scores is None:
        missing = (f"no COR scores: {layout.SCORES_FILE} could not be read" if scores_file.exists()
                   else f"no COR scores ({layout.SCORES_FILE} not found in try_center/{projection_file.stem}/)")
    else:
        missing = f"no COR scores in {layout.SCORES_FILE}"
    shown_cor, source = _choose_cor(projection_file, scores, vol_path, cor, cor_source)
    img = render_summary(vol, projection_file.name, shown_cor, source, (lo, hi), auto, idx, scores, missing)
    out = summary_path(projection_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    img.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, out)  # viewers never see a half-written image
    log.info("summary written: %s", out)
    return SummaryInfo(out, vol_path, vol.shape, (lo, hi), auto, idx, vol.z_number(idx[2]), shown_cor, source)


def write_summary(projection_file: Path, *, cor: Optional[float] = None, cor_source: Optional[str] = None,
                  vrange: Optional[Tuple[float, float]] = None) -> Path:
    """Write ``<dir>_rec/<name>_summary.png`` for one dataset and return its path."""
    return make_summary(projection_file, cor=cor, cor_source=cor_source, vrange=vrange).path
