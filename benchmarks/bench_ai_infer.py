#!/usr/bin/env python
"""Phase-B AI scoring throughput: reference-style per-file processes vs tomocorioc's persistent scorer.

For each architecture (the small fixture checkpoint and a random full-size
ViT-B/14 @ 518 written in the tomocor format) and each of N synthetic try
stacks of C candidates (1040x1040 float32 slices made from the fixture's try
slices with per-candidate blur and noise):

(a) reference way: a new Python process per file that imports torch/timm,
    rebuilds the model (default random init), loads the checkpoint
    (``strict=False`` like the reference), and runs one forward per slice
    (its 3 windows) with PIL preprocessing, float32;
(b) tomocorioc: one persistent worker process per precision mode that loads
    the checkpoint once (``AIScorer``) and is sent every folder.

The runs are interleaved file by file (ref, then each mode) so that load from
other processes on a shared machine hits all columns alike.  Files/minute of
(b) include its one-off start-up (process + model load).

Usage::

    python benchmarks/bench_ai_infer.py                  # 10 small-arch files, 1 ViT-B file
    python benchmarks/bench_ai_infer.py --files 10 --vitb-files 10   # the full spec (slow on CPU)
    python benchmarks/bench_ai_infer.py --files 2 --vitb-files 0 --candidates 9   # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


# --------------------------------------------------------------------------- workers
def reference_worker(checkpoint: str, folder: str, device: str = "cpu") -> None:
    """The reference way, in this fresh process: rebuild, load, one slice per forward."""
    t0 = time.perf_counter()
    import tifffile
    import torch
    from PIL import Image
    from timm.models.vision_transformer import VisionTransformer
    from torch import nn

    sd = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    dim = sd["model.cls_token"].shape[-1]
    patch = sd["model.patch_embed.proj.weight"].shape[-1]
    grid = int(round((sd["model.pos_embed"].shape[1] - 1) ** 0.5))
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("model.blocks."))
    hidden = sd["model.blocks.0.mlp.fc1.weight"].shape[0]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = VisionTransformer(img_size=grid * patch, patch_size=patch, embed_dim=dim, depth=depth,
                                           num_heads=dim // 64, mlp_ratio=hidden / dim, init_values=1e-5,
                                           num_classes=0)
            self.attention = nn.Sequential(nn.Linear(dim, sd["attention.0.weight"].shape[0]), nn.Tanh())
            self.gate = nn.Sequential(nn.Linear(dim, sd["gate.0.weight"].shape[0]), nn.Sigmoid())
            self.fc = nn.Linear(sd["fc.weight"].shape[1], sd["fc.weight"].shape[0])
            self.head = nn.Linear(dim, sd["head.weight"].shape[0])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.model.forward_head(self.model.forward_features(x), pre_logits=True)  # (K, D)
            a = torch.softmax(self.fc(self.attention(f) * self.gate(f)), dim=0)  # (K, B)
            return self.head(a.T @ f).mean(0)

    net = Net()
    net.load_state_dict(sd, strict=False)
    net.eval().to(device)
    t_load = time.perf_counter() - t0
    win = grid * patch
    names = sorted(Path(folder).glob("recon_slice*_center*.tiff"),
                   key=lambda p: float(p.stem.split("_center")[1]))
    corners = None
    logits = []
    for p in names:
        img = tifffile.imread(p).astype(np.float32)
        h, w = img.shape
        small = np.asarray(Image.fromarray(img).resize((w // 2, h // 2), Image.BILINEAR))
        x = (small - small.min()) / (small.max() - small.min() + 1e-8)
        x = (x * 255).astype(np.uint8) / 255.0
        if corners is None:  # once per stack, as the reference does
            rows, cols = x.shape
            yy, xx = np.mgrid[:rows, :cols]
            disk = ((xx - (cols - 1) / 2) ** 2 + (yy - (rows - 1) / 2) ** 2 <= ((rows - 1) / 2) ** 2).ravel()
            draws = np.random.RandomState(10).multinomial(1, disk / disk.sum(), 3)
            corners = []
            for d in draws:
                r, c = divmod(int(np.argmax(d)), cols)
                corners.append((int(np.clip(r - win // 2, 0, rows - win - 1)),
                                int(np.clip(c - win // 2, 0, cols - win - 1))))
        crops = np.stack([x[r:r + win, c:c + win] for r, c in corners]).astype(np.float32)
        t = torch.from_numpy(crops)[:, None].repeat(1, 3, 1, 1).to(device)
        with torch.no_grad():
            logits.append(net(t).cpu().tolist())
    scores = [float(torch.softmax(torch.tensor(lg), 0)[1]) for lg in logits]
    centers = [float(p.stem.split("_center")[1]) for p in names]
    best = max(scores)
    print(json.dumps({"logits": logits, "cor": [c for c, s in zip(centers, scores) if s == best][-1],
                      "load_s": t_load}))


def persistent_worker(checkpoint: str, dtype: str, device: str = "cpu") -> None:
    """tomocorioc's way: load once, then score every folder sent on stdin."""
    t0 = time.perf_counter()
    sys.path.insert(0, str(REPO))
    from tomocorioc.worker.ai import AIScorer

    # "<dtype>-raw": low precision without the float32 re-scoring of contenders
    raw = dtype.endswith("-raw")
    scorer = AIScorer(checkpoint, device=device, dtype=dtype[:-4] if raw else dtype, refine=not raw)
    print("READY " + json.dumps({"load_s": time.perf_counter() - t0, "batch": scorer.batch_size,
                                 "dtype": str(scorer.dtype)}), flush=True)
    for line in sys.stdin:
        folder = line.strip()
        if not folder:
            break
        r = scorer.score_try_folder(folder)
        print(json.dumps({"logits": r.logits, "cor": r.cor, "dtype": r.dtype, "seconds": r.seconds}),
              flush=True)


# --------------------------------------------------------------------------- driver
def make_stacks(root: Path, fixture: Path, n_files: int, n_cand: int, seed: int = 0) -> List[Path]:
    """N try folders of C 1040x1040 slices derived from the fixture slices (blur + noise)."""
    import tifffile

    base = [tifffile.imread(p).astype(np.float32)
            for p in sorted((fixture / "try_center").glob("recon_slice*_center*.tiff"))]
    rng = np.random.default_rng(seed)
    folders = []
    for f in range(n_files):
        d = root / f"stack_{f:02d}"
        d.mkdir(parents=True, exist_ok=True)
        noise = 0.02 + 0.02 * f
        for j in range(n_cand):
            src = base[round(j * (len(base) - 1) / max(n_cand - 1, 1))]
            a = rng.uniform(0.0, 0.5)  # horizontal two-tap blur of varying strength
            img = (1 - a) * src + a * np.roll(src, 1, axis=1)
            img = img + rng.normal(0.0, noise * float(src.std()), src.shape).astype(np.float32)
            center = 510.0 + j * 20.0 / max(n_cand - 1, 1)
            tifffile.imwrite(d / f"recon_slice0520_center{center:05.2f}.tiff", img.astype(np.float32))
        folders.append(d)
    return folders


def make_vitb(path: Path) -> Path:
    """Random ViT-B/14 @ 518 (embed 768, depth 12) classifier in the tomocor format."""
    sys.path.insert(0, str(REPO))
    from tomocorioc.worker.ai.checkpoint import random_tomocor_model, save_tomocor_checkpoint

    return save_tomocor_checkpoint(random_tomocor_model(768, 12, img_size=518, patch_size=14, seed=1), path)


def run_arch(name: str, ckpt: Path, folders: List[Path], modes: List[str], device: str = "cpu") -> Dict:
    """Interleaved benchmark of one checkpoint; returns the figures."""
    me = [sys.executable, str(Path(__file__).resolve())]
    workers, startup = {}, {}
    for mode in modes:
        t = time.perf_counter()
        p = subprocess.Popen(me + ["--worker", "persistent", "--checkpoint", str(ckpt), "--dtype", mode,
                                   "--device", device],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        line = p.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"persistent worker ({mode}) failed to start: {line!r}")
        startup[mode] = time.perf_counter() - t
        workers[mode] = p
    ref_t, ours_t = [], {m: [] for m in modes}
    agree = {m: 0 for m in modes}
    max_dlogit = {m: 0.0 for m in modes}
    dtypes = {m: set() for m in modes}
    for k, folder in enumerate(folders):
        t = time.perf_counter()
        out = subprocess.run(me + ["--worker", "reference", "--checkpoint", str(ckpt), "--folder", str(folder),
                                   "--device", device],
                             capture_output=True, text=True, check=True, cwd=REPO)
        ref_t.append(time.perf_counter() - t)
        ref = json.loads(out.stdout.strip().splitlines()[-1])
        line = f"  [{name}] file {k + 1}/{len(folders)}: reference {ref_t[-1]:.1f} s"
        for mode, p in workers.items():
            t = time.perf_counter()
            p.stdin.write(str(folder) + "\n")
            p.stdin.flush()
            res = json.loads(p.stdout.readline())
            ours_t[mode].append(time.perf_counter() - t)
            agree[mode] += res["cor"] == ref["cor"]
            max_dlogit[mode] = max(max_dlogit[mode], float(np.abs(np.array(res["logits"]) -
                                                                  np.array(ref["logits"])).max()))
            dtypes[mode].add(res["dtype"])
            line += f", {mode} {ours_t[mode][-1]:.1f} s"
        print(line, flush=True)
    for p in workers.values():
        p.stdin.write("\n")
        p.stdin.close()
        p.wait(timeout=60)
    return {"ref": ref_t, "ours": ours_t, "startup": startup, "agree": agree, "max_dlogit": max_dlogit,
            "dtypes": {m: sorted(v) for m, v in dtypes.items()}}


def compute_interleaved(ckpt: Path, folder: Path, n_cand: int, device: str = "cpu") -> Dict[str, List[float]]:
    """Per-candidate backbone+head seconds, reference-style vs AIScorer, alternated in one process.

    Alternating candidate by candidate exposes every method to the same load
    from other processes, which end-to-end runs minutes apart cannot.
    """
    import tifffile
    import torch

    sys.path.insert(0, str(REPO))
    from tomocorioc.worker.ai import AIScorer
    from tomocorioc.worker.ai import preprocess as pp

    s32 = AIScorer(ckpt, device=device, dtype="float32")
    sbf = AIScorer(ckpt, device=device, dtype="bfloat16", refine=False)
    sbf.model = s32.model  # same weights; only the autocast dtype differs
    win = s32.arch.img_size
    paths = sorted(folder.glob("recon_slice*_center*.tiff"))[:n_cand]
    out: Dict[str, List[float]] = {"reference-style fp32 (3 windows/forward)": [], "AIScorer float32": [],
                                   "AIScorer bfloat16": []}
    for p in paths:
        img = tifffile.imread(p)
        plan = pp.plan_for_shape(img.shape, win)
        prep = pp.prepare(img, plan, s32.device)
        sync = torch.cuda.synchronize if s32.device.type == "cuda" else (lambda: None)
        t = time.perf_counter()
        crops = pp.crop_windows([prep] * len(plan.corners), plan.corners, win)
        with torch.no_grad():
            s32.model(crops[None, :, None].expand(-1, -1, 3, -1, -1))
        sync()
        out["reference-style fp32 (3 windows/forward)"].append(time.perf_counter() - t)
        for key, sc, low in (("AIScorer float32", s32, False), ("AIScorer bfloat16", sbf, True)):
            t = time.perf_counter()
            sc._logits([0], {0: prep}, {0: plan}, low_precision=low)
            sync()
            out[key].append(time.perf_counter() - t)
    return out


def report(name: str, fig: Dict, n_cand: int) -> List[str]:
    """Markdown rows for one architecture (ratios are files/minute of (b) over (a))."""
    n = len(fig["ref"])
    ref_total = sum(fig["ref"])
    ref_fpm = 60.0 * n / ref_total
    rows = [f"| {name} | (a) reference: process per file, fp32 | {n} | {ref_fpm:.2f} | "
            f"{1000 * ref_total / (n * n_cand):.0f} | - | 1.00 | - | - |"]
    for mode, times in fig["ours"].items():
        total = fig["startup"][mode] + sum(times)
        fpm = 60.0 * n / total
        steady = 1000 * sum(times) / (n * n_cand)
        # per-file ratios are taken seconds apart, so their median is robust to
        # load from other processes that comes and goes during the run
        med = float(np.median(np.array(fig["ref"]) / np.array(times)))
        rows.append(f"| {name} | (b) persistent AIScorer `{mode}` ({', '.join(fig['dtypes'][mode])}) | {n} | "
                    f"{fpm:.2f} | {1000 * total / (n * n_cand):.0f} | {steady:.0f} | {fpm / ref_fpm:.2f} | "
                    f"{med:.2f} | {fig['agree'][mode]}/{n} (max dlogit {fig['max_dlogit'][mode]:.1e}) |")
    return rows


HEADER = ("| arch | method | files | files/min | ms/candidate incl. start-up | ms/candidate steady | "
          "ratio (files/min) | median per-file ratio | same COR as (a) |\n|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10, help="try stacks for the small fixture architecture")
    ap.add_argument("--vitb-files", type=int, default=1, help="try stacks for the ViT-B/14 checkpoint (0: skip)")
    ap.add_argument("--candidates", type=int, default=21)
    ap.add_argument("--modes", default="float32,auto,bfloat16-raw",
                    help="AIScorer dtypes for the persistent workers ('-raw': no float32 refinement)")
    ap.add_argument("--fixtures", default=os.environ.get("TOMOCORIOC_FIXTURES", str(REPO.parent / "shared/fixtures")))
    ap.add_argument("--workdir", default=None, help="keep stacks/checkpoints here (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads in every worker via OMP_NUM_THREADS (0: torch's default)")
    ap.add_argument("--compute-candidates", type=int, default=6,
                    help="candidates for the same-process interleaved compute comparison (0: skip)")
    ap.add_argument("--device", default="cpu", help="torch device for both (a) and (b), e.g. cuda")
    ap.add_argument("--json", default=None, help="also write the raw timings to this file")
    ap.add_argument("--render", default=None, help="only print the table of a saved --json run")
    ap.add_argument("--worker", choices=["reference", "persistent"], help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "reference":
        return reference_worker(args.checkpoint, args.folder, args.device)
    if args.worker == "persistent":
        return persistent_worker(args.checkpoint, args.dtype, args.device)

    if args.render:
        figs = json.loads(Path(args.render).read_text())
        print(HEADER)
        for name, fig in figs.items():
            print("\n".join(report(name, fig, fig.get("candidates", args.candidates))))
        for name, fig in figs.items():
            comp = fig.get("compute", {})
            ref = float(np.median(next(iter(comp.values())))) if comp else 0.0
            for key, v in comp.items():
                print(f"COMPUTE {name} {key}: {1000 * float(np.median(v)):.0f} ms/candidate "
                      f"(median of {len(v)}), {ref / float(np.median(v)):.2f}x")
        return None
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every worker process
    import torch

    fixture = Path(args.fixtures) / "tomocor-small"
    modes = [m for m in args.modes.split(",") if m]
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_ai_") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        n_stacks = max(args.files, args.vitb_files)
        folders = make_stacks(work / "stacks", fixture, n_stacks, args.candidates)
        print(f"# {n_stacks} try stacks x {args.candidates} slices 1040x1040 in {work}", flush=True)
        gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "no GPU used"
        print(f"# device {args.device} ({gpu})", flush=True)
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"threads {torch.get_num_threads()}, bf16 native: "
              f"{bool(getattr(torch.cpu, '_is_avx512_bf16_supported', lambda: False)())}, "
              f"load avg {os.getloadavg()[0]:.1f}", flush=True)
        figs, rows = {}, []
        jobs = [("small (ViT-S/14 depth 2)", fixture / "checkpoint.pt", args.files)]
        if args.vitb_files:
            jobs.append(("ViT-B/14 @518 depth 12", make_vitb(work / "vitb_random.pt"), args.vitb_files))
        for name, ckpt, n in jobs:
            if n <= 0:
                continue
            figs[name] = run_arch(name, ckpt, folders[:n], modes, args.device)
            figs[name]["candidates"] = args.candidates
            if args.compute_candidates:
                comp = compute_interleaved(ckpt, folders[0], args.compute_candidates, args.device)
                figs[name]["compute"] = comp
                ref_ms = 1000 * float(np.median(comp["reference-style fp32 (3 windows/forward)"]))
                for key, v in comp.items():
                    ms = 1000 * float(np.median(v))
                    print(f"COMPUTE {name} {key}: {ms:.0f} ms/candidate (median of {len(v)}), "
                          f"{ref_ms / ms:.2f}x", flush=True)
            rows += report(name, figs[name], args.candidates)
            ref_fpm = 60.0 * n / sum(figs[name]["ref"])
            for mode in modes:
                total = figs[name]["startup"][mode] + sum(figs[name]["ours"][mode])
                print(f"RATIO {name} {mode}: {60.0 * n / total / ref_fpm:.2f}x files/minute "
                      f"(steady state {sum(figs[name]['ref']) / sum(figs[name]['ours'][mode]):.2f}x, "
                      f"start-up {figs[name]['startup'][mode]:.1f} s)", flush=True)
    print(f"# load avg at end {os.getloadavg()[0]:.1f}; total benchmark time {time.perf_counter() - t_all:.0f} s")
    print("\n" + HEADER)
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(figs, indent=1))


if __name__ == "__main__":
    main()
