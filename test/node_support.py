"""Helpers for the detector-node tests: camera samples (the real nuScenes key frame, a synthetic one), random-weight
checkpoints of the small CPU student, and :class:`NodeHarness`, which runs the node as a separate process (the
console script's module) and talks to it from the test process with real rclpy: latched CameraInfo and /tf_static,
camera images, and collectors for every output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import yaml

from labeldistill_ros.ros_convert import stamp_msg, stamp_to_ns, transform_msg

REPO = Path(__file__).resolve().parents[1]
CAMS = ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"]
CPU_CONFIG = REPO / "config" / "model" / "r18_128x352_cpu.yaml"
RESEND_SHIFT_NS = 200_000_000  # a lost set is sent again this much later (more than the sync slop)


# ------------------------------------------------------------------------------------------------------ samples
@dataclass
class CameraSample:
    """One camera set: RGB images, intrinsics, camera->base_link, per-camera stamps (ns)."""

    images: list[np.ndarray]
    Ks: list[np.ndarray]
    cam2ego: list[np.ndarray]
    stamps_ns: list[int]
    names: list[str] = field(default_factory=lambda: list(CAMS))

    @property
    def reference_stamp_ns(self) -> int:
        """The stamp the node puts on this set's outputs: its latest camera stamp (node/calibration.py)."""
        return max(self.stamps_ns)

    def shifted(self, dt_ns: int) -> "CameraSample":
        """The same set with every stamp moved by ``dt_ns``."""
        return replace(self, stamps_ns=[s + dt_ns for s in self.stamps_ns])


def _rgb(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"cannot read {path}"
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def real_sample(d: Path) -> CameraSample:
    """The real nuScenes key frame (1600x900, real calibration, cameras stamped ~45 ms apart)."""
    s = json.loads((d / "sample.json").read_text())
    cams = s["cameras"]
    return CameraSample(
        images=[_rgb(d / cams[c]["file"]) if "file" in cams[c] else _rgb(d / f"{c}.jpg") for c in CAMS],
        Ks=[np.array(cams[c]["cam2img"], dtype=np.float64) for c in CAMS],
        cam2ego=[np.array(cams[c]["cam2ego"], dtype=np.float64) for c in CAMS],
        stamps_ns=[int(round(cams[c]["timestamp_s"] * 1e6)) * 1000 for c in CAMS])


def synthetic_sample(out_dir: Path, seed: int = 0) -> CameraSample:
    """The first key frame of a one-scene synthetic world written by ``labeldistill-synth`` (400x225 images)."""
    from labeldistill_ros.geometry import make_transform
    from labeldistill_training.synth.config import SIZES
    from labeldistill_training.synth.generate import generate

    if not (out_dir / "v1.0-synth" / "sample.json").is_file():
        generate(SIZES["tiny"].replace(num_scenes=1), seed, str(out_dir), workers=1)
    tab = lambda name: json.loads((out_dir / "v1.0-synth" / f"{name}.json").read_text())  # noqa: E731
    sample = min(tab("sample"), key=lambda s: s["timestamp"])
    sensors = {s["token"]: s["channel"] for s in tab("sensor")}
    calib = {c["token"]: c for c in tab("calibrated_sensor")}
    by_cam = {}
    for sd in tab("sample_data"):
        if sd["sample_token"] == sample["token"]:
            c = calib[sd["calibrated_sensor_token"]]
            by_cam[sensors[c["sensor_token"]]] = (sd, c)
    return CameraSample(
        images=[_rgb(out_dir / by_cam[c][0]["filename"]) for c in CAMS],
        Ks=[np.array(by_cam[c][1]["camera_intrinsic"], dtype=np.float64) for c in CAMS],
        cam2ego=[make_transform(np.array(by_cam[c][1]["rotation"]), by_cam[c][1]["translation"]) for c in CAMS],
        stamps_ns=[int(by_cam[c][0]["timestamp"]) * 1000 for c in CAMS])


# ------------------------------------------------------------------------------------------------- checkpoints
def make_checkpoint(path: Path, seed: int = 0, poison_task: int | None = None, config: Path = CPU_CONFIG) -> Path:
    """A random-weight student of ``config`` (default: the small CPU config). ``poison_task``: that task head's
    regression weights become NaN (its boxes are non-finite; the other tasks stay valid)."""
    import torch

    from labeldistill_ros.model.checkpoint import save_checkpoint
    from labeldistill_ros.model.config import load_model_config
    from labeldistill_ros.model.student import StudentDetector

    torch.manual_seed(seed)
    model = StudentDetector.from_config(load_model_config(config)).eval()
    if poison_task is not None:
        with torch.no_grad():
            model.head.task_heads[poison_task].branches["dim"][-1].weight.fill_(float("nan"))
    save_checkpoint(path, model)
    return path


# ---------------------------------------------------------------------------------------------------- messages
def image_msg(rgb: np.ndarray, stamp_ns: int, frame: str, encoding: str = "rgb8"):
    """A ``sensor_msgs/Image`` (data assigned as an array.array: no per-byte conversion)."""
    import array

    from sensor_msgs.msg import Image

    data = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "mono8": rgb[..., 0],
            "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)])}[encoding]
    data = np.ascontiguousarray(data)
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, step=data.strides[0])
    msg.header.stamp, msg.header.frame_id = stamp_msg(stamp_ns), frame
    buf = array.array("B")
    buf.frombytes(data.tobytes())
    msg.data = buf
    return msg


def compressed_msg(rgb: np.ndarray, stamp_ns: int, frame: str, quality: int = 95):
    from sensor_msgs.msg import CompressedImage

    ok, jpg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    msg = CompressedImage(format="jpeg", data=jpg.tobytes())
    msg.header.stamp, msg.header.frame_id = stamp_msg(stamp_ns), frame
    return msg


def camera_info_msg(K: np.ndarray, width: int, height: int, frame: str, stamp_ns: int = 0):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo(width=width, height=height, distortion_model="plumb_bob", d=[0.0] * 5,
                     k=[float(v) for v in np.asarray(K).reshape(9)],
                     r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                     p=[float(v) for v in np.hstack([K, np.zeros((3, 1))]).reshape(12)])
    msg.header.stamp, msg.header.frame_id = stamp_msg(stamp_ns), frame
    return msg


def tf_static_msg(sample: CameraSample, parent: str = "base_link", frames: list[str] | None = None):
    from tf2_msgs.msg import TFMessage

    return TFMessage(transforms=[transform_msg(parent, name, T, sample.stamps_ns[0])
                                 for name, T in zip(frames or sample.names, sample.cam2ego)])


def tf_roundtrip(sample: CameraSample) -> list[np.ndarray]:
    """cam2ego exactly as the node obtains it through /tf_static (quaternion round trip, float64)."""
    from labeldistill_ros.node.ros_compat import TransformBuffer

    buf = TransformBuffer()
    for t in tf_static_msg(sample).transforms:
        buf.set_transform_static(t)
    return [buf.lookup_matrix("base_link", n, 0)[0] for n in sample.names]


# --------------------------------------------------------------------------------------------------- harness
class NodeHarness:
    """The node in its own process plus a test-side rclpy node that feeds it and records its outputs."""

    def __init__(self, tmp: Path, checkpoint: Path, overrides: dict | None = None, name: str = "node",
                 env: dict | None = None):
        """``overrides``: node parameters over the harness's defaults below; a value of None leaves that parameter
        to the node's own default. ``env``: extra environment of the node process."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        uid = uuid.uuid4().hex[:8]
        self.prefix = f"/ld_{name}_{uid}"
        self.ns = f"/ld_{name}_{uid}_ns"
        self.node_name = "labeldistill_detector"
        params = {
            "checkpoint": str(checkpoint),
            "image_topics": [f"{self.prefix}/{c}/image" for c in CAMS],
            "camera_info_topics": [f"{self.prefix}/{c}/camera_info" for c in CAMS],
            "diagnostics_period_s": 0.25,
            # Receive-time timeout: generous, so a starved executor on a loaded 2-core machine does not close a
            # set before its last image is read (the timeout behaviour itself is tested with sync.py's clock).
            "sync_timeout_s": 2.0,
            "max_processing_time_ms": 30000.0,  # shared CI cores: no "slow" WARN in functional tests
            "cpu_threads": 1,  # 2 shared cores: parallel kernels stall badly when another process is busy
            # The offline Detector the outputs are compared with runs on the CPU; and no "device auto fell back to
            # the CPU" WARN in functional tests.
            "device": "cpu",
            # Functional tests compare whole sets with the offline Detector: a set that lost an image in transport
            # is dropped (and sent again) instead of being run without that camera (the node's default).
            "missing_camera_policy": "drop_set",
            # No /tf map -> base_link in most tests (a static rig): ego-motion compensation off on purpose. Tests of
            # the compensation set fixed_frame and publish the poses (test_real_parity.py).
            "fixed_frame": "",
        }
        params.update(overrides or {})
        params = {k: v for k, v in params.items() if v is not None}
        self.params = params
        self.env = dict(os.environ, **(env or {}))
        self.param_file = tmp / f"params_{uid}.yaml"
        self.param_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
        self.lines: list[str] = []
        self.proc = self._start(["--ros-args", "--params-file", str(self.param_file), "-r", f"__ns:={self.ns}"])

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node(f"ld_test_feeder_{uid}", context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self._make_endpoints(QoSProfile, ReliabilityPolicy, DurabilityPolicy)

    # -- process ----------------------------------------------------------------------------------------------
    def _start(self, args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "labeldistill_ros.node.detector_node", *args],
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        return proc

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_log(self, text: str, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hit = next((ln for ln in list(self.lines) if text in ln), None)
            if hit:
                return hit
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.output()}")
            self.ex.spin_once(timeout_sec=0.05)
        raise AssertionError(f"'{text}' not logged within {timeout_s} s:\n{self.output()}")

    # -- endpoints --------------------------------------------------------------------------------------------
    def _make_endpoints(self, QoSProfile, ReliabilityPolicy, DurabilityPolicy) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from std_msgs.msg import Float64
        from tf2_msgs.msg import TFMessage
        from vision_msgs.msg import Detection3DArray, LabelInfo
        from visualization_msgs.msg import MarkerArray

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        n = self.node
        # Reliable publishers (like `ros2 bag play`); the node subscribes best effort and must still connect.
        self.pub_img = [n.create_publisher(Image, f"{self.prefix}/{c}/image", reliable) for c in CAMS]
        self.pub_cimg = [n.create_publisher(CompressedImage, f"{self.prefix}/{c}/image/compressed", reliable)
                         for c in CAMS]
        self.pub_info = [n.create_publisher(CameraInfo, f"{self.prefix}/{c}/camera_info", latched) for c in CAMS]
        self.pub_tf_static = n.create_publisher(TFMessage, "/tf_static", latched)
        self.pub_tf = n.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))
        base = f"{self.ns}/{self.node_name}"
        self.detections: list = []
        self.markers: list = []
        self.diags: list = []
        self.labels: list = []
        self.timings: dict[str, list[float]] = {}
        n.create_subscription(Detection3DArray, f"{base}/output/detections", self.detections.append,
                              QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.sub_markers = n.create_subscription(MarkerArray, f"{base}/output/markers", self.markers.append,
                                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        n.create_subscription(LabelInfo, f"{base}/output/label_info", self.labels.append, latched)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, QoSProfile(depth=100))
        for k in ("preprocess", "inference", "postprocess", "total"):
            n.create_subscription(Float64, f"{base}/debug/processing_time/{k}_ms",
                                  lambda m, k=k: self.timings.setdefault(k, []).append(m.data), reliable)
        n.create_subscription(Float64, f"{base}/debug/pipeline_latency_ms",
                              lambda m: self.timings.setdefault("latency", []).append(m.data), reliable)

    def _on_diag(self, msg) -> None:
        for s in msg.status:
            if s.hardware_id.startswith(self.ns):
                self.diags.append(s)

    # -- feeding ----------------------------------------------------------------------------------------------
    def spin(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.ex.spin_once(timeout_sec=0.02)

    def spin_until(self, pred, timeout_s: float, what: str = "condition"):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = pred()
            if r:
                return r
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode} waiting for {what}:\n{self.output()}")
            self.ex.spin_once(timeout_sec=0.02)
        r = pred()
        if not r:
            last = diag_values(self.diags[-1]) if self.diags else "none"
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last diagnostics: {last}; "
                                 f"node output:\n{self.output()[-4000:]}")
        return r

    def publish_calibration(self, sample: CameraSample, infos: list | None = None) -> None:
        for i, c in enumerate(CAMS):
            h, w = sample.images[i].shape[:2]
            self.pub_info[i].publish(infos[i] if infos else camera_info_msg(sample.Ks[i], w, h, c))
        self.pub_tf_static.publish(tf_static_msg(sample))

    def use_calibration(self, sample: CameraSample) -> None:
        """Publish ``sample``'s CameraInfo and /tf_static unless they are the ones in effect (then settle)."""
        key = (id(sample.Ks[0]), id(sample.cam2ego[0]))
        if getattr(self, "_calibration", None) != key:
            self.publish_calibration(sample)
            self._calibration = key
            self.spin(0.4)

    def wait_connected(self, timeout_s: float = 30.0) -> None:
        """Until the node's subscriptions match our image publishers and its outputs match ours."""
        self.spin_until(lambda: all(p.get_subscription_count() > 0 for p in self.pub_img)
                        and self.node.count_publishers(f"{self.ns}/{self.node_name}/output/detections") > 0,
                        timeout_s, "node endpoints")

    def publish_set(self, sample: CameraSample, cams=None, encoding: str = "rgb8", compressed: bool = False,
                    messages: dict | None = None) -> None:
        """Publish the sample's images (``messages[i]`` replaces camera i's message)."""
        for i in (range(6) if cams is None else cams):
            if messages and i in messages:
                msg = messages[i]
            elif compressed:
                msg = compressed_msg(sample.images[i], sample.stamps_ns[i], CAMS[i])
            else:
                msg = image_msg(sample.images[i], sample.stamps_ns[i], CAMS[i], encoding)
            (self.pub_cimg if compressed else self.pub_img)[i].publish(msg)
            self.ex.spin_once(timeout_sec=0.0)

    def detection_at(self, stamp_ns: int):
        for d in self.detections:
            if stamp_to_ns(d.header.stamp) == stamp_ns:
                return d
        return None

    def until(self, pred, timeout_s: float, what: str, resend=None, every_s: float = 15.0):
        """Spin until ``pred()`` is truthy; ``resend(attempt)`` runs at once and again every ``every_s`` seconds
        (the node subscribes best effort, as it should: a set lost in transport on a loaded machine is sent
        again with new stamps, like the next frame of a camera)."""
        state = {"attempt": 0, "next": time.monotonic() + every_s}
        if resend is not None:
            resend(0)

        def check():
            r = pred()
            if not r and resend is not None and time.monotonic() > state["next"]:
                state["attempt"] += 1
                state["next"] = time.monotonic() + every_s
                resend(state["attempt"])
            return r
        return self.spin_until(check, timeout_s, what)

    def request(self, sample: CameraSample, timeout_s: float = 120.0, **kw):
        """Publish a set and wait for the Detection3DArray stamped with its reference (latest) stamp (resending it
        200 ms later if it was lost: later than the slop, so the resent images are not 'late' for the closed
        set). ``self.last_sample`` is the set that was answered."""
        sent: list[CameraSample] = []

        def resend(attempt):
            s = sample.shifted(attempt * RESEND_SHIFT_NS)
            sent.append(s)
            self.publish_set(s, **kw)

        def answered():
            for s in sent:
                arr = self.detection_at(s.reference_stamp_ns)
                if arr is not None:
                    self.last_sample = s
                    return arr
            return None
        return self.until(answered, timeout_s, f"detections at {sample.reference_stamp_ns}", resend)

    def diag_since(self, n0: int, pred, timeout_s: float = 20.0):
        return self.spin_until(lambda: next((d for d in self.diags[n0:] if pred(d)), None), timeout_s,
                               "a diagnostic status")

    def close(self) -> None:
        import rclpy

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def diag_values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}
