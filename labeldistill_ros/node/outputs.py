"""What the node publishes, and on which topics (``~`` = the node's name): detections -> messages -> publishers.

    ``~/output/detections``  vision_msgs/Detection3DArray (CDR bytes written directly: messages.DetectionArrayWriter)
    ``~/output/objects``     autoware_perception_msgs/DetectedObjects (``publish_objects``: carries the velocity)
    ``~/output/markers``     visualization_msgs/MarkerArray (``publish_markers``; built only while subscribed)
    ``~/output/label_info``  vision_msgs/LabelInfo (latched, published once)
    ``/diagnostics``         diagnostic_msgs/DiagnosticArray
    ``~/debug/processing_time/{preprocess,inference,postprocess,total}_ms``, ``~/debug/pipeline_latency_ms``
                             std_msgs/Float64
    ``~/debug/stage_times_ms`` diagnostic_msgs/DiagnosticStatus (:func:`.timing.stage_times`)
"""
from __future__ import annotations

import time
from collections import deque
from typing import Mapping

from . import messages, params


def qos(reliability: str, depth: int, transient_local: bool = False):
    """rclpy ``QoSProfile``: keep-last ``depth``, ``reliability`` 'best_effort' or 'reliable', volatile unless
    ``transient_local`` (latched)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE)


class Outputs:
    """The node's publishers (module docstring) and the message builders they reuse. ``stats`` (the node's event
    counter) counts the markers published and skipped. Raises :class:`params.ParamError` when ``publish_objects``
    is set without autoware_perception_msgs."""

    def __init__(self, node, p, class_names, stats):
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
        from std_msgs.msg import Float64
        from vision_msgs.msg import Detection3DArray, LabelInfo
        from visualization_msgs.msg import MarkerArray

        self.node, self.p, self.stats = node, p, stats
        out_qos = qos(p.output_reliability, p.output_depth)
        self._det_writer = messages.DetectionArrayWriter()
        self._marker_builder = messages.MarkerArrayBuilder(p.marker_lifetime_s, p.marker_text)  # built on demand
        self.output_times: deque = deque(maxlen=9)  # monotonic times of the latest outputs (marker lifetime)
        self.det = node.create_publisher(Detection3DArray, "~/output/detections", out_qos)
        self.objects = None
        if p.publish_objects:
            try:
                from autoware_perception_msgs.msg import DetectedObjects
            except ImportError as exc:
                raise params.ParamError(
                    "parameter 'publish_objects' = True needs autoware_perception_msgs, which is not importable. "
                    "Fix: install it (ros-<distro>-autoware-perception-msgs, or tools/setup_env.py without a ROS "
                    "install) or set publish_objects: false") from exc
            self._objects_builder = messages.DetectedObjectsBuilder()
            self.objects = node.create_publisher(DetectedObjects, "~/output/objects", out_qos)
        self.markers = node.create_publisher(MarkerArray, "~/output/markers", out_qos) if p.publish_markers else None
        self.labels = node.create_publisher(LabelInfo, "~/output/label_info", qos("reliable", 1, True))
        self.diag = node.create_publisher(DiagnosticArray, "/diagnostics", qos("reliable", 10))
        dbg = qos("reliable", 10)
        self.time = {k: node.create_publisher(Float64, f"~/debug/processing_time/{k}_ms", dbg)
                     for k in ("preprocess", "inference", "postprocess", "total")}
        self.latency = node.create_publisher(Float64, "~/debug/pipeline_latency_ms", dbg)
        self.stages = node.create_publisher(DiagnosticStatus, "~/debug/stage_times_ms", dbg)
        self.labels.publish(messages.label_info(class_names, p.score_threshold))

    def describe(self) -> str:
        return f"detections{', objects' if self.objects else ''}{', markers' if self.markers else ''}"

    def detections(self, det, stamp_ns: int) -> None:
        """The Detection3DArray (CDR bytes, no rclpy objects), stamped ``stamp_ns`` in ``target_frame``."""
        self.det.publish(self._det_writer.serialize(det, stamp_ns, self.p.target_frame))

    def others(self, det, stamp_ns: int) -> None:
        """The DetectedObjects (when enabled) and the markers of the same detections."""
        if self.objects is not None:
            self.objects.publish(self._objects_builder.build(det, stamp_ns, self.p.target_frame))
        self._markers(det, stamp_ns)

    def _markers(self, det, stamp_ns: int) -> None:
        """Markers, built only while someone subscribes; their lifetime follows the measured output period
        (:func:`messages.marker_lifetime`)."""
        self.output_times.append(time.monotonic())
        if self.markers is None:
            return
        if self.markers.get_subscription_count() == 0:
            self.stats["markers_unsubscribed"] += 1
            return
        self._marker_builder.set_lifetime(self.marker_lifetime())
        self.markers.publish(self._marker_builder.build(det, stamp_ns, self.p.target_frame))
        self.stats["markers_published"] += 1

    def marker_lifetime(self) -> float:
        return messages.marker_lifetime(self.p.marker_lifetime_s, self.output_times.copy())

    def times(self, times: Mapping[str, float], timing: Mapping[str, float], stamp_ns: int) -> None:
        """A set's times (:func:`.timing.stage_times`) and its latency (node clock now - ``stamp_ns``)."""
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
        from std_msgs.msg import Float64

        for k, pub in self.time.items():
            pub.publish(Float64(data=float(timing[k])))
        latency_ms = (self.node.get_clock().now().nanoseconds - stamp_ns) / 1e6
        self.latency.publish(Float64(data=float(latency_ms)))
        self.stages.publish(DiagnosticStatus(
            name="stage_times_ms", hardware_id=self.node.get_fully_qualified_name(),
            message=f"{stamp_ns}", values=[KeyValue(key=k, value=f"{v:.4f}") for k, v in times.items()]))
