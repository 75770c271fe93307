"""``labeldistill-bag-eval``: evaluate the detector on a rosbag2 written by ``labeldistill-nusc2bag``.

Three ways to get detections, one scorer:

* ``offline``: reads the bag and runs the node's own pipeline without middleware: the node's set collector
  (:class:`labeldistill_ros.node.sync.SetCollector`), its image decoding and calibration cache, camera ->
  base_link from the bag's ``/tf_static``, and :class:`labeldistill_ros.inference.Detector`;
* ``live``: starts ``detector_node`` (``use_sim_time:=true``) as a subprocess, plays the bag through real
  rclpy with ``/clock`` (:class:`labeldistill_ros.bag.player.BagPlayer`) and records
  ``/labeldistill_detector/output/detections``; ``--lockstep`` waits for each set's output before the next set
  (deterministic, nothing superseded), otherwise the bag plays at ``--rate``;
* ``--detections-topic TOPIC`` (both modes' scorer on a topic already in the bag, e.g. a recorded run, or
  ``/ground_truth/detections`` to check the pipeline: mAP = NDS = 1).

Scoring: each detection frame (stamp = its camera set's stamp) is matched to the nearest ground-truth key frame
(LIDAR_TOP stamp) within ``--match-tol-ms``; its boxes (base_link) go to the global frame with the recorded
``map -> base_link`` TF at the detection stamp; a nuScenes results JSON is written and scored with the devkit's
``DetectionEval`` on exactly the bag's key frames. Reported: mAP, NDS, TP errors, per-class AP, latency
distribution (ms) and drop rate (key frames without a detection frame), as ``bag_eval.json`` and a table, plus
BEV PNGs (base_link, metres) of GT against detections. Nothing is written to ``--out`` unless the whole run
succeeds (a damaged bag exits with status 2 and a message naming the file).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labeldistill_ros.bag.reader import (GT_DETECTIONS, BagError, BagReader, BoxFrame, Trajectory,
                                         detections_from_msg, nearest_index)
from labeldistill_ros.geometry import CLASS_NAMES, boxes_to_nuscenes, box_corners

NODE_NAME = "labeldistill_detector"
NODE_OUTPUT = f"/{NODE_NAME}/output/detections"
MAX_BOXES = 500  # devkit limit per sample


@dataclass
class Run:
    """Detections of one run: frames in base_link with the per-frame latency (ms) where measured."""

    mode: str
    frames: list[BoxFrame]
    latency_ms: list[float] = field(default_factory=list)
    sets: int = 0  # camera sets formed (offline) / published (live)
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# Sources of detections
# --------------------------------------------------------------------------------------------------------------
def frames_from_topic(bag: str | Path, topic: str) -> Run:
    """Detection frames of ``topic`` in ``bag`` (``/ground_truth/detections``, a recorded node output, or the
    ``recording`` bag a live run leaves in its output folder)."""
    with BagReader(bag) as r:
        frames = r.detections(topic)
    return Run(mode=f"topic:{topic}", frames=frames, sets=len(frames))


def _bag_lookup(static: dict):
    """``lookup(target, source, stamp_ns, timeout_s) -> 4x4 source -> target`` over the bag's /tf_static."""
    def lookup(target: str, source: str, stamp_ns: int, timeout_s: float) -> np.ndarray:
        T, cur = np.eye(4), source
        for _ in range(32):
            if cur == target:
                return T
            if cur not in static:
                break
            parent, M = static[cur]
            T, cur = M @ T, parent
        raise LookupError(f"no /tf_static chain from '{source}' to '{target}' in the bag")
    return lookup


def run_offline(bag: str | Path, checkpoint: str, device: str = "cpu", precision: str = "fp32",
                score_threshold: float = 0.3, max_detections: int = 200, cameras: list[str] | None = None,
                slop_s: float = 0.06, target_frame: str = "base_link", progress: bool = True) -> Run:
    """The node's pipeline on every synchronised camera set of the bag, in one process, no middleware.

    Data flow: bag message -> SetCollector (stamps, nanoseconds) -> decoded RGB ``(H, W, 3)`` uint8 + K (3x3,
    from CameraInfo) + camera -> ``target_frame`` (from /tf_static) -> ``Detector.detect`` -> boxes ``(N, 9)`` in
    ``target_frame``. Latency = decode + calibration + detect, wall ms per set.
    """
    from tqdm import tqdm

    from labeldistill_ros.inference import Detector
    from labeldistill_ros.node.calibration import CalibrationCache
    from labeldistill_ros.node.params import NUSCENES_CAMERAS
    from labeldistill_ros.node.ros_compat import compressed_to_rgb, image_to_rgb
    from labeldistill_ros.node.sync import SetCollector

    cams = list(cameras or NUSCENES_CAMERAS)
    det = Detector(checkpoint, device=device, precision=precision, score_threshold=score_threshold,
                   max_detections=max_detections)
    frames, lat = [], []
    n_sets = 0
    with BagReader(bag) as r:
        avail = r.camera_topics()
        missing = [c for c in cams if c not in avail]
        if missing:
            raise BagError(f"{bag}: no image topic for camera(s) {missing} (have {sorted(avail)})")
        lookup = _bag_lookup(r.static_transforms())
        calib = CalibrationCache(cams, target_frame)
        topic_cam = {avail[c][0]: (i, avail[c][1]) for i, c in enumerate(cams)}
        info_cam = {f"/{c}/camera_info": i for i, c in enumerate(cams)}
        # Start from each camera's first CameraInfo (a bag may record it just after the image), then follow
        # the stream.
        infos: list = [None] * len(cams)
        for topic, _, msg in r.messages(list(info_cam)):
            if infos[info_cam[topic]] is None:
                infos[info_cam[topic]] = msg
            if all(i is not None for i in infos):
                break
        collector = SetCollector(len(cams), slop_s, timeout_s=max(0.5, slop_s), policy="drop_set")
        n_imgs = sum(r.topics()[t][1] for t in topic_cam)
        bar = tqdm(total=n_imgs, desc="offline", unit="img", disable=not progress)
        for topic, t_ns, msg in r.messages(list(topic_cam) + list(info_cam)):
            if topic in info_cam:
                infos[info_cam[topic]] = msg
                continue
            bar.update(1)
            i, comp = topic_cam[topic]
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            # Bag time as the receive clock: the collector's timeout then acts in dataset time.
            for cs in collector.add(i, stamp, (msg, comp), t_ns / 1e9):
                n_sets += 1
                t0 = time.perf_counter()
                present = cs.present
                for j in present:
                    if infos[j] is None:
                        raise BagError(f"{bag}: no camera_info for {cams[j]} (topic /{cams[j]}/camera_info)")
                    calib.update_info(j, infos[j])
                images = [compressed_to_rgb(cs.items[j][0], cams[j]) if cs.items[j][1]
                          else image_to_rgb(cs.items[j][0], cams[j]) for j in present]
                c = calib.resolve(present, [cs.items[j][0].header.frame_id for j in present],
                                  [(im.shape[1], im.shape[0]) for im in images],
                                  [cs.stamps_ns[j] for j in present], lookup, 0.0)
                d = det.detect(images, c.Ks, c.cam2target, cameras=present)
                lat.append((time.perf_counter() - t0) * 1e3)
                frames.append(BoxFrame(cs.stamp_ns, target_frame, np.asarray(d.boxes, np.float64).reshape(-1, 9),
                                       list(d.names),
                                       np.asarray(d.scores, dtype=np.float64), receive_ns=t_ns))
        bar.close()
    return Run(mode="offline", frames=frames, latency_ms=lat, sets=n_sets,
               info={"sync": collector.counters.as_dict(), "model": det.describe()})


class _Recorder:
    """Subscribes to the node's detections and keeps (message, receive monotonic time)."""

    def __init__(self, node, topic: str):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from vision_msgs.msg import Detection3DArray

        self.items: list[tuple[object, float]] = []
        self.cond = threading.Condition()
        self.sub = node.create_subscription(Detection3DArray, topic, self._cb,
                                            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))

    def _cb(self, msg) -> None:
        with self.cond:
            self.items.append((msg, time.monotonic()))
            self.cond.notify_all()

    def wait_count(self, n: int, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.items) >= n, timeout=timeout_s)

    def wait_settled(self, n: int, timeout_s: float, idle_s: float) -> bool:
        """Wait for ``n`` items, but stop early once nothing new arrived for ``idle_s`` (dropped sets)."""
        deadline = time.monotonic() + timeout_s
        last_n, last_t = len(self.items), time.monotonic()
        while time.monotonic() < deadline:
            if self.wait_count(n, min(0.1, max(0.0, deadline - time.monotonic()))):
                return True
            if len(self.items) != last_n:
                last_n, last_t = len(self.items), time.monotonic()
            elif time.monotonic() - last_t > idle_s:
                return False
        return len(self.items) >= n


def run_live(bag: str | Path, checkpoint: str, device: str = "cpu", score_threshold: float = 0.3,
             max_detections: int = 200, rate: float = 1.0, lockstep: bool = False, slop_s: float = 0.06,
             startup_timeout_s: float = 120.0, set_timeout_s: float = 30.0, node_args: list[str] | None = None,
             log_path: str | Path | None = None, record_path: str | Path | None = None) -> Run:
    """Play the bag to a ``detector_node`` subprocess (use_sim_time) and record its detections.

    Latency = receive time of a detection frame - publish time of the last image of its set (wall ms, includes
    DDS transport both ways). ``lockstep``: before the images of set k+1 go out, wait (up to ``set_timeout_s``)
    until k outputs arrived, so no set is superseded by a newer one. ``record_path``: also write the node's
    detections and markers to a new bag there (:class:`labeldistill_ros.bag.recorder.BagRecorder`).
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from labeldistill_ros.bag.player import BagPlayer

    with BagReader(bag) as r:
        avail = r.camera_topics()
    if not avail:
        raise BagError(f"{bag}: no camera image topics")
    compressed = all(c for _, c in avail.values())
    cmd = [sys.executable, "-m", "labeldistill_ros.node.detector_node", "--ros-args",
           "-p", "use_sim_time:=true", "-p", f"checkpoint:={checkpoint}", "-p", f"device:={device}",
           "-p", f"score_threshold:={score_threshold}", "-p", f"max_detections:={max_detections}",
           "-p", f"image_transport:={'compressed' if compressed else 'raw'}",
           "-p", "input_reliability:=reliable", "-p", "input_depth:=20", "-p", f"sync_slop_s:={slop_s}",
           "-p", "sync_timeout_s:=5.0", *(node_args or [])]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("labeldistill_bag_eval", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    rec = _Recorder(node, NODE_OUTPUT)
    bag_rec = None
    if record_path is not None:
        from labeldistill_ros.bag.recorder import BagRecorder

        bag_rec = BagRecorder(node, record_path, {NODE_OUTPUT: "vision_msgs/msg/Detection3DArray",
                                                  f"/{NODE_NAME}/output/markers": "visualization_msgs/msg/MarkerArray"})
    image_topics = {t for t, _ in avail.values()}
    published: dict[int, float] = {}  # image stamp (bag ns) -> publish monotonic time
    state = {"set_lo": None, "sets": 0, "missed": 0}

    def before(topic: str, t_ns: int) -> None:
        if topic not in image_topics or not lockstep:
            return
        lo = state["set_lo"]
        if lo is None or t_ns > lo + int(slop_s * 1e9):
            if lo is not None and not rec.wait_count(state["sets"] - state["missed"], set_timeout_s):
                state["missed"] += 1  # the node skipped the set (it logs why); counted as dropped
            state["set_lo"] = t_ns
            state["sets"] += 1

    def after(topic: str, t_ns: int, wall: float) -> None:
        if topic in image_topics:
            published[t_ns] = wall

    try:
        spin.start()
        player = BagPlayer(node, bag, rate=0.0 if lockstep else rate, clock=True, on_publish=after)
        player.before_publish = before
        # Everything the node subscribes to must be matched before the first message goes out.
        node_inputs = sorted(image_topics | {t for t in player.topics if t.endswith("/camera_info")} |
                             {"/tf", "/tf_static"})
        t_start = time.monotonic()
        while time.monotonic() - t_start < startup_timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"detector_node exited with status {proc.returncode} at start-up "
                                   f"(log: {log_path})")
            if not player.wait_for_subscribers(node_inputs, 0.2) and rec.sub.get_publisher_count() > 0:
                break
        else:
            raise RuntimeError(f"detector_node not ready after {startup_timeout_s} s (log: {log_path})")
        # Calibration before the first image (the node skips a set whose CameraInfo has not arrived yet).
        player.prime([t for t in node_inputs if t.endswith("/camera_info")])
        time.sleep(0.5)
        player.play()
        n_sets = state["sets"] if lockstep else _count_sets(sorted(published), slop_s)
        # The node may have dropped sets (too slow for the rate): stop waiting once its output has settled.
        gaps = np.diff([w for _, w in rec.items]) if len(rec.items) > 1 else [1.0]
        rec.wait_settled(n_sets - state["missed"], set_timeout_s, idle_s=max(3.0, 3 * float(np.max(gaps))))
        time.sleep(0.2)
        player.close()
    finally:
        ex.shutdown(timeout_sec=1.0)
        if bag_rec is not None:
            bag_rec.close()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if log is not subprocess.DEVNULL:
            log.close()
    stamps = sorted(published)
    frames, lat = [], []
    for msg, wall in rec.items:
        f = detections_from_msg(msg)
        f.receive_ns = int(wall * 1e9)
        frames.append(f)
        lo = np.searchsorted(stamps, f.stamp_ns)
        hi = np.searchsorted(stamps, f.stamp_ns + int(slop_s * 1e9), side="right")
        if hi > lo:
            lat.append((wall - max(published[s] for s in stamps[lo:hi])) * 1e3)
    return Run(mode="live" + ("-lockstep" if lockstep else f"-rate{rate:g}"), frames=frames, latency_ms=lat,
               sets=n_sets, info={"node_cmd": " ".join(cmd), "lockstep_timeouts": state["missed"]})


def _count_sets(stamps: list[int], slop_s: float) -> int:
    """Number of camera sets among sorted image stamps (a new set starts beyond ``slop_s`` of the first)."""
    n, lo = 0, None
    for s in stamps:
        if lo is None or s > lo + int(slop_s * 1e9):
            n, lo = n + 1, s
    return n


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------
def match_frames(gt: list[BoxFrame], frames: list[BoxFrame], tol_ns: int) -> dict[int, BoxFrame]:
    """Key-frame index -> the detection frame nearest to it in stamp (within ``tol_ns``; one frame per key)."""
    stamps = [g.stamp_ns for g in gt]
    best: dict[int, BoxFrame] = {}
    for f in frames:
        k = nearest_index(stamps, f.stamp_ns)
        if k < 0 or abs(stamps[k] - f.stamp_ns) > tol_ns:
            continue
        if k not in best or abs(stamps[k] - f.stamp_ns) < abs(stamps[k] - best[k].stamp_ns):
            best[k] = f
    return best


def results_json(gt: list[BoxFrame], matched: dict[int, BoxFrame], traj: Trajectory) -> dict:
    """nuScenes results (global frame) for every key frame of the bag (empty list where nothing matched).

    A matched frame's boxes (base_link at the frame's stamp) go to the global frame with the recorded ego pose
    at that stamp; boxes of unknown classes are dropped and at most 500 (the highest scores) kept per sample.
    """
    from labeldistill_training.eval.results import SampleDetections, detections_to_results

    dets = []
    for k, f in sorted(matched.items()):
        keep = [i for i, n in enumerate(f.names) if n in CLASS_NAMES]
        keep = sorted(keep, key=lambda i: -f.scores[i])[:MAX_BOXES]
        dets.append(SampleDetections(
            sample_token=gt[k].sample_token, boxes=f.boxes[keep].reshape(-1, 9), scores=f.scores[keep],
            labels=np.array([CLASS_NAMES.index(f.names[i]) for i in keep], dtype=np.int64),
            ego2global=traj.at(f.stamp_ns)))
    return detections_to_results(dets, sample_tokens=[g.sample_token for g in gt])


def detection_eval(dataroot: str, version: str, result_path: str, sample_tokens: list[str], out_dir: str,
                   config: str = "detection_cvpr_2019") -> dict:
    """The devkit's ``DetectionEval`` on exactly ``sample_tokens`` (the bag's key frames): GT loaded from the
    dataset, the devkit's distance/point filters, ``evaluate()`` without plots. Returns its metrics summary."""
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.common.loaders import (add_center_dist, filter_eval_boxes, load_gt_of_sample_tokens,
                                              load_prediction_of_sample_tokens)
    from nuscenes.eval.detection.data_classes import DetectionBox
    from nuscenes.eval.detection.evaluate import DetectionEval

    import contextlib
    import io

    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    cfg = config_factory(config)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ev = DetectionEval.__new__(DetectionEval)  # the devkit's evaluator, on a token list instead of a split
        ev.nusc, ev.cfg, ev.verbose, ev.result_path, ev.eval_set = nusc, cfg, False, result_path, "bag"
        ev.output_dir, ev.plot_dir = out_dir, os.path.join(out_dir, "plots")
        ev.pred_boxes, ev.meta = load_prediction_of_sample_tokens(result_path, cfg.max_boxes_per_sample,
                                                                  DetectionBox, sample_tokens=sample_tokens)
        ev.gt_boxes = load_gt_of_sample_tokens(nusc, sample_tokens, DetectionBox)
        ev.pred_boxes = filter_eval_boxes(nusc, add_center_dist(nusc, ev.pred_boxes), cfg.class_range)
        ev.gt_boxes = filter_eval_boxes(nusc, add_center_dist(nusc, ev.gt_boxes), cfg.class_range)
        ev.sample_tokens = ev.gt_boxes.sample_tokens
        metrics, _ = ev.evaluate()
    return metrics.serialize()


def _validate(results: dict, dataroot: str, version: str, tokens: list[str]) -> str:
    """The training side's results checks (structure, global frame, [w, l, h] order): 'ok' or the problem
    (reported, not fatal: an untrained model may legitimately trip the size-order heuristic)."""
    from nuscenes import NuScenes

    from labeldistill_training.eval.evaluate import lidar_ego_xy
    from labeldistill_training.eval.results import ResultsValidationError, validate_results

    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    try:
        validate_results(results, ego_xy=lidar_ego_xy(nusc, tokens))
    except ResultsValidationError as exc:
        return f"warning: {exc}"
    return "ok"


def latency_stats(lat_ms: list[float]) -> dict:
    if not lat_ms:
        return {"count": 0}
    a = np.asarray(lat_ms)
    return {"count": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def plot_bev(path: Path, gt: BoxFrame, det: BoxFrame | None, title: str, extent_m: float = 60.0) -> None:
    """BEV plot of one key frame in base_link (x forward to the right, y left upwards, metres): GT boxes green,
    detections red (opacity grows with the score); a line marks each heading."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=80)
    for frame, colour, lw in ((gt, "tab:green", 1.8), (det, "tab:red", 1.0)):
        if frame is None or not len(frame.boxes):
            continue
        corners = box_corners(frame.boxes)[:, :4, :2]
        for i, c in enumerate(corners):
            alpha = 1.0 if frame is gt else float(np.clip(0.25 + frame.scores[i], 0.25, 1.0))
            ax.plot(*np.vstack([c, c[:1]]).T, color=colour, lw=lw, alpha=alpha)
            ax.plot([frame.boxes[i, 0], (c[0, 0] + c[1, 0]) / 2], [frame.boxes[i, 1], (c[0, 1] + c[1, 1]) / 2],
                    color=colour, lw=lw, alpha=alpha)
    ax.plot([0], [0], marker=">", color="k")
    ax.set_xlim(-extent_m, extent_m)
    ax.set_ylim(-extent_m, extent_m)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_xlabel("x (m, forward)")
    ax.set_ylabel("y (m, left)")
    ax.set_title(title + "  (GT green, detections red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def score(bag: str | Path, run: Run, dataroot: str, version: str, out_dir: str | Path,
          match_tol_ms: float = 60.0, bev: int = 4, extra: dict[str, Path] | None = None) -> dict:
    """Match, transform, write the results JSON, run DetectionEval, report. Files appear in ``out_dir`` only at
    the end (built in a temporary folder and moved), together with ``extra`` ``{name: path}`` (e.g. the live
    run's recording)."""
    with BagReader(bag) as r:
        gt = r.ground_truth()
        traj = r.trajectory()
    if not gt:
        raise BagError(f"{bag}: no ground-truth key frames")
    if not all(g.sample_token for g in gt):
        raise BagError(f"{bag}: ground-truth frames without a sample token: record /ground_truth/sample_token "
                       f"together with /ground_truth/detections")
    matched = match_frames(gt, run.frames, int(match_tol_ms * 1e6))
    res = results_json(gt, matched, traj)
    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".bag_eval_", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        rp = tmp / "results_nusc.json"
        rp.write_text(json.dumps(res))
        validation = _validate(res, dataroot, version, [g.sample_token for g in gt])
        metrics = detection_eval(dataroot, version, str(rp), [g.sample_token for g in gt], str(tmp / "devkit"))
        shutil.rmtree(tmp / "devkit", ignore_errors=True)
        n_key = len(gt)
        report = {
            "bag": str(bag), "mode": run.mode, "key_frames": n_key, "detection_frames": len(run.frames),
            "camera_sets": run.sets, "matched_key_frames": len(matched),
            "drop_rate": 1.0 - len(matched) / n_key,
            "mAP": metrics["mean_ap"], "NDS": metrics["nd_score"],
            "tp_errors": metrics["tp_errors"], "class_ap": {k: float(v) for k, v in metrics["mean_dist_aps"].items()},
            "latency_ms": latency_stats(run.latency_ms), "boxes": int(sum(len(f.boxes) for f in run.frames)),
            "validation": validation, "info": run.info,
        }
        (tmp / "bag_eval.json").write_text(json.dumps(report, indent=2))
        if bev:
            (tmp / "bev").mkdir()
            for k in np.linspace(0, n_key - 1, min(bev, n_key)).round().astype(int):
                plot_bev(tmp / "bev" / f"{k:04d}_{gt[k].sample_token[:8]}.png", gt[k], matched.get(k),
                         f"key frame {k} ({gt[k].sample_token[:8]})")
        for name, path in (extra or {}).items():
            if Path(path).exists():
                shutil.move(str(path), tmp / name)
        out_dir.mkdir(parents=True, exist_ok=True)
        for p in tmp.iterdir():
            dest = out_dir / p.name
            if dest.is_dir():
                shutil.rmtree(dest)
            shutil.move(str(p), dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def format_table(rep: dict) -> str:
    """A readable summary of :func:`score`'s report."""
    lat = rep["latency_ms"]
    lines = [
        f"bag {rep['bag']}  mode {rep['mode']}",
        f"key frames {rep['key_frames']}  matched {rep['matched_key_frames']}  drop rate {rep['drop_rate']:.1%}"
        f"  camera sets {rep['camera_sets']}  detection frames {rep['detection_frames']}  boxes {rep['boxes']}",
        f"mAP {rep['mAP']:.4f}   NDS {rep['NDS']:.4f}",
        "TP errors: " + "  ".join(f"{k} {v:.3f}" for k, v in rep["tp_errors"].items()),
        f"{'class':<22}{'AP':>8}",
        *[f"{k:<22}{v:>8.4f}" for k, v in rep["class_ap"].items()],
    ]
    if lat.get("count"):
        lines.append(f"latency ms: mean {lat['mean']:.1f}  p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  "
                     f"p99 {lat['p99']:.1f}  max {lat['max']:.1f}  (n={lat['count']})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labeldistill-bag-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("offline", "live"))
    p.add_argument("--bag", required=True)
    p.add_argument("--dataroot", required=True, help="the nuScenes-format dataset the bag was made from")
    p.add_argument("--version", default="v1.0-mini")
    p.add_argument("--out", required=True, help="output folder (bag_eval.json, results_nusc.json, bev/)")
    p.add_argument("--checkpoint", default="", help="student checkpoint (.pt)")
    p.add_argument("--detections-topic", default=None,
                   help="score this Detection3DArray topic of the bag instead of running the model "
                        "(e.g. /ground_truth/detections, or a recorded node output)")
    p.add_argument("--detections-bag", default=None,
                   help="read --detections-topic from this bag (e.g. a live run's 'recording' or a ros2 bag "
                        "record of the node) while GT and TF come from --bag")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--score-threshold", type=float, default=0.3)
    p.add_argument("--max-detections", type=int, default=200)
    p.add_argument("--match-tol-ms", type=float, default=60.0,
                   help="largest |detection stamp - key frame stamp| for a match")
    p.add_argument("--slop-ms", type=float, default=60.0, help="camera set spread (the node's sync_slop_s)")
    p.add_argument("--rate", type=float, default=1.0, help="live: playback speed factor")
    p.add_argument("--lockstep", action="store_true", help="live: wait for each set's output before the next")
    p.add_argument("--node-log", default=None, help="live: write the node's output here")
    p.add_argument("--bev", type=int, default=4, help="number of BEV PNGs (0: none)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        with BagReader(a.bag) as r:  # damaged bags fail here, before anything runs or is written
            r.check()
        extra: dict[str, Path] = {}
        if a.detections_topic:
            if a.detections_bag:
                with BagReader(a.detections_bag) as r:
                    r.check()
            run = frames_from_topic(a.detections_bag or a.bag, a.detections_topic)
            run.mode = f"{a.mode}:{a.detections_topic}"
        elif not a.checkpoint:
            print("labeldistill-bag-eval: --checkpoint is required (or --detections-topic)", file=sys.stderr)
            return 2
        elif a.mode == "offline":
            run = run_offline(a.bag, a.checkpoint, a.device, a.precision, a.score_threshold, a.max_detections,
                              slop_s=a.slop_ms / 1e3, progress=not a.no_progress)
        else:
            from labeldistill_ros.dds import apply_dds_environment

            if "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ:
                apply_dds_environment("local")  # large shared memory, nothing leaves the host
            rec_dir = Path(tempfile.mkdtemp(prefix=".bag_eval_rec_"))
            extra["recording"] = rec_dir / "recording"
            try:
                run = run_live(a.bag, a.checkpoint, a.device, a.score_threshold, a.max_detections, rate=a.rate,
                               lockstep=a.lockstep, slop_s=a.slop_ms / 1e3, log_path=a.node_log,
                               record_path=extra["recording"])
                rep = score(a.bag, run, a.dataroot, a.version, a.out, a.match_tol_ms, a.bev, extra)
            finally:
                shutil.rmtree(rec_dir, ignore_errors=True)
            print(format_table(rep))
            return 0
        rep = score(a.bag, run, a.dataroot, a.version, a.out, a.match_tol_ms, a.bev, extra)
    except BagError as exc:
        print(f"labeldistill-bag-eval: {exc}", file=sys.stderr)
        return 2
    print(format_table(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
