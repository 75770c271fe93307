#!/usr/bin/env python3
"""Detector node under load: six 1600x900 rgb8 cameras at 12 Hz through real rclpy across processes.

    python bench/bench_node.py            # 10-minute soak
    python bench/bench_node.py --quick    # about 60 s
    python3 bench/bench_node.py --device cuda --model r50_256x704 --precision fp16 --duration 30   # lent GPU

Three processes on one host (the shipped loopback Fast DDS profile, a ROS domain of its own):
  publisher  six cameras of the real nuScenes key frame (rgb8, 4.3 MB each) at 12 Hz, stamped as a rig triggered
             at the nuScenes offsets whose last camera is stamped at the moment the set is sent (no stamp in the
             future: end-to-end latency is then measured from the last exposure); latched CameraInfo and
             /tf_static; map -> base_link on /tf (10 m/s) covering each set, so the node compensates the ego
             motion between the cameras as on a vehicle
  node       ``python -m labeldistill_ros.node.detector_node`` with a random-weight checkpoint of the small CPU
             student (config/model/r18_128x352_cpu.yaml), score threshold 0.05, at most 50 boxes (random
             weights score ~0.1, so every set carries 50 boxes and 101 markers, a busy scene, and decoding
             runs circle NMS over all 1200 candidates: the worst case), ``cpu_threads`` = ``--threads``
  this one   subscribes to the detections (end-to-end latency = receive time - set stamp), the node's per-stage
             timing topics, /diagnostics (counters), and samples the node's RSS from /proc

Overhead is measured from the first image of a set arriving (the middleware's reception time) to the
Detection3DArray being published, minus the model forward, minus the time the node could not act on: waiting for
the set's other images (``transport``) and for the model to finish the previous set (``queue``, back-pressure
while the model runs below the camera rate); i.e. publish - forward - max(last image in, inference thread free).
The node reports every stage of every set on
``~/debug/stage_times_ms`` (``labeldistill_ros.node.detector_node.DetectorNode._report_times``); node.json has
their p50/p99 in ``breakdown_ms`` and ``<stage>_ms_p50``, the receive -> publish figure minus the forward with
nothing subtracted (``receive_to_publish_minus_forward_ms_p50``) and the old figure (the inference thread's total
minus the forward, ``total_minus_inference_ms_p50``). Sets are counted as *lost* (never complete at the node:
images lost in transport or a set timed out) or *superseded* (complete, but replaced by a newer set while the
model was busy). ``dropped_sets`` is the lost count. RSS growth is the node's RSS at the end minus after the
warm-up.

Two conversion paths (``--path``): ``fallback``, the in-package conversion of the serialized image (machines
without ROS; the top-level keys), and ``vehicle``, with ``cv_bridge`` importable, as on a vehicle: the node then
deserialises each image of a set it runs and converts it with ``cv_bridge`` (here the stand-in in
``bench/vehicle_shim``, which makes the two copies of Humble's ``imgmsg_to_cv2``; keys under ``vehicle_path``).
``--quick`` measures both. ``--device cuda`` (a lent GPU machine, bench/gpu/run_on_device.sh) runs the node on the
GPU with ``--model``, ``--precision`` and ``--backend`` and merges that run into the ``gpu`` block (``gpu.runs``;
the summary keys ``gpu_overhead_ms_p50/p99`` and ``gpu_e2e_ms_p50`` from the r50 fp16 run). Merges into
``bench/results/node.json`` (other benchmarks' keys stay) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SAMPLE = ROOT.parent / "shared" / "real-nuscenes-sample"
CAMS = ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"]
OFFSETS_MS = [7, 15, 22, 49, 40, 31]  # nuScenes trigger offsets after the LiDAR stamp
RATE_HZ = 12.0
NS = "/bench"
SHIM = ROOT / "bench" / "vehicle_shim"
STAGES = ("transport", "sync", "queue", "pickup", "staging", "calibration", "forward", "decode", "detect_other", "publish",
          "other_outputs", "receive_to_publish", "overhead", "staged_on_arrival", "calibrated_ahead")
sys.path.insert(0, str(ROOT / "test"))


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


# --------------------------------------------------------------------------------------------------- publisher
def publisher(duration_s: float) -> None:
    """Publish the camera set at 12 Hz for ``duration_s``; prints 'SENT <n>' at the end."""
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    from node_support import camera_info_msg, image_msg, real_sample, tf_static_msg

    from labeldistill_ros.ros_convert import split_ns, transform_msg

    sample = real_sample(SAMPLE)
    rclpy.init()
    node = rclpy.create_node("bench_cameras")
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    # Camera drivers publish best effort; a reliable writer would block when the node falls behind.
    sensor = QoSProfile(depth=2, reliability=ReliabilityPolicy.BEST_EFFORT)
    pubs = [node.create_publisher(Image, f"{NS}/{c}/image", sensor) for c in CAMS]
    infos = [node.create_publisher(CameraInfo, f"{NS}/{c}/camera_info", latched) for c in CAMS]
    tf = node.create_publisher(TFMessage, "/tf_static", latched)
    # Localisation: map -> base_link, the vehicle driving at 10 m/s, published ahead of each set's cameras (the node
    # moves every camera to the set's latest stamp through it).
    odom = node.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))
    msgs = [image_msg(img, 0, c) for img, c in zip(sample.images, CAMS)]  # built once, only stamps change
    for i, c in enumerate(CAMS):
        infos[i].publish(camera_info_msg(sample.Ks[i], 1600, 900, c))
    tf.publish(tf_static_msg(sample))
    deadline = time.monotonic() + 60
    while not all(p.get_subscription_count() for p in pubs) and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    print("READY", flush=True)
    period = 1.0 / RATE_HZ
    t_next = time.monotonic()
    end = t_next + duration_s
    sent = 0
    t_start_ns = time.time_ns()
    while time.monotonic() < end:
        now_ns = time.time_ns()
        poses = []
        for s in (now_ns - 70_000_000, now_ns + 20_000_000):
            T = np.eye(4)
            T[0, 3] = 10.0 * (s - t_start_ns) / 1e9
            poses.append(transform_msg("map", "base_link", T, s))
        odom.publish(TFMessage(transforms=poses))
        for i, m in enumerate(msgs):
            s = now_ns - (max(OFFSETS_MS) - OFFSETS_MS[i]) * 1_000_000  # the last camera at now
            m.header.stamp.sec, m.header.stamp.nanosec = split_ns(s)
            pubs[i].publish(m)
        sent += 1
        t_next += period
        delay = t_next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            t_next = time.monotonic()  # fell behind: do not burst
    print(f"SENT {sent}", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


# ------------------------------------------------------------------------------------------------------- main
def pct(xs, q) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def measure(path: str, duration: float, threads: int, tmp: Path, device: str = "cpu", precision: str = "fp32",
            model: str = "r18_128x352_cpu", backend: str = "eager") -> dict:
    """One run: node + publisher + this observer, on conversion ``path`` (``fallback`` or ``vehicle``), the node's
    model a random-weight student of ``config/model/<model>.yaml`` on ``device`` in ``precision`` with
    ``backend`` (eager | compiled: the node compiles in its warm-up, before it reports ready)."""
    from labeldistill_ros.dds import apply_dds_environment

    apply_dds_environment("local", random.randint(60, 101))
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Float64
    from vision_msgs.msg import Detection3DArray

    from node_support import make_checkpoint

    from labeldistill_ros.ros_convert import stamp_to_ns

    ckpt = make_checkpoint(tmp / "student.pt", seed=0, config=ROOT / "config" / "model" / f"{model}.yaml")
    import yaml

    params = {"checkpoint": str(ckpt), "device": device, "precision": precision, "backend": backend,
              "score_threshold": 0.05,
              "max_detections": 50,
              "image_topics": [f"{NS}/{c}/image" for c in CAMS],
              "camera_info_topics": [f"{NS}/{c}/camera_info" for c in CAMS], "diagnostics_period_s": 1.0,
              "max_processing_time_ms": 100000.0, "cpu_threads": threads}
    (tmp / "params.yaml").write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    env = dict(os.environ)
    node_env = dict(env)
    if path == "vehicle":
        node_env["PYTHONPATH"] = os.pathsep.join([str(SHIM)] + [p for p in [env.get("PYTHONPATH")] if p])
    node_proc = subprocess.Popen([sys.executable, "-m", "labeldistill_ros.node.detector_node", "--ros-args",
                                  "--params-file", str(tmp / "params.yaml")], env=node_env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node_log: list[str] = []
    threading.Thread(target=lambda: node_log.extend(node_proc.stdout), daemon=True).start()

    rclpy.init()
    me = rclpy.create_node("bench_observer")
    rel = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    base = "/labeldistill_detector"
    e2e, boxes, stages, diags = [], [], {k: [] for k in ("preprocess", "inference", "postprocess", "total")}, []
    per_set: list[dict[str, float]] = []
    recording = {"on": False}

    def on_det(msg):
        if recording["on"]:
            stamp = stamp_to_ns(msg.header.stamp)
            e2e.append((time.time_ns() - stamp) / 1e6)
            boxes.append(len(msg.detections))
    me.create_subscription(Detection3DArray, f"{base}/output/detections", on_det, rel)
    for k in stages:
        me.create_subscription(Float64, f"{base}/debug/processing_time/{k}_ms",
                               lambda m, k=k: recording["on"] and stages[k].append(m.data), rel)
    me.create_subscription(DiagnosticStatus, f"{base}/debug/stage_times_ms",
                           lambda m: recording["on"] and per_set.append({kv.key: float(kv.value)
                                                                         for kv in m.values}), rel)
    me.create_subscription(DiagnosticArray, "/diagnostics",
                           lambda m: diags.extend(s for s in m.status if s.hardware_id == base), 10)

    def spin_for(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(me, timeout_sec=0.05)

    deadline = time.monotonic() + 300
    while not any("ready:" in ln for ln in node_log):
        if node_proc.poll() is not None or time.monotonic() > deadline:
            print("".join(node_log), file=sys.stderr)
            raise SystemExit("bench_node: the node did not start")
        spin_for(0.2)
    ready_line = next(ln for ln in node_log if "ready:" in ln)
    pub_proc = subprocess.Popen([sys.executable, __file__, "--role", "publisher", "--duration", str(duration)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pub_log: list[str] = []
    threading.Thread(target=lambda: pub_log.extend(pub_proc.stdout), daemon=True).start()
    while not any(ln.startswith("READY") for ln in pub_log):
        if pub_proc.poll() is not None:
            raise SystemExit("bench_node: publisher failed:\n" + "".join(pub_log))
        spin_for(0.1)
    warmup = min(10.0, duration / 5)
    print(f"bench_node [{path}]: publishing 6 x 1600x900 rgb8 at {RATE_HZ:.0f} Hz for {duration:.0f} s "
          f"(warm-up {warmup:.0f} s)", flush=True)
    spin_for(warmup)
    recording["on"] = True
    load_start = os.getloadavg()[0]
    rss = [(time.monotonic(), rss_mb(node_proc.pid))]
    while pub_proc.poll() is None:
        spin_for(1.0)
        rss.append((time.monotonic(), rss_mb(node_proc.pid)))
    spin_for(3.0)  # drain
    recording["on"] = False
    sent = int(next(ln.split()[1] for ln in pub_log if ln.startswith("SENT")))
    counters = {kv.key: kv.value for kv in diags[-1].values} if diags else {}
    node_proc.send_signal(signal.SIGINT)
    try:
        node_proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        node_proc.kill()
    me.destroy_node()
    rclpy.try_shutdown()

    n = min(len(stages["total"]), len(stages["inference"]))
    old_overhead = [t - i for t, i in zip(stages["total"][:n], stages["inference"][:n])]
    col = {k: [d[k] for d in per_set if k in d] for k in STAGES}
    rss_vals = [r for _, r in rss if r == r]
    complete = int(counters.get("complete_sets", 0))
    superseded = int(counters.get("superseded", 0))
    published = int(counters.get("published", 0))
    lost = max(0, sent - complete)
    res = {
        "overhead_ms_p50": pct(col["overhead"], 50), "overhead_ms_p99": pct(col["overhead"], 99),
        "e2e_ms_p50": pct(e2e, 50), "e2e_ms_p99": pct(e2e, 99),
        "receive_to_publish_ms_p50": pct(col["receive_to_publish"], 50),
        "receive_to_publish_minus_forward_ms_p50": pct([r - f for r, f in zip(col["receive_to_publish"],
                                                                              col["forward"])], 50),
        "total_minus_inference_ms_p50": pct(old_overhead, 50), "total_minus_inference_ms_p99": pct(old_overhead, 99),
        "breakdown_ms": {k: {"p50": pct(v, 50), "p99": pct(v, 99)} for k, v in col.items()},
        **{f"{k}_ms_p50": pct(col[k], 50) for k in ("transport", "queue", "staging", "calibration", "decode",
                                                     "publish")},
        "staged_on_arrival_mean": float(np.mean(col["staged_on_arrival"])) if col["staged_on_arrival"] else 0.0,
        "calibrated_ahead_share": float(np.mean(col["calibrated_ahead"])) if col["calibrated_ahead"] else 0.0,
        "dropped_sets": lost,
        "superseded_sets": superseded,
        "rss_growth_mb": (rss_vals[-1] - rss_vals[0]) if rss_vals else float("nan"),
        "rss_start_mb": rss_vals[0] if rss_vals else float("nan"),
        "rss_end_mb": rss_vals[-1] if rss_vals else float("nan"),
        "preprocess_ms_p50": pct(stages["preprocess"], 50), "inference_ms_p50": pct(stages["inference"], 50),
        "postprocess_ms_p50": pct(stages["postprocess"], 50), "total_ms_p50": pct(stages["total"], 50),
        "model_hz": 1000.0 / pct(stages["inference"], 50) if stages["inference"] else 0.0,
        "output_hz": published / max(1e-9, duration), "boxes_per_set": float(np.mean(boxes)) if boxes else 0.0,
        "sets_sent": sent, "sets_complete": complete, "sets_published": published,
        "sets_incomplete": int(counters.get("incomplete_sets", 0)), "late_images": int(counters.get("late_images", 0)),
        # staging work: jobs run by the staging thread (cameras + calibrations) vs skipped (already done, set
        # dropped, no slot, or no longer wanted when they came up)
        "staging_jobs_run": int(counters.get("staging_jobs_run", 0)),
        "staging_jobs_skipped": int(counters.get("staging_jobs_skipped", 0)),
        "duration_s": duration, "rate_hz": RATE_HZ, "cameras": "6 x 1600x900 rgb8", "cpu_count": os.cpu_count(),
        "node_torch_threads": threads, "conversion_path": path,
        "cv_bridge": "stand-in (bench/vehicle_shim: Humble's two copies)" if path == "vehicle" else "none",
        "model": f"{model} (random weights)", "device": device, "precision": precision, "backend": backend,
        "measured_sets": len(per_set),
        # other processes on the machine inflate every time (2 cores: the publisher alone is busy)
        "load_avg_1min_start": load_start, "load_avg_1min_end": os.getloadavg()[0],
        "node_ready_line": ready_line.strip()[-300:],
    }
    if os.environ.get("BENCH_NODE_DUMP_SETS"):
        Path(os.environ["BENCH_NODE_DUMP_SETS"]).write_text(json.dumps(per_set))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about 60 s per path instead of the 10-minute soak")
    ap.add_argument("--duration", type=float, default=None, help="publishing time in seconds")
    ap.add_argument("--role", default="main", choices=["main", "publisher"], help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, choices=["fallback", "vehicle", "both"],
                    help="image conversion path(s) to measure (default: both with --quick, fallback otherwise)")
    ap.add_argument("--threads", type=int, default=1,
                    help="the node's cpu_threads (torch intra-op threads; 1: the publisher shares the cores)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="the node's device; cuda (a lent GPU machine) merges one run into node.json's 'gpu' block")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16"], help="the node's precision (cuda)")
    ap.add_argument("--backend", default="eager", choices=["eager", "compiled"],
                    help="the node's backend (cuda; the run is named <model>_<precision>_compiled)")
    ap.add_argument("--model", default="r18_128x352_cpu", choices=["r18_128x352_cpu", "r50_256x704"],
                    help="the random-weight student's config (config/model/<name>.yaml)")
    ap.add_argument("--out", default=str(RESULTS / "node.json"))
    a = ap.parse_args()
    duration = a.duration or (50.0 if a.quick else 600.0)
    if a.role == "publisher":
        publisher(duration)
        return 0
    if a.device == "cuda":
        return main_gpu(a, duration)
    path = a.path or ("both" if a.quick else "fallback")
    paths = ["fallback", "vehicle"] if path == "both" else [path]
    runs = {}
    for p in paths:  # one process per run: rclpy is initialised once per process
        tmp = Path(tempfile.mkdtemp(prefix=f"bench_node_{p}_"))
        cmd = [sys.executable, __file__, "--role", "main", "--path", p, "--duration", str(duration),
               "--threads", str(a.threads), "--out", str(tmp / "run.json")]
        if len(paths) > 1:
            rc = subprocess.call(cmd)
            if rc != 0:
                return rc
            runs[p] = json.loads((tmp / "run.json").read_text())
        else:
            runs[p] = measure(p, duration, a.threads, tmp)
    out = Path(a.out)
    if len(paths) == 1 and out.name == "run.json":  # a child run of --path both
        out.write_text(json.dumps(runs[paths[0]], indent=2) + "\n")
        return 0
    old = json.loads(out.read_text()) if out.is_file() else {}
    res = dict(runs.get("fallback") or runs[paths[0]])
    res["quick"] = bool(a.quick)
    if "vehicle" in runs:
        res["vehicle_path"] = runs["vehicle"]
        res["overhead_ms_p50_vehicle_path"] = runs["vehicle"]["overhead_ms_p50"]
        res["overhead_ms_p99_vehicle_path"] = runs["vehicle"]["overhead_ms_p99"]
    old_gpu = old.get("gpu") if isinstance(old.get("gpu"), dict) and old["gpu"].get("runs") else None
    res["gpu"] = old_gpu or {"gpu_forward_ms_p50": None, "gpu_overhead_ms_p50": None, "gpu_overhead_ms_p99": None,
                             "reason": "unmeasured: no GPU in this session (the CUDA path - pinned staging, device "
                                       "resize, fp16, no host sync inside a set - is tested on the CPU only)"}
    merged = {k: v for k, v in old.items() if k.startswith("temporal")}
    merged.update(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    for name, r in runs.items():
        print_table(name, r)
    print(f"wrote {out}")
    return 0


def main_gpu(a, duration: float) -> int:
    """One run of the node on CUDA (in-package conversion), merged into ``node.json`` under ``gpu.runs`` with the
    summary keys of the run named ``<model>_<precision>`` that is the GPU default (r50 fp16 when measured); the CPU
    figures at the top level stay as they are."""
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bench_node_gpu_"))
    res = measure("fallback", duration, a.threads, tmp, device="cuda", precision=a.precision, model=a.model,
                  backend=a.backend)
    run_name = f"{a.model}_{a.precision}" + ("_compiled" if a.backend == "compiled" else "")
    out = Path(a.out)
    merged = json.loads(out.read_text()) if out.is_file() else {}
    gpu = merged.get("gpu") if isinstance(merged.get("gpu"), dict) and "runs" in merged.get("gpu", {}) else {}
    gpu.setdefault("runs", {})[run_name] = res
    summary_run = "r50_256x704_fp16" if "r50_256x704_fp16" in gpu["runs"] else run_name
    main_run = gpu["runs"][summary_run]
    gpu.update({
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cpu_cores": os.cpu_count(),
        "summary_run": summary_run,
        "gpu_forward_ms_p50": {k: r["breakdown_ms"]["forward"]["p50"] for k, r in gpu["runs"].items()},
        "gpu_overhead_ms_p50": main_run["overhead_ms_p50"], "gpu_overhead_ms_p99": main_run["overhead_ms_p99"],
        "gpu_e2e_ms_p50": main_run["e2e_ms_p50"], "gpu_e2e_ms_p99": main_run["e2e_ms_p99"],
        "note": "bench_node.py --device cuda on a lent GPU machine (ROS 2 Kilted cp312 wheels there, "
                "tools/setup_env.py --device-runtime); forward = CUDA event time of the model",
    })
    gpu.pop("reason", None)
    merged["gpu"] = gpu
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print_table(f"cuda {run_name}", res)
    print(f"wrote {out} (gpu.runs.{run_name})")
    return 0


def print_table(name: str, res: dict) -> None:
    b = res["breakdown_ms"]
    rows = [("overhead p50 / p99 (ms)", f"{res['overhead_ms_p50']:.2f} / {res['overhead_ms_p99']:.2f}"),
            *[(f"  {k} p50 / p99 (ms)", f"{b[k]['p50']:.2f} / {b[k]['p99']:.2f}")
              for k in ("staging", "calibration", "detect_other", "decode", "publish")],
            ("cameras staged on arrival (of 6, mean)", f"{res['staged_on_arrival_mean']:.2f}"),
            ("sets calibrated ahead (share)", f"{res['calibrated_ahead_share']:.2f}"),
            ("waits: transport / queue p50 (ms)", f"{b['transport']['p50']:.1f} / {b['queue']['p50']:.1f}"),
            ("receive -> publish p50, minus forward (ms)",
             f"{res['receive_to_publish_ms_p50']:.1f}, {res['receive_to_publish_minus_forward_ms_p50']:.1f}"),
            ("old figure: total - inference p50 / p99 (ms)",
             f"{res['total_minus_inference_ms_p50']:.1f} / {res['total_minus_inference_ms_p99']:.1f}"),
            ("model forward p50 (ms)", f"{res['inference_ms_p50']:.1f}  ({res['model_hz']:.1f} Hz)"),
            ("end-to-end p50 / p99 (ms)", f"{res['e2e_ms_p50']:.1f} / {res['e2e_ms_p99']:.1f}"),
            ("sets sent / complete / published", f"{res['sets_sent']} / {res['sets_complete']} / "
                                                 f"{res['sets_published']}"),
            ("lost (dropped_sets)", str(res["dropped_sets"])),
            ("superseded by a newer set", str(res["superseded_sets"])),
            ("output rate (Hz)", f"{res['output_hz']:.2f}"),
            ("boxes per set", f"{res['boxes_per_set']:.0f}"),
            ("node RSS start -> end (MB)", f"{res['rss_start_mb']:.0f} -> {res['rss_end_mb']:.0f} "
                                           f"({res['rss_growth_mb']:+.1f})")]
    w = max(len(r[0]) for r in rows)
    print(f"\nbench_node [{name} conversion path] ({res['duration_s']:.0f} s, {res['cpu_count']} CPUs, load average "
          f"{res['load_avg_1min_start']:.1f} -> {res['load_avg_1min_end']:.1f}; machine shared)")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")


if __name__ == "__main__":
    sys.exit(main())
