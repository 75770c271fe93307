#!/usr/bin/env python3
"""Camera-student speed: forward ms per frame (p50, p90) per config and device, and the view transform alone
against a naive LSS cumulative-sum pooling written here as the reference. Prints a table and writes
``bench/results/model.json``.

    python bench/bench_model.py            # CPU rows for both configs (+ GPU rows when CUDA exists)
    python bench/bench_model.py --quick    # fewer iterations
    python3 bench/bench_model.py --gpu-only   # on a lent GPU machine: the CUDA rows, merged under "gpu"

Forward = 6 cameras, batch 1, random weights and images, ``torch.inference_mode``. The r50 config uses 4
previous frames; its rows run the inference path, where previous frames' BEV features are kept from their own
forward (``prev_bev``): one frame is lifted per call. On CUDA the r50 config is also timed re-lifting all 5
frames (the training-style path). GPU rows: fp32, fp16 and bf16 autocast with channels_last, and fp16 with
``torch.compile`` of the convolutional parts (the cached pooling stays eager). ``gpu.gpu_forward_ms_p50`` holds
the p50 per model and precision; a CPU-only run keeps the GPU block an earlier ``--gpu-only`` run wrote.

``compiled_speedup``: the node's ``backend: compiled`` on the CPU (r18 128x352, 6 cameras, the node's single
torch thread): :func:`labeldistill_ros.inference.compile_parts` (inductor with freezing) against eager, timed
alternately call by call so a load change on a shared machine hits both alike; ``compile_s`` is the one-off
compilation the node pays in its start-up warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labeldistill_ros.model import StudentDetector, load_model_config  # noqa: E402
from labeldistill_ros.model.export import example_inputs  # noqa: E402
from labeldistill_ros.model.view_transform import LSSViewTransform, frustum_to_ego  # noqa: E402

CONFIGS = {"r18_128x352_cpu": ROOT / "config/model/r18_128x352_cpu.yaml",
           "r50_256x704": ROOT / "config/model/r50_256x704.yaml"}
SAMPLE = ROOT.parent / "shared" / "real-nuscenes-sample" / "sample.json"
OUT = ROOT / "bench" / "results" / "model.json"


# ----------------------------------------------------------------------------------------------------- timing
def timed(fn, iters: int, warmup: int, cuda: bool) -> list[float]:
    """Milliseconds of ``fn()`` per call, ``iters`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def summary(times: list[float]) -> dict:
    q = np.percentile(times, [50, 90])
    return {"forward_ms_p50": round(float(q[0]), 2), "forward_ms_p90": round(float(q[1]), 2), "iters": len(times)}


# --------------------------------------------------------------------------------------------- pooling rows
def naive_lss_pool(vt: LSSViewTransform, depth, context, K, cam2ego, ida, bda) -> torch.Tensor:
    """Reference: LSS lift-splat as published (geometry every frame, full frustum feature, sort by cell,
    cumulative sum, differences at cell boundaries). ``(B*N, D, h, w), (B*N, C, h, w) -> (B, C, ny, nx)``."""
    g = vt.grid
    B = K.shape[0]
    C = context.shape[1]
    geom = frustum_to_ego(vt.frustum, K, cam2ego, ida, bda).reshape(-1, 3)  # (B*N*D*h*w, 3)
    feats = (depth.unsqueeze(-1) * context.permute(0, 2, 3, 1).unsqueeze(1)).reshape(-1, C)
    batch = torch.arange(B, device=depth.device).repeat_interleave(geom.shape[0] // B)
    ix = ((geom[:, 0] - g.x[0]) / g.x[2]).floor().long()
    iy = ((geom[:, 1] - g.y[0]) / g.y[2]).floor().long()
    iz = ((geom[:, 2] - g.z[0]) / g.z[2]).floor().long()
    kept = (ix >= 0) & (ix < g.nx) & (iy >= 0) & (iy < g.ny) & (iz == 0)
    feats, ranks = feats[kept], (batch * g.ny + iy)[kept] * g.nx + ix[kept]
    order = ranks.argsort()
    feats, ranks = feats[order].cumsum(0), ranks[order]
    last = torch.ones_like(ranks, dtype=torch.bool)
    last[:-1] = ranks[1:] != ranks[:-1]
    feats, ranks = feats[last], ranks[last]
    feats = torch.cat([feats[:1], feats[1:] - feats[:-1]])
    out = torch.zeros(B * g.ny * g.nx, C, device=depth.device)
    out[ranks] = feats
    return out.view(B, g.ny, g.nx, C).permute(0, 3, 1, 2)


def rig(cfg, device) -> tuple[torch.Tensor, ...]:
    """Calibration (K, cam2ego, ida, bda) for 6 cameras: the real nuScenes rig when ../shared has it."""
    K, cam2ego, ida, bda = example_inputs(cfg, 6)[1:5]
    if SAMPLE.is_file():
        cams = json.loads(SAMPLE.read_text())["cameras"].values()
        K = torch.tensor(np.stack([c["cam2img"] for c in cams]), dtype=torch.float32)[None]
        cam2ego = torch.tensor(np.stack([c["cam2ego"] for c in cams]), dtype=torch.float32)[None]
    return tuple(t.to(device) for t in (K, cam2ego, ida, bda))


def bench_pooling(cfg, device: torch.device, iters: int) -> dict:
    cuda = device.type == "cuda"
    vt = LSSViewTransform(cfg.input_size, cfg.feature_stride, cfg.depth_net.depth_bound, cfg.bev_grid).to(device)
    K, cam2ego, ida, bda = rig(cfg, device)
    torch.manual_seed(0)
    n, D, (h, w), C = 6, cfg.depth_net.num_bins, cfg.feature_size, cfg.depth_net.context_channels
    depth = torch.randn(n, D, h, w, device=device).softmax(1)
    context = torch.randn(n, C, h, w, device=device)
    with torch.inference_mode():
        ref = naive_lss_pool(vt, depth, context, K, cam2ego, ida, bda)
        ours = vt(depth, context, K, cam2ego, ida, bda)
        build = timed(lambda: vt.build_index(K, cam2ego, ida, bda), max(2, iters // 2), 1, cuda)
        naive = timed(lambda: naive_lss_pool(vt, depth, context, K, cam2ego, ida, bda), iters, 1, cuda)
        cached = timed(lambda: vt(depth, context, K, cam2ego, ida, bda), iters, 1, cuda)
        static = timed(lambda: vt.pool_static(depth, context, K, cam2ego, ida, bda), iters, 1, cuda)
    p50 = statistics.median
    return {
        "naive_cumsum_ms_p50": round(p50(naive), 2),
        "cached_ms_p50": round(p50(cached), 2),
        "index_build_ms_p50": round(p50(build), 2),
        "static_export_path_ms_p50": round(p50(static), 2),
        "speedup_vs_naive": round(p50(naive) / p50(cached), 1),
        "max_rel_diff_vs_naive": float(f"{((ours - ref).abs().max() / ref.abs().max()).item():.2e}"),
    }


# --------------------------------------------------------------------------------------------- forward rows
def forward_fn(model, cfg, device, relift_prev: bool = False):
    """A closure running one 6-camera forward on ``device`` (inference path unless ``relift_prev``)."""
    images, K, cam2ego, ida, bda = (t.to(device) for t in example_inputs(cfg, 6)[:5])
    images = torch.randn_like(images)
    if SAMPLE.is_file():
        K, cam2ego, ida, bda = rig(cfg, device)
    T = cfg.temporal.num_prev_frames
    prev = {}
    if T:
        prev["prev2curr"] = torch.eye(4, device=device).expand(1, T, 4, 4).clone()
        prev["prev2curr"][..., 0, 3] = -torch.arange(1, T + 1, device=device, dtype=torch.float32) * 5.0
        if relift_prev:
            prev["prev_images"] = images[:, None].expand(1, T, *images.shape[1:])
            prev["prev_cam2ego"] = cam2ego[:, None].expand(1, T, *cam2ego.shape[1:])
        else:
            g = cfg.bev_grid
            prev["prev_bev"] = torch.randn(1, T, cfg.depth_net.context_channels, g.ny, g.nx, device=device)

    def run():
        with torch.inference_mode():
            return model(images, K, cam2ego, ida, bda, **prev)

    return run


def bench_forward_cpu(cfg, iters: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = StudentDetector.from_config(cfg).eval()
    return summary(timed(forward_fn(model, cfg, torch.device("cpu")), iters, warmup, False))


def bench_compiled_cpu(cfg, iters: int, threads: int = 1) -> dict:
    """Eager vs the node's compiled backend on the CPU, alternating calls (see the module docstring)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    from labeldistill_ros.inference import compile_parts, compiled_part_names

    cache_state = "warm" if any(Path(cache_dir()).glob("*/*.so")) else "cold"  # compiled kernels there already?
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = StudentDetector.from_config(cfg).eval()
        run = forward_fn(model, cfg, torch.device("cpu"))
        names = compiled_part_names("cpu")
        eager = {p: getattr(model, p) for p in names}
        compiled = compile_parts(eager)

        def use(parts):
            for name, module in parts.items():
                setattr(model, name, module)

        ref = run().head_outputs
        use(compiled)
        t0 = time.perf_counter()
        out = run().head_outputs
        compile_s = time.perf_counter() - t0
        run()
        diff = max(float((a[k] - b[k]).abs().max()) for a, b in zip(ref, out) for k in a)
        times = {"eager": [], "compiled": []}
        for _ in range(iters):
            for name, parts in (("eager", eager), ("compiled", compiled)):
                use(parts)
                times[name] += timed(run, 1, 0, False)
        use(eager)
    finally:
        torch.set_num_threads(old_threads)
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {"eager_ms_p50": round(e, 2), "compiled_ms_p50": round(c, 2), "compiled_speedup": round(e / c, 3),
            "compile_s": round(compile_s, 1), "max_abs_diff_vs_eager": float(f"{diff:.2e}"), "iters": iters,
            "torch_threads": threads, "backend": f"torch.compile (inductor, freezing) of {', '.join(names)}; the "
                                                 "other parts eager",
            "compile_note": "compile_s is with inductor's on-disk cache as it was (cold: run with a new, empty "
                            "TORCHINDUCTOR_CACHE_DIR)",
            "inductor_cache_at_start": cache_state}


def bench_forward_cuda(cfg, iters: int, compile_parts: bool = True) -> dict:
    """fp32, then fp16/bf16 autocast with channels_last, then fp16 + torch.compile (convolutional parts) unless
    ``compile_parts`` is False (cold triton compilation takes minutes)."""
    device = torch.device("cuda")
    rows = {}
    torch.manual_seed(0)
    model = StudentDetector.from_config(cfg).eval().to(device)
    run = forward_fn(model, cfg, device)
    rows["cuda_fp32"] = summary(timed(run, iters, 5, True))
    model = model.to(memory_format=torch.channels_last)
    for name, dtype in (("cuda_fp16_channels_last", torch.float16), ("cuda_bf16_channels_last", torch.bfloat16)):
        def amp(dtype=dtype):
            with torch.autocast("cuda", dtype=dtype):
                return run()
        rows[name] = summary(timed(amp, iters, 5, True))
    if cfg.temporal.num_prev_frames:
        relift = forward_fn(model, cfg, device, relift_prev=True)

        def amp_relift():
            with torch.autocast("cuda", dtype=torch.float16):
                return relift()
        rows["cuda_fp16_channels_last_relift_all_frames"] = summary(timed(amp_relift, iters, 3, True))
    if not compile_parts:
        return rows
    rows.update(bench_compiled_cuda(model, run, iters))
    return rows


def bench_compiled_cuda(model, run, iters: int) -> dict:
    """fp16 autocast through the node's ``backend: compiled`` (:func:`labeldistill_ros.inference.compile_parts` of
    :func:`~labeldistill_ros.inference.compiled_part_names` for CUDA), and the same with CUDA graphs (inductor's
    ``reduce-overhead`` mode: one graph replay instead of a launch per kernel). Each row carries its compile time
    and the largest difference of the head outputs from eager fp16 on the same inputs."""
    from labeldistill_ros.inference import compile_parts, compiled_part_names

    names = compiled_part_names("cuda")
    eager = {p: getattr(model, p) for p in names}

    def use(parts):
        for name, module in parts.items():
            setattr(model, name, module)

    def amp():
        with torch.autocast("cuda", dtype=torch.float16):
            return run()

    def amp_graphs():  # a new step: the previous forward's graph outputs may be overwritten from here on
        torch.compiler.cudagraph_mark_step_begin()
        return amp()

    def head_copy(out):  # fp32 copies of the head outputs (a graph replay overwrites its own)
        return [{k: v.float().clone() for k, v in t.items()} for t in out.head_outputs]

    ref = head_copy(amp())
    rows = {}
    for row, mode, fn in (("cuda_fp16_channels_last_compiled", None, amp),
                          ("cuda_fp16_channels_last_compiled_cudagraphs", "reduce-overhead", amp_graphs)):
        try:
            use(compile_parts(eager, mode=mode))
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            out = head_copy(fn())
            diff = max(float((a[k] - b[k]).abs().max()) for a, b in zip(ref, out) for k in a)
            rows[row] = {**summary(timed(fn, iters, 10, True)), "compile_s": round(compile_s, 1),
                         "max_abs_diff_vs_eager_fp16": float(f"{diff:.2e}")}
        except Exception as e:  # compile needs a working triton toolchain; report instead of failing the bench
            rows[row] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        finally:
            use(eager)
            torch._dynamo.reset()
    return rows


# ------------------------------------------------------------------------------------------------------- main
def gpu_summary(forward: dict) -> dict:
    """``gpu_forward_ms_p50`` per model and precision (fp16: autocast, channels_last) from the CUDA rows."""
    rows = {"fp32": "cuda_fp32", "fp16": "cuda_fp16_channels_last", "fp16_compiled": "cuda_fp16_channels_last_compiled",
            "fp16_compiled_cudagraphs": "cuda_fp16_channels_last_compiled_cudagraphs"}
    return {name: {prec: forward[name].get(row, {}).get("forward_ms_p50") for prec, row in rows.items()}
            for name in forward}


def main_gpu_only(args) -> int:
    """The CUDA rows alone (``--gpu-only``, for a lent GPU machine): merged into model.json under ``gpu``; the
    CPU figures measured on the 2-core machine stay as they are."""
    if not torch.cuda.is_available():
        print("bench_model --gpu-only: no CUDA device", file=sys.stderr)
        return 1
    t_start = time.monotonic()
    cfgs = {name: load_model_config(path) for name, path in CONFIGS.items()}
    iters = 20 if args.quick else 100
    forward = {name: bench_forward_cuda(cfg, iters, compile_parts=args.gpu_compile) for name, cfg in cfgs.items()}
    gpu = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpu_cores": os.cpu_count(), "iters": iters,
           "gpu_forward_ms_p50": gpu_summary(forward), "forward": forward,
           "view_transform_r50_256x704": bench_pooling(cfgs["r50_256x704"], torch.device("cuda"), 50),
           "setup": "6 cameras, batch 1, random weights; CUDA event time of one forward (inference path, candidates "
                    "gathered on the device)",
           "wall_s": round(time.monotonic() - t_start, 1)}
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results["gpu"] = gpu
    results["gpu_rows"] = "measured (bench_model.py --gpu-only on a lent GPU machine)"
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, OUT)
    print(f"\n{'model':20s} {'row':40s} {'p50 ms':>8s} {'p90 ms':>8s}   ({gpu['device']}, torch {gpu['torch']})")
    for name, rows in forward.items():
        for row, r in rows.items():
            if "error" in r:
                print(f"{name:20s} {row:40s} {r['error']}")
            else:
                print(f"{name:20s} {row:40s} {r['forward_ms_p50']:8.2f} {r['forward_ms_p90']:8.2f}")
    print(f"wrote {OUT.relative_to(ROOT)} (gpu) in {gpu['wall_s']} s")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    ap.add_argument("--gpu-only", action="store_true",
                    help="only the CUDA rows, merged into model.json under 'gpu' (for a lent GPU machine)")
    ap.add_argument("--gpu-compile", action="store_true",
                    help="with --gpu-only: also time torch.compile'd parts (cold triton compilation: minutes)")
    args = ap.parse_args(argv)
    if args.gpu_only:
        return main_gpu_only(args)
    t_start = time.monotonic()
    cuda = torch.cuda.is_available()
    cfgs = {name: load_model_config(path) for name, path in CONFIGS.items()}
    cpu_iters = {"r18_128x352_cpu": (3, 1) if args.quick else (15, 2), "r50_256x704": (1, 0) if args.quick else (3, 1)}
    results: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if cuda else None,
                    "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
        "setup": "6 cameras, batch 1, random weights/images; r50 forward lifts one frame and warps 4 kept "
                 "previous BEV features (inference path)",
    }
    table = []

    pooling = {"cpu": bench_pooling(cfgs["r50_256x704"], torch.device("cpu"), 3 if args.quick else 7)}
    if cuda:
        pooling["cuda"] = bench_pooling(cfgs["r50_256x704"], torch.device("cuda"), 50)
    results["view_transform_r50_256x704"] = pooling
    results["pool_speedup_vs_naive"] = pooling["cpu"]["speedup_vs_naive"]
    for dev, row in pooling.items():
        table.append(("view transform r50 (naive LSS cumsum)", dev, row["naive_cumsum_ms_p50"], None))
        table.append(("view transform r50 (cached index)", dev, row["cached_ms_p50"], None))
        table.append(("view transform r50 (index build, new calib)", dev, row["index_build_ms_p50"], None))
        table.append(("view transform r50 (static, export path)", dev, row["static_export_path_ms_p50"], None))

    forward: dict = {}
    for name, cfg in cfgs.items():
        iters, warmup = cpu_iters[name]
        forward[name] = {"cpu": bench_forward_cpu(cfg, iters, warmup)}
        if cuda:
            forward[name].update(bench_forward_cuda(cfg, 20 if args.quick else 100))
        for dev, row in forward[name].items():
            table.append((f"forward {name}", dev, row.get("forward_ms_p50"), row.get("forward_ms_p90")))
    results["forward"] = forward
    compiled = bench_compiled_cpu(cfgs["r18_128x352_cpu"], 6 if args.quick else 20)
    results["compiled_cpu_r18_128x352"] = compiled
    results["compiled_speedup"] = compiled["compiled_speedup"]
    table.append(("forward r18_128x352_cpu eager (alternating)", "cpu 1 thread", compiled["eager_ms_p50"], None))
    table.append(("forward r18_128x352_cpu compiled (node backend)", "cpu 1 thread", compiled["compiled_ms_p50"],
                  None))
    results["gpu_rows"] = "measured" if cuda else "skipped: no CUDA device on this machine"
    if cuda:
        results["gpu"] = {"device": torch.cuda.get_device_name(0), "gpu_forward_ms_p50": gpu_summary(forward)}
    else:  # keep a GPU block measured earlier on a lent machine (bench_model.py --gpu-only)
        old = json.loads(OUT.read_text()).get("gpu") if OUT.is_file() else None
        measured = old if old and old.get("gpu_forward_ms_p50") else None
        results["gpu"] = measured or {"gpu_forward_ms_p50": None, "reason": "unmeasured: no GPU in this session"}
        if measured:
            results["gpu_rows"] = "from an earlier run on a lent GPU machine (bench_model.py --gpu-only)"
    results["wall_s"] = round(time.monotonic() - t_start, 1)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, OUT)

    print(f"\n{'row':46s} {'device':40s} {'p50 ms':>10s} {'p90 ms':>10s}")
    for row, dev, p50, p90 in table:
        fmt = lambda v: f"{v:10.1f}" if isinstance(v, (int, float)) else f"{'-':>10s}"  # noqa: E731
        print(f"{row:46s} {dev:40s} {fmt(p50)} {fmt(p90)}")
    print(f"\npool_speedup_vs_naive (r50_256x704, CPU): {results['pool_speedup_vs_naive']}x "
          f"(max relative difference {pooling['cpu']['max_rel_diff_vs_naive']})")
    print(f"compiled_speedup (node backend compiled, r18 128x352, CPU 1 thread): {results['compiled_speedup']}x "
          f"(compile {compiled['compile_s']} s, max |diff| {compiled['max_abs_diff_vs_eager']})")
    if not cuda:
        print("GPU rows skipped: no CUDA device")
    print(f"wrote {OUT.relative_to(ROOT)} in {results['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
