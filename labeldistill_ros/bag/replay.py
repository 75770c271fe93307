"""Replay a bag through the detector's pipeline and collect its detections (runtime side: no devkit, no
training code).

Three sources of detection frames (boxes ``(N, 9)`` in ``base_link``, stamp = the camera set's reference stamp,
its latest image, at which the boxes are expressed):

* :func:`run_offline`: the node's own pipeline in one process, no middleware: its set collector
  (:class:`labeldistill_ros.node.sync.SetCollector`), its image decoding, calibration and TF buffer (fed with
  the bag's ``/tf_static`` and ``/tf``), and :class:`labeldistill_ros.inference.Detector`;
* :func:`run_live`: ``detector_node`` as a subprocess with ``use_sim_time:=true``; the bag is played through real
  rclpy with ``/clock`` (:class:`.player.BagPlayer`) and the node's output recorded (optionally to a bag,
  :class:`.recorder.BagRecorder`);
* :func:`frames_from_topic`: a Detection3DArray topic already in a bag (ground truth, a recording).

Scoring lives in ``labeldistill_training.tools.bag_eval``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ros_convert import stamp_to_ns
from .detections import BoxFrame, attach_velocities, detections_from_msg, velocities_from_objects
from .reader import TF, TF_STATIC, BagError, BagReader

NODE_NAME = "labeldistill_detector"
NODE_OUTPUT = f"/{NODE_NAME}/output/detections"
NODE_OBJECTS = f"/{NODE_NAME}/output/objects"  # autoware_perception_msgs/DetectedObjects (publish_objects)


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
def frames_from_topic(bag: str | Path, topic: str, objects_topic: str | None = None) -> Run:
    """Detection frames of ``topic`` in ``bag`` (``/ground_truth/detections``, a recorded node output, or the
    ``recording`` bag a live run leaves in its output folder). ``objects_topic``: a DetectedObjects topic of the
    same bag (the node's ``~/output/objects``) whose twists give the boxes their velocity (Detection3DArray
    has none)."""
    with BagReader(bag) as r:
        frames = r.detections(topic)
        info = {}
        if objects_topic:
            n = attach_velocities(frames, r.objects(objects_topic))
            info = {"velocity_source": f"DetectedObjects ({objects_topic})", "frames_with_velocity": n}
    return Run(mode=f"topic:{topic}", frames=frames, sets=len(frames), info=info)


def run_offline(bag: str | Path, checkpoint: str, device: str = "cpu", precision: str = "fp32",
                score_threshold: float = 0.3, max_detections: int = 200, cameras: list[str] | None = None,
                slop_s: float = 0.06, target_frame: str = "base_link", fixed_frame: str = "map",
                progress: bool = True) -> Run:
    """The node's pipeline on every synchronised camera set of the bag, in one process, no middleware.

    Data flow: bag message -> SetCollector (stamps, nanoseconds) -> decoded RGB ``(H, W, 3)`` uint8 + K (3x3,
    from CameraInfo) + camera -> ``target_frame`` at the set's reference stamp (the node's TF buffer, fed with the
    bag's /tf_static and /tf in recording order; ego motion compensated through ``fixed_frame``,
    :mod:`labeldistill_ros.node.calibration`) -> ``Detector.detect`` -> boxes ``(N, 9)`` in ``target_frame``,
    frame stamp = reference stamp. Latency = decode + calibration + detect, wall ms per set.
    """
    from tqdm import tqdm

    from labeldistill_ros.inference import Detector
    from labeldistill_ros.node.calibration import CalibrationCache
    from labeldistill_ros.node.params import NUSCENES_CAMERAS
    from labeldistill_ros.node.ros_compat import TfBackend, TransformBuffer, compressed_to_rgb, image_to_rgb
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
        tf = TfBackend.from_buffer(TransformBuffer())
        calib = CalibrationCache(cams, target_frame)
        uncompensated, resets = 0, 0
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
        for topic, t_ns, msg in r.messages(list(topic_cam) + list(info_cam) + [TF, TF_STATIC]):
            if topic in info_cam:
                infos[info_cam[topic]] = msg
                continue
            if topic in (TF, TF_STATIC):
                for t in msg.transforms:
                    (tf.buffer.set_transform_static if topic == TF_STATIC else tf.buffer.set_transform)(t)
                continue
            bar.update(1)
            i, comp = topic_cam[topic]
            stamp = stamp_to_ns(msg.header.stamp)
            # Bag time as the receive clock: the collector's timeout then acts in dataset time.
            ready = collector.add(i, stamp, (msg, comp), t_ns / 1e9)
            if collector.reset_pending:  # as the node: time jumped back, dynamic TF forgotten
                collector.reset_pending = False
                tf.clear()
            for cs in ready:
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
                                  [cs.stamps_ns[j] for j in present], tf.lookup_matrix, 0.0, fixed_frame,
                                  tf.exceptions)
                uncompensated += c.uncompensated_reason is not None
                if collector.counters.resets != resets:  # as the node: no history across a jump back
                    resets = collector.counters.resets
                    det.reset_history()
                d = det.detect(images, c.Ks, c.cam2target, cameras=present, stamp_ns=c.reference_stamp_ns,
                               ego_pose=c.ego_pose)
                lat.append((time.perf_counter() - t0) * 1e3)
                frames.append(BoxFrame(c.reference_stamp_ns, target_frame, np.asarray(d.boxes, np.float64).reshape(-1, 9),
                                       list(d.names),
                                       np.asarray(d.scores, dtype=np.float64), receive_ns=t_ns))
        bar.close()
    return Run(mode="offline", frames=frames, latency_ms=lat, sets=n_sets,
               info={"sync": collector.counters.as_dict(), "model": det.describe(),
                     "uncompensated_sets": uncompensated, "velocity_source": "model (Detector boxes)"})


class _Recorder:
    """Subscribes to one of the node's outputs (Detection3DArray by default) and keeps (message, receive
    monotonic time)."""

    def __init__(self, node, topic: str, msg_type=None):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from vision_msgs.msg import Detection3DArray

        self.items: list[tuple[object, float]] = []
        self.cond = threading.Condition()
        self.sub = node.create_subscription(msg_type or Detection3DArray, topic, self._cb,
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
             log_path: str | Path | None = None, record_path: str | Path | None = None,
             objects: bool = False) -> Run:
    """Play the bag to a ``detector_node`` subprocess (use_sim_time) and record its detections.

    ``objects``: the node also publishes ``autoware_perception_msgs/DetectedObjects`` (``publish_objects``); they
    are recorded too and their twists give the detection frames their velocity (so the scorer's mAVE is the
    model's, not the zero-velocity error of a Detection3DArray).

    Latency = receive time of a detection frame - publish time of the last image of its set (wall ms, includes
    DDS transport both ways). ``lockstep``: before any message after set k goes out, wait (up to
    ``set_timeout_s``) until k outputs arrived, so no set is superseded and none sees later TF or calibration.
    ``record_path``: also write the node's detections and markers to a new bag there
    (:class:`labeldistill_ros.bag.recorder.BagRecorder`).
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from .player import BagPlayer

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
           "-p", "sync_timeout_s:=5.0", *(["-p", "publish_objects:=true"] if objects else []), *(node_args or [])]
    own_log = log_path is None
    if own_log:
        fd, log_path = tempfile.mkstemp(prefix="detector_node_", suffix=".log")
        os.close(fd)
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("labeldistill_bag_eval", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    rec = _Recorder(node, NODE_OUTPUT)
    rec_objects = None
    if objects:
        from autoware_perception_msgs.msg import DetectedObjects

        rec_objects = _Recorder(node, NODE_OBJECTS, DetectedObjects)
    from rclpy.qos import QoSProfile
    from std_msgs.msg import Float64

    node_ms: list[float] = []  # the node's own processing time per set (its debug topic), ms
    node.create_subscription(Float64, f"/{NODE_NAME}/debug/processing_time/total_ms",
                             lambda m: node_ms.append(float(m.data)), QoSProfile(depth=100))
    bag_rec = None
    if record_path is not None:
        from .recorder import BagRecorder

        topics = {NODE_OUTPUT: "vision_msgs/msg/Detection3DArray",
                  f"/{NODE_NAME}/output/markers": "visualization_msgs/msg/MarkerArray"}
        if objects:
            topics[NODE_OBJECTS] = "autoware_perception_msgs/msg/DetectedObjects"
        bag_rec = BagRecorder(node, record_path, topics)
    image_topics = {t for t, _ in avail.values()}
    published: dict[int, float] = {}  # image stamp (bag ns) -> publish monotonic time
    state = {"set_lo": None, "sets": 0, "missed": 0}

    def before(topic: str, t_ns: int) -> None:
        if not lockstep:
            return
        lo = state["set_lo"]
        if lo is not None and t_ns > lo + int(slop_s * 1e9):
            # The open set is complete: nothing after it (images, TF, a new scene's calibration) goes out
            # before its output arrived.
            if not rec.wait_count(state["sets"] - state["missed"], set_timeout_s):
                state["missed"] += 1  # the node skipped the set (it logs why); counted as dropped
            state["set_lo"] = lo = None
        if lo is None and topic in image_topics:
            state["set_lo"] = t_ns
            state["sets"] += 1

    def after(topic: str, t_ns: int, wall: float) -> None:
        if topic in image_topics:
            published[t_ns] = wall

    player = None
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
                raise RuntimeError(f"detector_node exited with status {proc.returncode} at start-up: "
                                   f"{_tail(log_path)}")
            if not player.wait_for_subscribers(node_inputs, 0.2) and rec.sub.get_publisher_count() > 0:
                break
        else:
            raise RuntimeError(f"detector_node not ready after {startup_timeout_s} s: {_tail(log_path)}")
        # Calibration before the first image (the node skips a set whose CameraInfo has not arrived yet).
        player.prime([t for t in node_inputs if t.endswith("/camera_info")])
        time.sleep(0.5)
        player.play()
        n_sets = state["sets"] if lockstep else _count_sets(sorted(published), slop_s)
        # The node may have dropped sets (too slow for the rate): stop waiting once its output has settled.
        gaps = np.diff([w for _, w in rec.items]) if len(rec.items) > 1 else [1.0]
        rec.wait_settled(n_sets - state["missed"], set_timeout_s, idle_s=max(3.0, 3 * float(np.max(gaps))))
        if rec_objects is not None:  # published right after each Detection3DArray
            rec_objects.wait_count(len(rec.items), 5.0)
        time.sleep(0.2)
    finally:
        if player is not None:
            player.close()
        # The spin thread must have left the executor before the node is destroyed: destroying a node that another
        # thread still spins can deadlock inside rcl_node_fini under the GIL (ros2/rclpy#1722). A thread that does
        # not stop in time keeps its node (a daemon thread; the process reclaims both at exit).
        ex.shutdown(timeout_sec=10.0)
        spin.join(timeout=10.0)
        if bag_rec is not None:
            bag_rec.close()
        if not spin.is_alive():
            node.destroy_node()
            rclpy.try_shutdown(context=ctx)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()
        if own_log:
            os.unlink(log_path)
    stamps = sorted(published)
    frames, lat = [], []
    for msg, wall in rec.items:
        f = detections_from_msg(msg)
        f.receive_ns = int(wall * 1e9)
        frames.append(f)
        lo = np.searchsorted(stamps, f.stamp_ns - int(slop_s * 1e9))  # the set's images: up to its latest stamp
        hi = np.searchsorted(stamps, f.stamp_ns, side="right")
        if hi > lo:
            lat.append((wall - max(published[s] for s in stamps[lo:hi])) * 1e3)
    info = {"node_cmd": " ".join(cmd), "lockstep_timeouts": state["missed"],
            "node_processing_ms": summary_stats(node_ms),
            "velocity_source": "none: Detection3DArray carries no velocity (mAVE = the zero-velocity error)"}
    if rec_objects is not None:
        n = attach_velocities(frames, [velocities_from_objects(m) for m, _ in rec_objects.items])
        info.update(velocity_source=f"DetectedObjects ({NODE_OBJECTS})", frames_with_velocity=n)
    return Run(mode="live" + ("-lockstep" if lockstep else f"-rate{rate:g}"), frames=frames, latency_ms=lat,
               sets=n_sets, info=info)


def summary_stats(values: list[float]) -> dict:
    """count, mean, p50, p90, p99, max of ``values`` (``{'count': 0}`` when empty)."""
    if not values:
        return {"count": 0}
    a = np.asarray(values, dtype=np.float64)
    return {"count": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def _tail(path: str | Path, lines: int = 15) -> str:
    """The last lines of the node's log, for error messages."""
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return f"(no log at {path})"
    return "node log:\n  " + "\n  ".join(text) if text else "(the node printed nothing)"


def _count_sets(stamps: list[int], slop_s: float) -> int:
    """Number of camera sets among sorted image stamps (a new set starts beyond ``slop_s`` of the first)."""
    n, lo = 0, None
    for s in stamps:
        if lo is None or s > lo + int(slop_s * 1e9):
            n, lo = n + 1, s
    return n
