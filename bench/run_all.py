#!/usr/bin/env python3
"""Run every benchmark (``bench/bench_*.py``) and write ``bench/RESULTS.md`` from ``bench/results/*.json``.

    python bench/run_all.py                 # run all benchmarks, then write RESULTS.md
    python bench/run_all.py --quick         # forward --quick to the benchmarks that have it
    python bench/run_all.py --only model    # run one benchmark (name without bench_ and .py)
    python bench/run_all.py --report-only   # only rewrite RESULTS.md from the JSON files present

Each benchmark prints its own table and writes ``bench/results/<name>.json``; RESULTS.md gathers the numbers
with the machine, the date and the commit they were measured at.
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
        return f"{v:.4g}"
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


def write_report(statuses: dict[str, str]) -> Path:
    lines = ["# Benchmark results", "",
             f"- machine: {machine()}",
             f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
             f"- commit: {git_commit()}", "",
             "Each section is one `bench/results/<name>.json` (written by `bench/bench_<name>.py`).", ""]
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
    out = write_report(statuses)
    print(f"\nwrote {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
