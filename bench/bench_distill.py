"""Distillation benchmark on the synthetic ``bench`` set with the small CPU config (``config/train/cpu_small.yaml``).

1. Makes the synthetic set (``labeldistill-synth --size bench --seed 0``) in a cache folder if missing
   (``$LABELDISTILL_CACHE`` or ``~/.cache/labeldistill_ros``).
2. Trains the LiDAR teacher and the label encoder once (shared by every method; reused when present).
3. Trains the student once per method (``none`` = baseline, ``labeldistill``, ``unidistill``, ``cmkd``,
   ``stereodistill``) with the same budget (steps x batch), seed and initialisation, then scores each on the
   val split with nuscenes-devkit's DetectionEval.
4. Prints one table (mAP, NDS, gain over the baseline, median training step time = distillation overhead) and
   writes ``bench/results/distill.json`` (per method: ``mAP``, ``NDS``, ``step_ms``; plus the budget and machine).

Budget (defaults: batch 2; teacher 2 epochs, label encoder 1 epoch, student 1 epoch per method; one epoch of the
380 training samples = 190 steps): sized for about an hour on 2 otherwise idle CPU cores (a shared machine takes
longer). It is far below convergence: the numbers compare the methods' early training, not final accuracy.
Step times are wall-clock on a possibly shared machine: compare them within one run only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("none", "labeldistill", "unidistill", "cmkd", "stereodistill")


def cache_root() -> Path:
    return Path(os.environ.get("LABELDISTILL_CACHE", Path.home() / ".cache" / "labeldistill_ros"))


def ensure_bench_set(seed: int = 0) -> Path:
    """The synthetic bench set, generated once into the cache (atomic: written to a temp folder, renamed)."""
    out = cache_root() / "synth" / f"bench_seed{seed}"
    if (out / "v1.0-synth" / "sample.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    exe = Path(sys.executable).with_name("labeldistill-synth")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "labeldistill_training.synth.cli"]
    print(f"[bench_distill] generating the synthetic bench set -> {out}", flush=True)
    subprocess.run(cmd + ["--size", "bench", "--seed", str(seed), "--out", str(tmp)], check=True)
    tmp.rename(out)
    return out


def run_stage(cfg_path: Path, stage: str, overrides: dict) -> dict:
    from labeldistill_training.config import load_train_config
    from labeldistill_training.trainer import Trainer

    cfg = load_train_config(cfg_path, overrides)
    t0 = time.perf_counter()
    summary = Trainer(cfg, stage).fit()
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "config/train/cpu_small.yaml"))
    ap.add_argument("--work-dir", default=None, help="default: <cache>/bench_distill")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--label-encoder-epochs", type=int, default=1)
    ap.add_argument("--student-epochs", type=int, default=1, help="student epochs per method (same for all)")
    ap.add_argument("--max-iters", type=int, default=None, help="cap on steps per epoch (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench/results/distill.json"))
    ap.add_argument("--fresh", action="store_true", help="retrain the shared teacher and label encoder too")
    ap.add_argument("--data", default=None, help="use this nuScenes-format set instead of the cached bench set")
    args = ap.parse_args(argv)

    import torch

    t_start = time.perf_counter()
    data = Path(args.data) if args.data else ensure_bench_set()
    work = Path(args.work_dir) if args.work_dir else cache_root() / "bench_distill"
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    cfg_path = Path(args.config)

    def budget(epochs: int) -> dict:
        # no LR decay inside these short budgets
        return {"epochs": epochs, "max_iters_per_epoch": args.max_iters, "milestones": [epochs + 1]}

    base = {"data": {"dataroot": str(data)}, "loader": {"batch_size": args.batch_size, "num_workers": 0},
            "trainer": {"work_dir": str(work / "shared"), "seed": args.seed, "progress": sys.stderr.isatty(),
                        "log_interval": 5}}
    shared = {}
    for stage, epochs in (("teacher", args.teacher_epochs), ("label_encoder", args.label_encoder_epochs)):
        final = work / "shared" / stage / "final.pt"
        if final.is_file():
            print(f"[bench_distill] {stage}: reusing {final}", flush=True)
            summ = json.loads((final.parent / "summary.json").read_text()) if (final.parent / "summary.json").is_file() else {}
        else:
            print(f"[bench_distill] {stage}: training {epochs} epoch(s), batch {args.batch_size}", flush=True)
            summ = run_stage(cfg_path, stage, {**base, "stages": {stage: budget(epochs)}})
        shared[stage] = {k: summ.get(k) for k in ("global_step", "step_ms", "wall_s")}
        m = summ.get("metrics") or {}
        shared[stage].update({"mAP": m.get("mAP"), "NDS": m.get("NDS")})
        print(f"[bench_distill] {stage}: val mAP {m.get('mAP')} NDS {m.get('NDS')}", flush=True)

    results: dict = {}
    for method in args.methods:
        over = {**base,
                "distill": {"method": method},
                "trainer": {**base["trainer"], "work_dir": str(work / method)},
                "stages": {"student": {**budget(args.student_epochs),
                                       "teacher_checkpoint": str(work / "shared/teacher/final.pt"),
                                       "label_encoder_checkpoint": str(work / "shared/label_encoder/final.pt")}}}
        shutil.rmtree(work / method, ignore_errors=True)  # same budget from scratch for every method
        print(f"[bench_distill] student ({method}): training {args.student_epochs} epoch(s), batch {args.batch_size}",
              flush=True)
        summ = run_stage(cfg_path, "student", over)
        m = summ.get("metrics") or {}
        results[method] = {"mAP": m.get("mAP"), "NDS": m.get("NDS"), "step_ms": summ.get("step_ms"),
                           "steps": summ.get("global_step"),
                           "wall_s": summ.get("wall_s"),
                           "tp_errors": {k: m.get(k) for k in ("trans_err", "scale_err", "orient_err", "vel_err",
                                                                "attr_err")}}
        print(f"[bench_distill] student ({method}): mAP {m.get('mAP')} NDS {m.get('NDS')} "
              f"step {summ.get('step_ms')} ms", flush=True)
        write_json(args, results, shared, t_start, complete=False)

    write_json(args, results, shared, t_start, complete=True)
    return 0


def write_json(args, results: dict, shared: dict, t_start: float, complete: bool) -> None:
    """Table to stdout (when complete) and ``distill.json`` (atomically; ``complete`` false while running)."""
    import torch

    base_res = results.get("none")
    lines = [f"{'method':<14} {'mAP':>7} {'NDS':>7} {'dmAP':>7} {'dNDS':>7} {'step_ms':>9} {'overhead':>9}"]
    for method, r in results.items():
        dm = dn = ov = float("nan")
        if base_res and r["mAP"] is not None:
            dm = 100 * (r["mAP"] - base_res["mAP"])
            dn = 100 * (r["NDS"] - base_res["NDS"])
            ov = r["step_ms"] / base_res["step_ms"] if base_res["step_ms"] else float("nan")
            r["gain_mAP_pts"], r["gain_NDS_pts"], r["step_time_ratio"] = dm, dn, ov
        lines.append(f"{method:<14} {100 * (r['mAP'] or 0):7.2f} {100 * (r['NDS'] or 0):7.2f} {dm:+7.2f} {dn:+7.2f} "
                     f"{r['step_ms'] or float('nan'):9.0f} {ov:8.2f}x")
    table = "\n".join(lines)
    cfg = Path(args.config).resolve()
    out = {
        "complete": complete,
        "methods": results,
        "shared": shared,
        "budget": {"batch_size": args.batch_size, "teacher_epochs": args.teacher_epochs,
                   "label_encoder_epochs": args.label_encoder_epochs, "student_epochs": args.student_epochs,
                   "max_iters_per_epoch": args.max_iters,
                   "seed": args.seed, "config": str(cfg.relative_to(REPO)) if cfg.is_relative_to(REPO) else str(cfg),
                   "data": "synthetic bench set (labeldistill-synth --size bench --seed 0)" if not args.data
                   else str(args.data)},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "device": "cuda" if torch.cuda.is_available() else "cpu",
                    "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "total_wall_s": time.perf_counter() - t_start,
        "table": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_name(Path(args.out).name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, args.out)
    if complete:
        print("\nDistillation benchmark (mAP/NDS in %, gains in points over 'none', step time ratio = overhead)")
        print(table)
        print(f"\nwrote {args.out} ({out['total_wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    sys.exit(main())
