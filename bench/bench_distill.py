"""Distillation benchmark on a synthetic set with the small CPU config (``config/train/cpu_small.yaml``).

1. Makes the synthetic set (``labeldistill-synth --size demo --seed 0``; ``--size tiny|bench`` for others) in a
   cache folder if missing (``$LABELDISTILL_CACHE`` or ``~/.cache/labeldistill_ros``).
2. Trains the LiDAR teacher and the label encoder once (shared by every method and seed; reused when present).
3. Trains the student per seed (``--seeds N``: trainer seeds ``seed .. seed + N - 1``; the seed sets the student's
   initialisation and data order, the same for every method) and per method (``none`` = baseline,
   ``labeldistill``, ``unidistill``, ``cmkd``, ``stereodistill``) with the same budget (steps x batch), then scores
   each on the val split with nuscenes-devkit's DetectionEval.
4. Prints one table (mean mAP and NDS over seeds, NDS standard deviation over seeds, gain over the baseline with
   the standard error of the paired per-seed gain, median training step time = distillation overhead) and the
   per-class maximum recall (the highest recall of each class's PR curve at the 2 m threshold, from the devkit's
   metric data; nuScenes' AP ignores recall below 10 %, so a class under that cut scores AP 0 whatever its
   precision: marked ``*``), and writes ``bench/results/distill.json``: per method ``NDS``, ``mAP`` (means),
   ``NDS_std``, ``gain_NDS_pts`` / ``gain_NDS_se`` (and mAP), ``per_class_max_recall`` (mean over seeds),
   ``classes_under_min_recall``, ``step_ms``, ``seeds`` (the per-seed results); plus the budget and machine.

Defaults = the comparison in the README (``bench/results/distill.json``): the demo set (192 training samples, the
``make demo`` world), the config's batch (4) with its lr scaling, the demo's teacher (6 epochs) and label encoder
(3), then 15 students (5 methods x seeds 0, 1, 2) of 4 epochs (192 steps, the last epoch at lr / 10), two at a
time with one torch thread each (``--jobs``): about 95 minutes on 2 otherwise idle cores. Every stage of more than
one epoch runs its last epoch at lr / 10 (the demo's schedule). It is far below convergence and from scratch (no
ImageNet backbone here): the numbers compare the methods' early training, not final accuracy.
Step times are wall-clock on a possibly shared machine: compare them within one run only.
``--device cuda`` trains on the GPU (fp16 autocast per the stage's ``amp``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("none", "labeldistill", "unidistill", "cmkd", "stereodistill")
SIZES = ("tiny", "demo", "bench")
MIN_RECALL = 0.1  # nuScenes detection_cvpr_2019 min_recall


def cache_root() -> Path:
    return Path(os.environ.get("LABELDISTILL_CACHE", Path.home() / ".cache" / "labeldistill_ros"))


def ensure_synth_set(size: str = "bench", seed: int = 0) -> Path:
    """The synthetic set of ``size`` (tiny | demo | bench), generated once into the cache (atomic: written to a
    temp folder, renamed)."""
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {', '.join(SIZES)}")
    out = cache_root() / "synth" / f"{size}_seed{seed}"
    if (out / "v1.0-synth" / "sample.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    exe = Path(sys.executable).with_name("labeldistill-synth")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "labeldistill_training.synth.cli"]
    print(f"[bench_distill] generating the synthetic {size} set -> {out}", flush=True)
    subprocess.run(cmd + ["--size", size, "--seed", str(seed), "--out", str(tmp)], check=True)
    tmp.rename(out)
    return out


def ensure_bench_set(seed: int = 0) -> Path:
    """The synthetic bench set (``--size bench``)."""
    return ensure_synth_set("bench", seed)


def default_work_dir(size: str, data: str | None = None) -> Path:
    """Shared teacher / label encoder and students of one data set: ``<cache>/bench_distill`` for the bench set,
    ``<cache>/bench_distill_<size or data folder name>`` otherwise (a teacher trained on one set is not reused on
    another)."""
    if data:
        return cache_root() / f"bench_distill_{Path(data).resolve().name}"
    return cache_root() / ("bench_distill" if size == "bench" else f"bench_distill_{size}")


def parse_device(name: str):
    """``auto`` (the trainer's default: CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` -> device or None."""
    import torch

    if name == "auto":
        return None
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return dev


def run_stage(cfg_path: Path, stage: str, overrides: dict, device=None) -> dict:
    from labeldistill_training.config import load_train_config
    from labeldistill_training.trainer import Trainer

    cfg = load_train_config(cfg_path, overrides)
    t0 = time.perf_counter()
    summary = Trainer(cfg, stage, device=device).fit()
    summary["wall_s"] = time.perf_counter() - t0
    return summary


def budget(epochs: int, max_iters: int | None) -> dict:
    """A stage budget of ``epochs``, the last one at lr / 10 when there is more than one (the demo's schedule:
    ``config/train/cpu_small.yaml``; a one-epoch budget keeps the full lr)."""
    return {"epochs": epochs, "max_iters_per_epoch": max_iters, "milestones": [epochs - 1] if epochs > 1 else [2]}


def base_overrides(data: Path, work: Path, batch_size: int, seed: int, workers: int = 0) -> dict:
    """Config overrides every stage shares: data root, batch, shared work dir, seed, quiet logging."""
    return {"data": {"dataroot": str(data)}, "loader": {"batch_size": batch_size, "num_workers": workers},
            "trainer": {"work_dir": str(work / "shared"), "seed": seed, "progress": sys.stderr.isatty(),
                        "log_interval": 5}}


def _init_worker(threads: int) -> None:
    """A ``--jobs`` worker process: its share of the cores as torch intra-op threads."""
    import torch

    torch.set_num_threads(threads)


def _student_run(cfg_path: Path, over: dict, device, run_dir: Path, label: str, seed: int) -> dict:
    """One student run (one method, one seed; ``label`` names it in the results) from scratch; returns its
    per-seed record."""
    shutil.rmtree(run_dir, ignore_errors=True)  # same budget from scratch for every method
    summ = run_stage(cfg_path, "student", over, device)
    m = summ.get("metrics") or {}
    return {"seed": seed, "mAP": m.get("mAP"), "NDS": m.get("NDS"),
            "step_ms": summ.get("step_ms"), "steps": summ.get("global_step"), "wall_s": summ.get("wall_s"),
            "tp_errors": {k: m.get(k) for k in ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")},
            "class_ap": m.get("class_ap") or {},
            "per_class_max_recall": m.get("per_class_max_recall") or {}}


def ensure_shared(cfg_path: Path, base: dict, work: Path, teacher_epochs: int, label_encoder_epochs: int,
                  max_iters: int | None, device=None) -> dict:
    """Train (or reuse) the LiDAR teacher and the label encoder under ``<work>/shared``; returns a summary per stage
    (``global_step``, ``step_ms``, ``wall_s``, val ``mAP``/``NDS``). The checkpoints: :func:`shared_checkpoints`."""
    shared = {}
    for stage, epochs in (("teacher", teacher_epochs), ("label_encoder", label_encoder_epochs)):
        final = work / "shared" / stage / "final.pt"
        if final.is_file():
            print(f"[bench_distill] {stage}: reusing {final}", flush=True)
            sj = final.parent / "summary.json"
            summ = json.loads(sj.read_text()) if sj.is_file() else {}
        else:
            print(f"[bench_distill] {stage}: training {epochs} epoch(s), batch {base['loader']['batch_size']}",
                  flush=True)
            summ = run_stage(cfg_path, stage, {**base, "stages": {stage: budget(epochs, max_iters)}}, device)
        shared[stage] = {k: summ.get(k) for k in ("global_step", "step_ms", "wall_s")}
        m = summ.get("metrics") or {}
        shared[stage].update({"mAP": m.get("mAP"), "NDS": m.get("NDS")})
        print(f"[bench_distill] {stage}: val mAP {m.get('mAP')} NDS {m.get('NDS')}", flush=True)
    return shared


def shared_checkpoints(work: Path) -> dict:
    """Student-stage overrides pointing at the shared teacher and label encoder."""
    return {"teacher_checkpoint": str(work / "shared/teacher/final.pt"),
            "label_encoder_checkpoint": str(work / "shared/label_encoder/final.pt")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "config/train/cpu_small.yaml"))
    ap.add_argument("--size", default="demo", choices=SIZES, help="synthetic set (default demo, the make demo set)")
    ap.add_argument("--work-dir", default=None, help="default: <cache>/bench_distill (bench set), "
                                                     "<cache>/bench_distill_<size> otherwise")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="per-step batch (default: the config's loader.batch_size; the lr scales with it)")
    ap.add_argument("--teacher-epochs", type=int, default=6)
    ap.add_argument("--label-encoder-epochs", type=int, default=3)
    ap.add_argument("--student-epochs", type=int, default=4, help="student epochs per method and seed")
    ap.add_argument("--max-iters", type=int, default=None, help="cap on steps per epoch (smoke runs)")
    ap.add_argument("--seed", type=int, default=0, help="teacher / label encoder seed and the first student seed")
    ap.add_argument("--seeds", type=int, default=3, help="student runs per method (seeds seed .. seed + N - 1)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    ap.add_argument("--workers", type=int, default=0, help="data loader workers (0 on 2 shared cores)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="student runs in parallel, each in its own process with cpus / jobs torch threads (the "
                         "single-threaded parts of a run, data loading and the devkit's evaluation, then overlap); "
                         "default 2 on the CPU, 1 on a GPU")
    ap.add_argument("--out", default=str(REPO / "bench/results/distill.json"))
    ap.add_argument("--fresh", action="store_true", help="retrain the shared teacher and label encoder too")
    ap.add_argument("--kd-warmup-steps", type=int, default=0,
                    help="distill.kd_warmup_steps of the KD methods of this run (0 = off, as in the reference); "
                         "their results are named <method>_kdwarmup<N>")
    ap.add_argument("--merge", action="store_true",
                    help="keep every per-seed result of --out that this run does not retrain (add seeds to a "
                         "finished comparison with --seed N, or a KD warm-up variant, gains against the baseline's "
                         "seeds)")
    ap.add_argument("--data", default=None, help="use this nuScenes-format set instead of the synthetic one")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    if args.jobs is None:
        args.jobs = 1 if args.device.startswith("cuda") else 2
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")

    t_start = time.perf_counter()
    device = parse_device(args.device)
    data = Path(args.data) if args.data else ensure_synth_set(args.size)
    work = Path(args.work_dir) if args.work_dir else default_work_dir(args.size, args.data)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    cfg_path = Path(args.config)
    if args.batch_size is None:
        from labeldistill_training.config import load_train_config

        args.batch_size = load_train_config(cfg_path).loader.batch_size
    base = base_overrides(data, work, args.batch_size, args.seed, args.workers)
    shared = ensure_shared(cfg_path, base, work, args.teacher_epochs, args.label_encoder_epochs, args.max_iters,
                           device)

    labels = {m: m if m == "none" or not args.kd_warmup_steps else f"{m}_kdwarmup{args.kd_warmup_steps}"
              for m in args.methods}
    seeds = [args.seed + i for i in range(args.seeds)]
    runs: dict = merged_runs(Path(args.out), {(lb, s) for lb in labels.values() for s in seeds}) if args.merge else {}
    for label in labels.values():
        runs.setdefault(label, [])
    plan = []
    for seed in seeds:
        for method in args.methods:
            run_dir = work / labels[method] / f"seed{seed}"
            over = {**base,
                    "distill": {"method": method, "kd_warmup_steps": args.kd_warmup_steps},
                    "trainer": {**base["trainer"], "work_dir": str(run_dir), "seed": seed},
                    "stages": {"student": {**budget(args.student_epochs, args.max_iters), **shared_checkpoints(work)}}}
            plan.append((cfg_path, over, device, run_dir, labels[method], seed))

    def record(method: str, seed: int, rec: dict) -> None:
        runs[method].append(rec)
        runs[method].sort(key=lambda r: r["seed"])
        print(f"[bench_distill] student ({method}, seed {seed}): mAP {rec['mAP']} NDS {rec['NDS']} "
              f"step {rec['step_ms']} ms", flush=True)
        write_json(args, summarise(runs), shared, t_start, complete=False, device=device)

    print(f"[bench_distill] students: {len(plan)} runs ({len(args.methods)} methods x {len(seeds)} seeds), "
          f"{args.student_epochs} epoch(s) each, {args.jobs} at a time", flush=True)
    if args.jobs == 1:
        for job in plan:
            record(job[4], job[5], _student_run(*job))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_student_run, *job): job for job in plan}
            for fut in as_completed(futures):
                job = futures[fut]
                record(job[4], job[5], fut.result())

    write_json(args, summarise(runs), shared, t_start, complete=True, device=device)
    return 0


def merged_runs(out: Path, replaced: set[tuple[str, int]]) -> dict:
    """Per-seed records of an earlier ``distill.json`` (``--merge``), less the ``(method label, seed)`` pairs in
    ``replaced`` (the runs being retrained)."""
    if not out.is_file():
        return {}
    old = json.loads(out.read_text()).get("methods") or {}
    return {name: [r for r in rec.get("seeds", []) if (name, r["seed"]) not in replaced]
            for name, rec in old.items()}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _std(xs):
    """Sample standard deviation (n - 1); None below two values."""
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def summarise(runs: dict) -> dict:
    """Per method: means over seeds, ``NDS_std`` / ``mAP_std`` over seeds, the gain over ``none`` (points; mean of
    the per-seed paired differences) with its standard error ``std(d) / sqrt(n)`` (None below two seeds), the
    per-class maximum recall (mean over seeds) and the classes under nuScenes' 10 % recall cut."""
    out: dict = {}
    base = {r["seed"]: r for r in runs.get("none", [])}
    for method, rs in runs.items():
        done = [r for r in rs if r["NDS"] is not None]
        classes = sorted({c for r in done for c in r["per_class_max_recall"]})
        recall = {c: _mean([r["per_class_max_recall"].get(c) for r in done]) for c in classes}
        res = {"NDS": _mean([r["NDS"] for r in done]), "mAP": _mean([r["mAP"] for r in done]),
               "NDS_std": _std([r["NDS"] for r in done]), "mAP_std": _std([r["mAP"] for r in done]),
               "step_ms": _mean([r["step_ms"] for r in done]), "steps": _mean([r["steps"] for r in done]),
               "wall_s": sum(r["wall_s"] or 0.0 for r in done),
               "tp_errors": {k: _mean([r["tp_errors"].get(k) for r in done])
                             for k in ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")},
               "per_class_max_recall": recall,
               "classes_under_min_recall": [c for c, v in recall.items() if v is not None and v < MIN_RECALL],
               "seeds": rs}
        paired = [(r, base[r["seed"]]) for r in done if r["seed"] in base and base[r["seed"]]["NDS"] is not None]
        if method != "none" and paired:
            for key in ("NDS", "mAP"):
                d = [100 * (a[key] - b[key]) for a, b in paired]
                sd = _std(d)
                res[f"gain_{key}_pts"] = sum(d) / len(d)
                res[f"gain_{key}_se"] = sd / math.sqrt(len(d)) if sd is not None else None
            st = [a["step_ms"] / b["step_ms"] for a, b in paired if a["step_ms"] and b["step_ms"]]
            res["step_time_ratio"] = sum(st) / len(st) if st else None
        elif method == "none" and done:
            res.update({"gain_NDS_pts": 0.0, "gain_mAP_pts": 0.0, "step_time_ratio": 1.0})
        out[method] = res
    return out


def _f(v, fmt: str, scale: float = 1.0) -> str:
    return format(v * scale, fmt) if v is not None else "n/a".rjust(len(format(0.0, fmt)))


def tables(results: dict) -> str:
    """The method table and the per-class maximum recall table (``*`` = under nuScenes' 10 % recall cut)."""
    w = max([14, *map(len, results)])
    lines = [f"{'method':<{w}} {'seeds':>5} {'mAP':>7} {'NDS':>7} {'NDS_std':>7} {'dNDS':>7} {'+-se':>6} "
             f"{'dmAP':>7} {'+-se':>6} {'step_ms':>9} {'overhead':>9}"]
    for method, r in results.items():
        n = sum(1 for x in r["seeds"] if x["NDS"] is not None)
        lines.append(f"{method:<{w}} {n:>5} {_f(r['mAP'], '7.2f', 100)} {_f(r['NDS'], '7.2f', 100)} "
                     f"{_f(r['NDS_std'], '7.2f', 100)} {_f(r.get('gain_NDS_pts'), '+7.2f')} "
                     f"{_f(r.get('gain_NDS_se'), '6.2f')} {_f(r.get('gain_mAP_pts'), '+7.2f')} "
                     f"{_f(r.get('gain_mAP_se'), '6.2f')} {_f(r['step_ms'], '9.0f')} "
                     f"{_f(r.get('step_time_ratio'), '8.2f')}x")
    classes = sorted({c for r in results.values() for c in r["per_class_max_recall"]})
    if classes:
        names = list(results)
        lines += ["", "max recall at 2 m, % (* = under the 10 % recall cut: AP 0 whatever the precision)",
                  f"{'class':<22}" + "".join(f"{m[:22]:>23}" for m in names)]
        for c in classes:
            cells = []
            for m in names:
                v = results[m]["per_class_max_recall"].get(c)
                cells.append(f"{'n/a':>23}" if v is None else f"{100 * v:>22.1f}{'*' if v < MIN_RECALL else ' '}")
            lines.append(f"{c:<22}" + "".join(cells))
    return "\n".join(lines)


def write_json(args, results: dict, shared: dict, t_start: float, complete: bool, device=None) -> None:
    """Tables to stdout (when complete) and ``distill.json`` (atomically; ``complete`` false while running)."""
    import torch

    table = tables(results)
    cfg = Path(args.config).resolve()
    dev = device.type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    out = {
        "complete": complete,
        "methods": results,
        "shared": shared,
        "budget": {"batch_size": args.batch_size, "teacher_epochs": args.teacher_epochs,
                   "label_encoder_epochs": args.label_encoder_epochs, "student_epochs": args.student_epochs,
                   "max_iters_per_epoch": args.max_iters, "seed": args.seed, "seeds": args.seeds,
                   "merged": args.merge,  # --merge: seed / seeds are this run's; every method's records list its own
                   "config": str(cfg.relative_to(REPO)) if cfg.is_relative_to(REPO) else str(cfg),
                   "data": f"synthetic {args.size} set (labeldistill-synth --size {args.size} --seed 0)"
                   if not args.data else str(args.data)},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "device": dev, "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None,
                    "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "total_wall_s": time.perf_counter() - t_start,
        "table": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_name(Path(args.out).name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, args.out)
    if complete:
        print("\nDistillation benchmark (mAP/NDS in %, means over seeds; gains in points over 'none', mean of the "
              "per-seed differences +- their standard error; step time ratio = overhead)")
        print(table)
        print(f"\nwrote {args.out} ({out['total_wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    sys.exit(main())
