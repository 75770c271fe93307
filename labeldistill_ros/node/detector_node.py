"""The ROS 2 camera 3D detector node: N synchronised cameras in, ``vision_msgs/Detection3DArray`` and RViz
markers out.

    ros2 run labeldistill_ros detector_node --ros-args --params-file config/detector.yaml -p checkpoint:=s.pt
    ros2 launch labeldistill_ros detector.launch.py checkpoint:=/path/student.pt

Data flow (callbacks only hand off; nothing heavy runs in the executor thread or under the sync lock):

    image callbacks (serialized, raw=True: only the header is read) --(lock)--> SetCollector --complete/partial
        set--> LatestWorker slot (newest wins; a superseded set's images are never converted)
      +--> staging thread: while the model keeps up (or is about to finish its set), each image is converted and
           preprocessed into its set's network input as it arrives (staging.py)
           and, once the set is complete, its calibration: K (CameraInfo) + cam->target_frame at the reference
           stamp (TF, through fixed_frame)
    camera_info callbacks --> latest message per camera (validated with the calibration, cached by content)
    inference thread: whatever of the set is not staged yet -> Detector.detect_slot (temporal models: + kept BEV
                      of earlier sets) -> publish (Detection3DArray as CDR bytes written directly); from the end
                      of the forward to the publish, the executor takes no image (reception_gate.py)

Topics (``~`` = the node's name, ``labeldistill_detector`` by default):
    in   ``image_topics[i]`` (sensor_msgs/Image) or ``image_topics[i]/compressed`` (CompressedImage),
         ``camera_info_topics[i]`` (CameraInfo, streamed or latched), ``/tf``, ``/tf_static``
    out  ``~/output/detections`` (vision_msgs/Detection3DArray, frame target_frame, stamp = the set's reference
         stamp: its latest camera stamp; each camera is moved there through ``fixed_frame``, see
         :mod:`.calibration`),
         ``~/output/markers`` (visualization_msgs/MarkerArray, built only while subscribed),
         ``~/output/label_info`` (vision_msgs/LabelInfo, latched), ``/diagnostics`` (diagnostic_msgs/DiagnosticArray),
         ``~/output/objects`` (autoware_perception_msgs/DetectedObjects, with ``publish_objects``: the velocity),
         ``~/debug/processing_time/{preprocess,inference,postprocess,total}_ms`` and
         ``~/debug/pipeline_latency_ms`` (std_msgs/Float64; latency = node clock now - reference stamp),
         ``~/debug/stage_times_ms`` (diagnostic_msgs/DiagnosticStatus: every stage of a set from its first image's
         arrival, and the node's ``overhead``; :meth:`DetectorNode._report_times`)
"""
from __future__ import annotations

import functools
import sys
import threading
import time
from collections import Counter

from . import diagnostics, params, raw_image
from .calibration import CalibrationError
from .ros_compat import ImageError, TfBackend, backends
from .outputs import Outputs, qos
from .reception_gate import ReceptionGate
from .set_inputs import SetInputs
from .staging import SetStage, Stager, StagePolicy, wall_ns
from .sync import CameraSet, SetCollector
from .timing import stage_times
from .worker import LatestWorker

try:  # rclpy is a runtime dependency of the node only (the package imports stay light)
    import rclpy
    from rclpy.node import Node
except ImportError:  # pragma: no cover - documented: the node needs a ROS 2 environment
    rclpy = None
    Node = object
try:  # Iron and newer hand a subscription callback the message info (the middleware's reception time)
    from rclpy.subscription import MessageInfo as _MessageInfo  # noqa: F401
    _MESSAGE_INFO = True
except ImportError:  # Humble
    _MESSAGE_INFO = False

THROTTLE_S = 5.0
GIL_SWITCH_S = 0.0002  # the interpreter's thread switch interval in the node process (see DetectorNode.__init__)


class DetectorNode(Node):
    """See the module docstring. Raises :class:`params.ParamError` or the detector's load error at start-up."""

    def __init__(self, **node_kwargs):
        super().__init__(params.NODE_NAME, **node_kwargs)
        params.declare(self)
        given = set(getattr(self, "_parameter_overrides", {}) or {})  # what the params file / -p gave
        unknown = sorted(given - set(params.SPECS) - {"use_sim_time", "start_type_description_service"})
        if unknown:
            raise params.ParamError(
                f"unknown parameter(s) {unknown} for {params.NODE_NAME}: known are {sorted(params.SPECS)}. Fix: "
                f"correct the name in the parameters file (a typo would silently leave the default in effect).")
        self.p = p = params.from_node(self)
        from ..inference import Detector

        # Three threads share the interpreter: the executor (each image's raw take is a 4.3 MB copy holding the
        # GIL), the staging thread and the inference thread, whose decoding is many short torch ops that each give
        # the GIL up and must win it back. With Python's 5 ms switch interval, winning it back behind a burst of
        # image callbacks cost up to 5-9 ms per set; bench_node, same load, alternating runs: overhead p50/p99
        # 11.7/61 ms at 5 ms, 6.3-7.0/19-25 at 0.5 ms, 3.4-5.8/16-17 at 0.2 ms, 7.3/33 at 0.1 ms.
        sys.setswitchinterval(GIL_SWITCH_S)


        if p.cpu_threads:
            import torch

            torch.set_num_threads(p.cpu_threads)

        self.detector = Detector(p.checkpoint, device=p.device, precision=p.precision,
                                 score_threshold=p.score_threshold, max_detections=p.max_detections,
                                 backend=p.backend)
        self.cpu_fallback = self._warn_cpu_fallback()
        # Start-up costs (torch.compile, CUDA kernels, first allocations) are paid here, not by the first set.
        self.warmup_s = self.detector.warmup(p.num_cameras)
        self.names = p.camera_names
        self.tf = TfBackend(self)
        self.inputs = SetInputs(p, self.detector, self.tf, self.get_logger().warning)  # images + calibration
        self._lock = threading.Lock()  # guards the collector (executor thread: callbacks and the timer)
        self.policy = StagePolicy()
        # Image takes wait while the inference thread decodes and publishes a set (reception_gate.py).
        self.reception_gate = ReceptionGate(wake=self._wake_executor)
        self._current: SetStage | None = None  # the set the inference thread is on
        self.stager = Stager(self.inputs.stage_job, still_wanted=lambda st: st is self._current or self.policy.stage_now(
            time.monotonic()))
        self.collector = SetCollector(p.num_cameras, p.sync_slop_s, p.sync_timeout_s, p.missing_camera_policy,
                                      p.min_cameras, new_ctx=self._new_stage, on_drop=SetStage.drop)
        self.worker = LatestWorker(self._process, on_error=self._on_worker_error,
                                   on_discard=lambda cs: cs.ctx.drop() if cs.ctx is not None else None)
        self._history_resets = 0  # collector resets already applied to the detector's temporal history
        self._free_ns: int | None = None  # wall ns when the inference thread finished its last set
        self.stats = Counter()  # cumulative event counts, written by the inference thread
        self._window_base = Counter()
        self._diag_t = time.monotonic()
        self._rates = diagnostics.RateWindow(p.rate_window_s, p.camera_names, self._diag_t)
        self.last_timing: dict[str, float] = {}
        self._throttle = diagnostics.Throttle(THROTTLE_S)

        self.out = Outputs(self, p, self.detector.class_names, self.stats)

        # Inputs
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        try:
            from rclpy.event_handler import SubscriptionEventCallbacks  # Iron and newer
        except ImportError:  # Humble
            from rclpy.qos_event import SubscriptionEventCallbacks

        in_qos = qos(p.input_reliability, p.input_depth)
        img_type = CompressedImage if p.image_transport == "compressed" else Image
        self._compressed = p.image_transport == "compressed"
        self._subs = []
        # Images arrive serialized (raw=True): only the header is read in the callback, the pixels of a set are
        # converted when it is staged (raw_image.py). Not through message_filters: it cannot hand over serialized
        # messages, and the node synchronises with its own collector.
        for i, topic in enumerate(p.subscribed_image_topics()):
            cb = (functools.partial(self._on_image, i) if _MESSAGE_INFO else
                  functools.partial(self._on_image_no_info, i))
            self._subs.append(self.create_subscription(img_type, topic, cb, in_qos, raw=True,
                                                       callback_group=self.reception_gate))
        quiet = SubscriptionEventCallbacks(incompatible_qos=lambda _e: None)
        for i, topic in enumerate(p.camera_info_topics):
            cb = functools.partial(self._on_info, i)
            # Streamed CameraInfo (any reliability) and latched CameraInfo (history for late joiners): two
            # subscriptions; the latched one is silent about volatile publishers it cannot match.
            self._subs.append(self.create_subscription(CameraInfo, topic, cb, in_qos))
            self._subs.append(self.create_subscription(CameraInfo, topic, cb, qos("reliable", 1, True),
                                                       event_callbacks=quiet))
        self._poll_timer = self.create_timer(min(0.05, p.sync_timeout_s / 4), self._on_poll)
        self._diag_timer = self.create_timer(p.diagnostics_period_s, self._on_diagnostics)

        self.get_logger().info(
            f"ready: {p.num_cameras} cameras {self.names} ({p.image_transport}, input QoS "
            f"{p.input_reliability}/depth {p.input_depth}), target_frame '{p.target_frame}', sync slop "
            f"{p.sync_slop_s * 1e3:.0f} ms timeout {p.sync_timeout_s:.2f} s policy {p.missing_camera_policy}; "
            f"model {self.detector.describe()} (warm-up {self.warmup_s:.1f} s); "
            f"outputs: {self.out.describe()}; ROS packages: {backends()}")

    def _wake_executor(self) -> None:
        executor = self.executor
        if executor is not None:
            executor.wake()

    # -- callbacks (hand off only) -----------------------------------------------------------------------------
    def _on_image(self, cam: int, raw: bytes, info) -> None:
        self._on_image_no_info(cam, raw, info.get("received_timestamp") if info else None)

    def _on_image_no_info(self, cam: int, raw: bytes, received_ns: int | None = None) -> None:
        """A camera's serialized image: read its header, hand it to the collector, queue its staging."""
        received_ns = received_ns or wall_ns()  # the middleware's reception time where rclpy gives it (Iron+)
        try:
            item = raw_image.parse(raw, self._compressed)
            if item is None:  # a big-endian payload: deserialise (never written by current ROS 2 platforms)
                item = raw_image.from_message(raw, self._compressed)
        except raw_image.RawImageError as exc:
            self.stats["input_errors"] += 1
            self._warn("image", str(exc), f"{self.names[cam]}: undecodable image message, dropped: {exc}")
            return
        item.received_ns = received_ns
        now = time.monotonic()
        with self._lock:
            ready = self.collector.add(cam, item.stamp_ns, item, now)
            st = self.collector.last_ctx
            reset = self.collector.reset_pending
            self.collector.reset_pending = False
            jump_s = self.collector.last_jump_ns / 1e9
        if reset:  # once per loop: the old stream's images still in flight are dropped as late, no second reset
            self.tf.clear()
            self.get_logger().warning(
                f"{self.names[cam]}: stamp went backwards by {jump_s:.3f} s (to {item.stamp_ns / 1e9:.3f} s): bag "
                f"loop or replay restart; synchroniser and dynamic TF reset")
        if st is not None:
            st.items[cam] = item
            if st.first_received_ns is None:
                self.policy.new_set(now)
            st.first_received_ns = min(st.first_received_ns or received_ns, received_ns)
            st.last_received_ns = max(st.last_received_ns or received_ns, received_ns)
            if self.policy.stage_now(now):
                self.stager.offer(st, cam)
                for s in ready:  # a complete set's calibration follows its cameras
                    if s.complete and s.ctx is not None:
                        s.ctx.cams = s.present
                        self.stager.offer(s.ctx, s.ctx.calib_job)
        self._submit(ready)

    def _submit(self, ready: list[CameraSet]) -> None:
        for s in ready:
            if s.ctx is not None:
                s.ctx.ready_ns = wall_ns()
            self.worker.submit(s)

    def _new_stage(self) -> SetStage:
        return SetStage(self.p.num_cameras, lambda blocking: self.detector.acquire_slot(self.p.num_cameras, blocking),
                        self.detector.release_slot)

    def _on_info(self, cam: int, msg) -> None:
        self.inputs.on_info(cam, msg)

    def _on_poll(self) -> None:
        with self._lock:
            ready = self.collector.poll(time.monotonic())
        self._submit(ready)

    # -- inference thread ----------------------------------------------------------------------------------------
    def _process(self, cs: CameraSet) -> None:
        st: SetStage = cs.ctx
        t_pick = wall_ns()
        self._current = st
        self.policy.started(time.monotonic())
        try:
            self._run_set(cs, st, t_pick)
        finally:
            self.reception_gate.open()  # normally opened right after the detections were published
            self._current = None
            st.drop()  # the input slot goes back, the raw images are let go
            self.policy.finished(time.monotonic())
            self._free_ns = wall_ns()  # the inference thread is free for the next set

    def _run_set(self, cs: CameraSet, st: SetStage, t_pick: int) -> None:
        p = self.p
        cams = cs.present
        try:
            st.finish(cams, self.inputs.stage_job)  # cameras + calibration: what the staging thread has not done yet
            t_staged = t_calib = wall_ns()
            calib = st.calib
        except ImageError as exc:
            self.stats["input_errors"] += 1
            self._warn("image", str(exc), f"bad image, set skipped: {exc}")
            return
        except CalibrationError as exc:
            self.stats["calibration_errors"] += 1
            self._warn("calibration", str(exc), f"calibration unusable, set skipped: {exc}")
            return
        except self.tf.exceptions as exc:
            self.stats["tf_failures"] += 1
            self._warn("tf", str(exc), f"TF to '{p.target_frame}' unavailable at {cs.stamp_ns / 1e9:.3f} s, set "
                                       f"skipped: {exc}")
            return
        if calib.changed:
            self.stats["calibration_changes"] += 1
        if calib.uncompensated_reason is not None:  # a fixed_frame is configured but not on TF
            self.stats["uncompensated_sets"] += 1
            self._warn("compensation", "", f"ego motion between the cameras not compensated (static extrinsics): "
                                           f"{calib.uncompensated_reason}")
        resets = self.collector.counters.resets  # an int: read without the lock
        if resets != self._history_resets:  # time jumped back: the kept previous frames are not this set's past
            self._history_resets = resets
            self.detector.reset_history()
        det = self.detector.detect_slot(st.slot, cams, calib.Ks, calib.cam2target,
                                        stamp_ns=calib.reference_stamp_ns, ego_pose=calib.ego_pose,
                                        after_forward=self.reception_gate.close)
        t_det = wall_ns()
        if det.missing_prev:
            self.stats["temporal_fallback_sets"] += 1
            self._warn("temporal", "", f"{det.missing_prev} previous frame(s) without history (start-up, a gap, "
                                       f"a reset or no ego pose in '{p.fixed_frame}'): the current frame stands in "
                                       f"for them, as at the start of a training scene")
        if det.nonfinite:
            self.stats["nonfinite"] += det.nonfinite
            self._warn("nonfinite", "", f"{det.nonfinite} candidate boxes with non-finite model outputs dropped "
                                        f"(set at {cs.stamp_ns / 1e9:.3f} s): check the checkpoint", error=True)
        stamp = calib.reference_stamp_ns  # the latest camera's: the frame the boxes are expressed at
        self.out.detections(det, stamp)
        t_pub = wall_ns()
        self.reception_gate.open()
        self.out.others(det, stamp)
        t_end = wall_ns()
        self.stats["published"] += 1
        self.stats["boxes"] += len(det.boxes)
        self._report_times(cs, st, det, t_pick, t_staged, t_calib, t_det, t_pub, t_end, stamp)

    def _report_times(self, cs, st, det, t_pick, t_staged, t_calib, t_det, t_pub, t_end, stamp) -> None:
        """Publish the set's times (:func:`.timing.stage_times`): ``~/debug/stage_times_ms`` (every stage), the
        Autoware-style ``~/debug/processing_time/*_ms`` and ``~/debug/pipeline_latency_ms``."""
        times, timing = stage_times(cs, st, det, t_pick, t_staged, t_calib, t_det, t_pub, t_end, self._free_ns)
        total = timing["total"]
        self.last_timing = timing
        if total > self.p.max_processing_time_ms:
            self.stats["slow"] += 1
        self.out.times(times, timing, stamp)

    def _on_worker_error(self, exc: BaseException) -> None:
        self.stats["failures"] += 1
        self._warn("failure", type(exc).__name__, f"processing failed, set skipped: {type(exc).__name__}: {exc}",
                   error=True)

    def _warn(self, category: str, detail: str, text: str, error: bool = False) -> None:
        """Log ``text`` at most once per THROTTLE_S for each kind of problem (category + what it is about: the
        first 40 characters of the error, which name the camera and field), saying how many were suppressed."""
        suppressed = self._throttle.check(f"{category}:{detail[:40]}", time.monotonic())
        if suppressed is None:
            return
        if suppressed:
            text += f" ({suppressed} similar messages suppressed in the last {THROTTLE_S:.0f} s)"
        if error:  # rclpy ties a severity to each call site: one call per level
            self.get_logger().error(text)
        else:
            self.get_logger().warning(text)

    # -- diagnostics -----------------------------------------------------------------------------------------------
    def _warn_cpu_fallback(self) -> bool:
        """``device: auto`` resolved to the CPU: say so once at start-up (and in every /diagnostics, WARN)."""
        if self.p.device != "auto" or self.detector.device.type == "cuda":
            return False
        import torch

        why = ("this torch is a CPU-only build" if torch.version.cuda is None else
               f"torch (CUDA {torch.version.cuda}) sees no CUDA device: check the driver and CUDA_VISIBLE_DEVICES")
        self.get_logger().warning(
            f"device 'auto' found no CUDA device ({why}): running on the CPU, usually far below the camera rate. "
            f"Fix: install a CUDA build of torch / make the GPU visible, or set device: cpu to run on the CPU on "
            f"purpose (this warning and the diagnostic WARN then go away).")
        return True

    def counters(self) -> dict[str, int]:
        """All cumulative counters (synchroniser, worker, processing)."""
        c = dict(self.collector.counters.as_dict())
        c.update(submitted=self.worker.submitted, superseded=self.worker.superseded, processed=self.worker.processed,
                 staging_jobs_run=self.stager.staged, staging_jobs_skipped=self.stager.skipped)
        for k in ("published", "boxes", "nonfinite", "failures", "tf_failures", "input_errors",
                  "calibration_errors", "calibration_changes", "slow", "markers_published", "markers_unsubscribed",
                  "uncompensated_sets", "temporal_fallback_sets"):
            c[k] = self.stats[k]
        return c

    def _on_diagnostics(self) -> None:
        now = time.monotonic()
        cum = self.counters()
        window = {k: cum[k] - self._window_base.get(k, 0) for k in cum}
        window["dropped"] = window["incomplete_sets"]
        window["partial"] = window["partial_sets"]
        window["late"] = window["late_images"]
        period = max(1e-3, now - self._diag_t)
        self._window_base, self._diag_t = Counter(cum), now
        rates, missing = self._rates.update(now, cum, self.collector.counters.missing_by_camera)
        p = self.p
        level, summary = diagnostics.diagnostic_level(
            window, self.detector is not None, rates=rates, lag_warn_ratio=p.lag_warn_ratio,
            lag_error_ratio=p.lag_error_ratio, cpu_fallback=self.cpu_fallback, missing_cameras=missing)
        ratio = diagnostics.run_ratio(rates)
        span = rates["span_s"]
        values = {"rate_hz": window["published"] / period, "images_per_s": window["images"] / period,
                  "output_rate_hz": rates["published"] / span, "input_set_rate_hz": rates["sets"] / span,
                  "run_ratio": "n/a" if ratio is None else ratio, "superseded_in_window": rates["superseded"],
                  "rate_window_s": span,
                  "missing_cameras": ",".join(missing), "missing_camera_policy": p.missing_camera_policy,
                  "device": str(self.detector.device), "device_requested": p.device,
                  "cpu_fallback": self.cpu_fallback,
                  "marker_subscribers": self.out.markers.get_subscription_count() if self.out.markers else 0,
                  "marker_lifetime_s": self.out.marker_lifetime(),
                  "model": self.detector.describe(), "target_frame": self.p.target_frame,
                  "open_sets": self.collector.open_sets,
                  "reception_holds": self.reception_gate.closures,  # sets whose decoding held image takes back
                  "tf_backend": self.tf.kind, "missing_by_camera": {self.names[i]: n for i, n in
                                                                    self.collector.counters.missing_by_camera.items()}}
        values.update({f"last_{k}_ms": v for k, v in self.last_timing.items()})
        values.update(cum)
        self.out.diag.publish(diagnostics.diagnostic_array(
            f"{self.get_name()}: pipeline", self.get_fully_qualified_name(), level, summary, values,
            self.get_clock().now().to_msg()))

    def shutdown(self) -> None:
        """Stop the inference and staging threads (the item in progress finishes)."""
        self.worker.stop()
        self.stager.stop()


def main(argv: list[str] | None = None) -> int:
    """Console script ``detector_node``. Exit status 2 for a bad parameter, 1 for another start-up failure."""
    if rclpy is None:  # pragma: no cover
        print("labeldistill_detector: rclpy is not importable: source a ROS 2 installation", file=sys.stderr)
        return 1
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        try:
            node = DetectorNode()
        except params.ParamError as exc:
            print(f"labeldistill_detector: cannot start: {exc}", file=sys.stderr, flush=True)
            return 2
        except Exception as exc:  # noqa: BLE001 - checkpoint/config/device errors: one clear line, no traceback
            print(f"labeldistill_detector: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 1
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        return 0
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
