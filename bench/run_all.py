#!/usr/bin/env python3
"""Run every benchmark (``bench/bench_*.py``) and write ``bench/RESULTS.md`` from ``bench/results/*.json``.

    python bench/run_all.py                 # run all benchmarks, then write RESULTS.md
    python bench/run_all.py --quick         # forward --quick to the benchmarks that have it
    python bench/run_all.py --only model    # run one benchmark (name without bench_ and .py)
    python bench/run_all.py --report-only   # only rewrite RESULTS.md from the JSON files present

Each benchmark prints its own table and writes ``bench/results/<name>.json``; RESULTS.md gathers the numbers
with the machine, the date and the commit they were measured at, headline figures first. The same headline
tables replace the block between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` in the README.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# Headline figures per benchmark: (label, dotted key in the JSON, unit).
HEADLINES: dict[str, list[tuple[str, str, str]]] = {
    "model": [
        ("BEV pooling, cached vs naive cumsum (R50 256x704, 6 cameras)", "pool_speedup_vs_naive", "x"),
        ("BEV pooling, cached, p50", "view_transform_r50_256x704.cpu.cached_ms_p50", "ms"),
        ("node backend compiled vs eager, r18 128x352 CPU 1 thread (torch.compile)", "compiled_speedup", "x"),
        ("student forward r18 128x352, CPU p50", "forward.r18_128x352_cpu.cpu.forward_ms_p50", "ms"),
        ("student forward r50 256x704, CPU p50", "forward.r50_256x704.cpu.forward_ms_p50", "ms"),
        ("student forward r18 128x352, lent GPU (H200) p50: fp32 / fp16 / fp16 compiled / fp16 compiled + CUDA graphs",
         "gpu.gpu_forward_ms_p50.r18_128x352_cpu", "ms"),
        ("student forward r50 256x704, lent GPU (H200) p50: fp32 / fp16 / fp16 compiled / fp16 compiled + CUDA graphs",
         "gpu.gpu_forward_ms_p50.r50_256x704", "ms"),
    ],
    "data": [("data pipeline, 6 x 1600x900 JPEG -> 256x704, no workers", "results.0.samples_per_s", "samples/s")],
    "node": [
        ("node overhead (first image in -> detections out, minus forward and the waits for cameras and model), "
         "p50", "overhead_ms_p50", "ms"),
        ("node overhead p99", "overhead_ms_p99", "ms"),
        ("node overhead on the vehicle's cv_bridge path, p50", "overhead_ms_p50_vehicle_path", "ms"),
        ("node overhead on the vehicle's cv_bridge path, p99", "overhead_ms_p99_vehicle_path", "ms"),
        ("model rate inside the node (r18 128x352, CPU, 1 thread)", "model_hz", "Hz"),
        ("camera sets lost in transport (6 x 1600x900 rgb8)", "dropped_sets", ""),
        ("resident memory growth over the run", "rss_growth_mb", "MB"),
        ("node on a lent GPU (H200, r50 256x704 fp16, live ROS): overhead p50", "gpu.gpu_overhead_ms_p50", "ms"),
        ("node on a lent GPU: overhead p99", "gpu.gpu_overhead_ms_p99", "ms"),
        ("node on a lent GPU: end-to-end (last camera's stamp -> detections received) p50",
         "gpu.gpu_e2e_ms_p50", "ms"),
        ("node on a lent GPU: model forward inside the node p50, per run (the compiled run on another H200)",
         "gpu.gpu_forward_ms_p50", "ms"),
        ("temporal model per set: history + warp + stack (r18, 1 previous frame), p50", "temporal_overhead_ms_p50",
         "ms"),
        ("temporal overhead / forward, r50 256x704 with 4 previous frames (CPU)",
         "temporal.r50_256x704.overhead_fraction_of_forward", ""),
    ],
}


def benchmarks() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(BENCH.glob("bench_*.py"))}


def accepts_quick(script: Path) -> bool:
    return "--quick" in script.read_text()


def run(name: str, script: Path, quick: bool) -> tuple[int, float]:
    cmd = [sys.executable, str(script)] + (["--quick"] if quick and accepts_quick(script) else [])
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    rc = subprocess.call(cmd, cwd=ROOT)
    return rc, time.monotonic() - t0


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, dict) and v and all(isinstance(x, (int, float)) or x is None for x in v.values()):
        return " / ".join(f"{k} {_fmt(x)}" for k, x in v.items() if x is not None)  # e.g. fp32 14.31 / fp16 18.46
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)[:80]
    return str(v)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += _flatten(v, key + ".")
        else:
            rows.append((key, v))
    return rows


def _get(data, dotted: str):
    for part in dotted.split("."):
        if isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data


def _pm(mean, spread, scale: float = 1.0, sign: str = "") -> str:
    """``mean +- spread`` (``spread`` omitted when None)."""
    if mean is None:
        return "n/a"
    return f"{scale * mean:{sign}.2f}" + (f" ± {scale * spread:.2f}" if spread is not None else "")


def distill_table(data: dict) -> list[str]:
    """The distillation comparison of ``distill.json``: per method the seeds, mean mAP and NDS (NDS +- its standard
    deviation over seeds), the gains over the baseline (mean of the per-seed paired differences +- their standard
    error), the step time and its ratio to the baseline's; then the per-class maximum recall."""
    methods = {k: v for k, v in (data.get("methods") or {}).items() if v.get("mAP") is not None}
    b = data.get("budget") or {}
    seeds = sorted({r["seed"] for v in methods.values() for r in v.get("seeds", []) if r.get("NDS") is not None})
    machine = data.get("machine") or {}
    lines = [f"Distillation on the {b.get('data', 'synthetic set')}, same budget per method and seed (student: "
             f"{b.get('student_epochs')} epoch(s) at batch {b.get('batch_size')}"
             f"{', the last at lr / 10' if (b.get('student_epochs') or 1) > 1 else ''}; teacher "
             f"{b.get('teacher_epochs')}, label encoder {b.get('label_encoder_epochs')} epochs; seeds "
             f"{', '.join(map(str, seeds)) or 'n/a'}; {machine.get('device', 'cpu')}, from scratch: far from "
             f"convergence). mAP and NDS in %, gains in points:"
             + ("" if data.get("complete") else " **(incomplete run)**"), "",
             "| method | seeds | mAP | NDS ± std | NDS gain ± se | mAP gain ± se | step ms | step time |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in methods.items():
        n = sum(1 for x in r.get("seeds", []) if x.get("NDS") is not None)
        ratio = r.get("step_time_ratio")
        lines.append(f"| {name} | {n} | {100 * r['mAP']:.2f} | {_pm(r['NDS'], r.get('NDS_std'), 100)} | "
                     f"{_pm(r.get('gain_NDS_pts'), r.get('gain_NDS_se'), sign='+')} | "
                     f"{_pm(r.get('gain_mAP_pts'), r.get('gain_mAP_se'), sign='+')} | "
                     f"{r['step_ms']:.0f} | {'n/a' if ratio is None else f'{ratio:.2f}x'} |")
    classes = sorted({c for r in methods.values() for c in r.get("per_class_max_recall", {})})
    if classes:
        lines += ["", "Maximum recall per class at the 2 m threshold, % (mean over seeds; * = under nuScenes' 10 % "
                  "recall cut, so that class's AP is 0 whatever its precision):", "",
                  "| class | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for c in classes:
            cells = []
            for r in methods.values():  # the recall cut is bench_distill's (classes_under_min_recall)
                v = r.get("per_class_max_recall", {}).get(c)
                under = c in r.get("classes_under_min_recall", [])
                cells.append("n/a" if v is None else f"{100 * v:.1f}{'*' if under else ''}")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return lines + [""]


def headline_lines() -> list[str]:
    """Markdown tables of the headline numbers of every result present."""
    rows = []
    for name, items in HEADLINES.items():
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        for label, key, unit in items:
            v = _get(data, key)
            if v is not None:
                rows.append(f"| {label} | {_fmt(v)} {unit} | `{name}` |".replace("  |", " |"))
    lines = ["| figure | value | benchmark |", "|---|---|---|", *rows, ""] if rows else []
    distill = RESULTS / "distill.json"
    if distill.is_file():
        lines += distill_table(json.loads(distill.read_text()))
    return lines


def update_readme(lines: list[str], stamp: str) -> bool:
    """Replace the README block between the bench markers; False when the README has no such block."""
    if not README.is_file():
        return False
    text = README.read_text()
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    block = "\n".join([BEGIN, f"_Measured {stamp}; all figures in [bench/RESULTS.md](bench/RESULTS.md)._", "",
                       *lines, END])
    README.write_text(head + block + tail)
    return True


def write_report(statuses: dict[str, str], headlines: list[str]) -> Path:
    lines = ["# Benchmark results", "",
             f"- machine: {machine()}",
             f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
             f"- commit: {git_commit()}", "",
             "## Headline figures", "", *headlines,
             "Each section below is one `bench/results/<name>.json` (written by `bench/bench_<name>.py`).", ""]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        lines += [f"## {path.stem}", ""]
        if path.stem in statuses:
            lines += [f"_{statuses[path.stem]}_", ""]
        lines += ["| key | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in _flatten(data)]
        lines.append("")
    out = BENCH / "RESULTS.md"
    out.write_text("\n".join(lines))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="forward --quick to the benchmarks that accept it")
    ap.add_argument("--only", action="append", default=[], help="run only this benchmark (repeatable)")
    ap.add_argument("--report-only", action="store_true", help="do not run anything; rewrite RESULTS.md")
    args = ap.parse_args(argv)
    found = benchmarks()
    unknown = [n for n in args.only if n not in found]
    if unknown:
        ap.error(f"--only {unknown[0]}: no bench/bench_{unknown[0]}.py (have: {', '.join(found)})")
    statuses: dict[str, str] = {}
    failed = []
    if not args.report_only:
        for name, script in found.items():
            if args.only and name not in args.only:
                continue
            rc, secs = run(name, script, args.quick)
            statuses[name] = f"ran in {secs:.0f} s" + ("" if rc == 0 else f", FAILED with exit code {rc}")
            if rc != 0:
                failed.append(name)
    headlines = headline_lines()
    out = write_report(statuses, headlines)
    stamp = f"{dt.date.today().isoformat()} on {machine()}, commit {git_commit()}"
    readme = update_readme(headlines, stamp)
    print(f"\nwrote {out}" + (" and the README's benchmark block" if readme else "")
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
