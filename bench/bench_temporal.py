#!/usr/bin/env python3
"""What a temporal student costs the node per camera set, next to the single-frame model (CPU, in-process).

    python bench/bench_temporal.py [--repeats 20] [--threads 1]

The node lifts each set once and keeps its BEV feature; for a model with T previous frames it then, per set,
selects the kept frames nearest to each trained offset (:class:`labeldistill_ros.temporal_buffer.BevHistory`),
warps them into the current ego frame (:func:`labeldistill_ros.model.temporal.warp_bev`) and stacks them on
channels. ``temporal_overhead_ms`` = that select + push + warp + stack, measured on a history filled as on a
12 Hz drive (the ego moving at 10 m/s, turning); ``forward_ms`` = the single-frame model's forward on six
cameras (random weights, same threads). Both for the node's small CPU model (r18 128x352, one previous frame at
0.5 s) and the reference r50 256x704 model with its configured previous frames (the 4-key layout: T = 4 at 1, 2,
3, 4 s; the r50 forward once: it takes seconds on a CPU). The temporal model's larger BEV trunk input (C x (1 + T) channels) is
model cost, reported separately (``temporal_forward_ms``).

Merges its figures into ``bench/results/node.json`` (``temporal_overhead_ms_p50`` for the node's model and the
``temporal`` block) and prints a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def pose(t_s: float) -> np.ndarray:
    from labeldistill_ros import geometry as g

    return g.make_transform(g.quat_to_matrix(g.yaw_to_quat(0.1 * t_s)), [10.0 * t_s, 0.5 * t_s, 0.0])


def measure(cfg, offsets, repeats: int, forward_repeats: int) -> dict:
    from labeldistill_ros.model.config import TemporalConfig
    from labeldistill_ros.model.export import example_inputs
    from labeldistill_ros.model.student import StudentDetector
    from labeldistill_ros.temporal_buffer import BevHistory

    cfg = dataclasses.replace(cfg, temporal=TemporalConfig())
    single = StudentDetector.from_config(cfg).eval()
    tcfg = dataclasses.replace(cfg, temporal=TemporalConfig(len(offsets), tuple(offsets)))
    temporal = StudentDetector.from_config(tcfg).eval()
    images, K, cam2ego, ida, bda = example_inputs(cfg)
    with torch.inference_mode():
        single(images, K, cam2ego, ida, bda)  # warm-up (pooling index built once)
        fwd = []
        for _ in range(forward_repeats):
            t0 = time.perf_counter()
            single(images, K, cam2ego, ida, bda)
            fwd.append((time.perf_counter() - t0) * 1e3)
        bev, depth = temporal.lift(images, K, cam2ego, ida, bda)
        history = BevHistory.for_config(tcfg)
        t = tcfg.temporal
        period = 1 / 12.0
        n_fill = int(max(offsets) / period) + 3
        for k in range(n_fill):  # a 12 Hz drive's history (own clones: each set has its own feature)
            history.push(int(k * period * 1e9), pose(k * period), bev[0].clone())
        over, sel_ms, warp_ms = [], [], []
        k = n_fill
        for _ in range(repeats):
            stamp, p = int(k * period * 1e9), pose(k * period)
            t0 = time.perf_counter()
            prev_bev, prev2curr, missing = history.select(stamp, p, t.effective_offsets_s, t.max_offset_error_s,
                                                          current_bev=bev[0])
            t1 = time.perf_counter()
            stacked = torch.cat([bev] + temporal._previous_frames(len(offsets), K, ida, bda, prev2curr, prev_bev,
                                                                  None, None), dim=1)
            t2 = time.perf_counter()
            history.push(stamp, p, bev[0].clone())
            t3 = time.perf_counter()
            assert not any(missing) and stacked.shape[1] == bev.shape[1] * (1 + len(offsets))
            over.append((t3 - t0) * 1e3)
            sel_ms.append((t1 - t0) * 1e3 + (t3 - t2) * 1e3)
            warp_ms.append((t2 - t1) * 1e3)
            k += 1
        tfwd = []
        for _ in range(forward_repeats):
            t0 = time.perf_counter()
            temporal.forward_lifted(*temporal.lift(images, K, cam2ego, ida, bda), K, ida, bda, prev2curr, prev_bev)
            tfwd.append((time.perf_counter() - t0) * 1e3)
    p50 = float(np.percentile(over, 50))
    f50 = float(np.percentile(fwd, 50))
    return {"config": cfg.name, "offsets_s": list(offsets), "bev": list(bev.shape[1:]),
            "temporal_overhead_ms_p50": p50, "temporal_overhead_ms_p99": float(np.percentile(over, 99)),
            "select_push_ms_p50": float(np.percentile(sel_ms, 50)), "warp_stack_ms_p50": float(np.percentile(warp_ms, 50)),
            "forward_ms_p50": f50, "temporal_forward_ms_p50": float(np.percentile(tfwd, 50)),
            "overhead_fraction_of_forward": p50 / f50, "history_frames": len(history), "repeats": repeats}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the node's cpu_threads)")
    ap.add_argument("--out", default=str(RESULTS / "node.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from labeldistill_ros.model.config import load_model_config

    small = measure(load_model_config(ROOT / "config/model/r18_128x352_cpu.yaml"), (0.5,), a.repeats, 5)
    r50_cfg = load_model_config(ROOT / "config/model/r50_256x704.yaml")
    r50 = measure(r50_cfg, r50_cfg.temporal.effective_offsets_s, a.repeats, 1)
    out = Path(a.out)
    res = json.loads(out.read_text()) if out.is_file() else {}
    res["temporal_overhead_ms_p50"] = small["temporal_overhead_ms_p50"]
    res["temporal"] = {"node_model": small, "r50_256x704": r50, "threads": a.threads, "device": "cpu",
                       "measured": time.strftime("%Y-%m-%d")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"{'model':<18} {'T':>2} {'overhead p50 ms':>16} {'select+push':>12} {'warp+stack':>11} "
          f"{'forward ms':>11} {'fraction':>9} {'temporal fwd':>13}")
    for r in (small, r50):
        print(f"{r['config']:<18} {len(r['offsets_s']):>2} {r['temporal_overhead_ms_p50']:>16.2f} "
              f"{r['select_push_ms_p50']:>12.2f} {r['warp_stack_ms_p50']:>11.2f} {r['forward_ms_p50']:>11.1f} "
              f"{r['overhead_fraction_of_forward']:>9.2%} {r['temporal_forward_ms_p50']:>13.1f}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
