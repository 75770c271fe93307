"""Detections -> ROS messages: ``vision_msgs/Detection3DArray``, optionally
``autoware_perception_msgs/DetectedObjects`` (which carries the velocity), RViz ``MarkerArray``, latched
``LabelInfo`` and ``diagnostic_msgs/DiagnosticArray``.

Conventions (``docs/node.md``, ``geometry.py``): boxes are in ``frame_id`` (the node's ``target_frame``, x forward,
y left, z up, metres); ``header.stamp`` is the source camera set's stamp, never ``now()``; ``bbox.center`` is the
geometric centre with the heading as a yaw quaternion; ``bbox.size`` = (l, w, h) (x along the heading);
``results[0].hypothesis.class_id`` is the nuScenes detection name and ``score`` in [0, 1];
``results[0].pose.pose`` repeats the box pose.
"""
from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

from ..geometry import yaw_to_quat

if TYPE_CHECKING:  # pragma: no cover
    from ..inference import Detections

# nuScenes devkit colours (RGB 0-255) per detection class; unknown names get grey.
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "car": (255, 158, 0), "truck": (255, 99, 71), "construction_vehicle": (233, 150, 70),
    "bus": (255, 69, 0), "trailer": (255, 140, 0), "barrier": (112, 128, 144), "motorcycle": (255, 61, 99),
    "bicycle": (220, 20, 60), "pedestrian": (0, 0, 230), "traffic_cone": (47, 79, 79),
}
_GREY = (160, 160, 160)

# diagnostic_msgs/DiagnosticStatus levels
OK, WARN, ERROR, STALE = b"\x00", b"\x01", b"\x02", b"\x03"


def stamp_msg(stamp_ns: int):
    """``builtin_interfaces/Time`` from integer nanoseconds."""
    from builtin_interfaces.msg import Time

    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nsec)


def _poses(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(N, 3)`` and quaternions ``(N, 4)`` [x, y, z, w] of boxes ``(N, >=7)``."""
    q = yaw_to_quat(boxes[:, 6])  # [w, x, y, z]
    return boxes[:, :3], np.concatenate([q[:, 1:], q[:, :1]], axis=1)


class _PooledBuilder:
    """What the pooled message builders share: one header, a pool of per-box messages grown to the box count,
    and the boxes as plain lists (``_fill`` -> centres, quaternions [x, y, z, w], sizes (l, w, h), scores, names).
    Subclasses set ``self._header`` and implement ``_new()`` (one per-box message)."""

    _header = None
    _pool: list

    def _fill(self, det: "Detections", stamp_ns: int, frame_id: str) -> tuple[int, list, list, list, list, list]:
        self._header.stamp = stamp_msg(stamp_ns)
        self._header.frame_id = frame_id
        boxes = np.asarray(det.boxes, dtype=np.float64)
        n = len(boxes)
        while len(self._pool) < n:
            self._pool.append(self._new())
        if not n:
            return 0, [], [], [], [], []
        centres, quats = _poses(boxes)
        return n, centres.tolist(), quats.tolist(), boxes[:, 3:6].tolist(), det.scores.tolist(), det.names

    def _new(self):  # pragma: no cover - abstract
        raise NotImplementedError


class DetectionArrayBuilder(_PooledBuilder):
    """Builds ``vision_msgs/Detection3DArray`` messages, reusing one pool of ``Detection3D`` objects.

    rclpy serialises a message inside ``publish()``, so the objects can be refilled for the next set once the
    previous array was published; this keeps per-frame allocation to nothing after warm-up (constructing ~15
    rclpy objects per box costs tens of milliseconds for 200 boxes). ``bbox.center`` and
    ``results[0].pose.pose`` share one ``Pose`` object (the same values, serialised twice).
    """

    def __init__(self):
        from std_msgs.msg import Header
        from vision_msgs.msg import Detection3DArray

        self._header = Header()
        self._array = Detection3DArray(header=self._header)
        self._pool: list = []

    def _new(self):
        from geometry_msgs.msg import Pose
        from vision_msgs.msg import Detection3D, ObjectHypothesisWithPose

        d = Detection3D(header=self._header)
        pose = Pose()
        hyp = ObjectHypothesisWithPose()
        hyp.pose.pose = pose
        d.results = [hyp]
        d.bbox.center = pose
        return d

    def build(self, det: "Detections", stamp_ns: int, frame_id: str):
        """The array for ``det`` (boxes already in ``frame_id``); valid until the next call."""
        n, c, q, sz, scores, names = self._fill(det, stamp_ns, frame_id)
        for i in range(n):
            d = self._pool[i]
            h = d.results[0].hypothesis
            h.class_id, h.score = names[i], scores[i]
            pose = d.bbox.center
            p, o = pose.position, pose.orientation
            p.x, p.y, p.z = c[i]
            o.x, o.y, o.z, o.w = q[i]
            s = d.bbox.size
            s.x, s.y, s.z = sz[i]
        self._array.detections = self._pool[:n]
        return self._array


class DetectionArrayWriter:
    """Serializes ``vision_msgs/Detection3DArray`` straight to CDR bytes, for ``Publisher.publish(bytes)``: the
    message :class:`DetectionArrayBuilder` builds, the same length and fields (tested by deserialising; padding
    bytes are zero here, rclpy leaves them uninitialised).

    Filling ~15 rclpy objects per box and letting rclpy convert them reads every field back through Python (about
    0.7 ms for 50 boxes, all of it holding the GIL the node's other threads wait for); here each box is one
    ``struct.pack_into`` of its 54 numbers after a precomputed string prefix. Layout (XCDR1 little endian,
    alignment relative to the payload after the 4-byte encapsulation header): per Detection3D its header (stamp,
    frame_id), one ObjectHypothesisWithPose (class_id, score, pose, a zero covariance), the bbox (centre pose,
    size) and an empty id.
    """

    def __init__(self):
        import struct

        self._u32 = struct.Struct("<I")
        self._stamp = struct.Struct("<iI")
        self._tail: dict[tuple[str, int], tuple[bytes, bytes]] = {}

    @staticmethod
    def _string(s: str) -> bytes:
        b = s.encode("utf-8") + b"\x00"
        return len(b).to_bytes(4, "little") + b

    def _layout(self, name: str, phase: int):
        """(bytes before the score, bytes after the size) of a detection's results + bbox + id starting at an
        offset = ``phase`` mod 8 (past its header)."""
        key = (name, phase)
        hit = self._tail.get(key)
        if hit is None:  # results: 1 element (4-aligned count), class_id, then the 8-aligned doubles
            pre = b"\x00" * ((-phase) % 4) + b"\x01\x00\x00\x00" + self._string(name)
            pad = (-(phase + len(pre))) % 8
            after = phase + len(pre) + pad + 8 * 54  # score, pose, covariance, bbox centre, size (8-aligned)
            hit = self._tail[key] = (pre + b"\x00" * pad, b"\x00" * ((-after) % 4) + self._string(""))
        return hit

    def serialize(self, det: "Detections", stamp_ns: int, frame_id: str) -> bytes:
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        stamp = self._stamp.pack(sec, nsec)
        frame = self._string(frame_id)
        head = stamp + frame  # 4-aligned at every detection start (ints and strings only)
        boxes = np.asarray(det.boxes, dtype=np.float64)
        n = len(boxes)
        out = bytearray(b"\x00\x01\x00\x00")
        out += head
        out += b"\x00" * ((-(len(out) - 4)) % 4) + self._u32.pack(n)
        if n:
            centres, quats = _poses(boxes)
            pose = np.concatenate([centres, quats], axis=1)
            # the 54 doubles of every box at once: score, pose, covariance (0), bbox centre, size
            doubles = np.concatenate([np.asarray(det.scores, dtype=np.float64).reshape(n, 1), pose, np.zeros((n, 36)),
                                      pose, boxes[:, 3:6]], axis=1).astype("<f8").tobytes()
            names = det.names
            size = 8 * 54
            for i in range(n):
                out += b"\x00" * ((-(len(out) - 4)) % 4)
                out += head
                pre, tail = self._layout(names[i], (len(out) - 4) % 8)
                out += pre
                out += doubles[i * size:(i + 1) * size]
                out += tail
        return bytes(out)


class MarkerArrayBuilder:
    """Builds the RViz ``MarkerArray``: a DELETEALL first, then per box a CUBE (namespace = class name, nuScenes
    colour, ``alpha``) and optionally a TEXT_VIEW_FACING label ``'<class> <score>'`` 0.4 m above it (namespace
    ``<class>/label``), all with ``lifetime_s`` (0 = forever; :meth:`set_lifetime` changes it for the next
    arrays). Marker objects are pooled like :class:`DetectionArrayBuilder`."""

    def __init__(self, lifetime_s: float, text: bool = True, alpha: float = 0.45):
        from builtin_interfaces.msg import Duration
        from std_msgs.msg import ColorRGBA, Header
        from visualization_msgs.msg import Marker, MarkerArray

        self._header = Header()
        self._life = Duration()  # one object shared by every pooled marker: set_lifetime updates them all
        self.lifetime_s = 0.0
        self.set_lifetime(lifetime_s)
        self.text = text
        self._colors = {name: ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=alpha)
                        for name, (r, g, b) in CLASS_COLORS.items()}
        self._grey = ColorRGBA(r=_GREY[0] / 255.0, g=_GREY[1] / 255.0, b=_GREY[2] / 255.0, a=alpha)
        self._white = ColorRGBA(r=1.0, g=1.0, b=1.0, a=0.9)
        self._delete_all = Marker(header=self._header, action=Marker.DELETEALL)
        self._array = MarkerArray()
        self._cubes: list = []
        self._labels: list = []

    def set_lifetime(self, lifetime_s: float) -> None:
        """The lifetime of the markers of the next arrays, s (0 = forever)."""
        sec, nsec = divmod(int(round(max(0.0, lifetime_s) * 1e9)), 1_000_000_000)
        self._life.sec, self._life.nanosec = sec, nsec
        self.lifetime_s = sec + nsec / 1e9

    def _marker(self, kind: int):
        from visualization_msgs.msg import Marker

        m = Marker(header=self._header, type=kind, action=Marker.ADD, lifetime=self._life)
        if kind == Marker.TEXT_VIEW_FACING:
            m.scale.z = 0.6
            m.color = self._white
            m.pose.orientation.w = 1.0
        return m

    def build(self, det: "Detections", stamp_ns: int, frame_id: str):
        """The marker array for ``det``; valid until the next call."""
        from visualization_msgs.msg import Marker

        self._header.stamp = stamp_msg(stamp_ns)
        self._header.frame_id = frame_id
        boxes = np.asarray(det.boxes, dtype=np.float64)
        n = len(boxes)
        while len(self._cubes) < n:
            self._cubes.append(self._marker(Marker.CUBE))
            self._labels.append(self._marker(Marker.TEXT_VIEW_FACING))
        markers = [self._delete_all]
        if n:
            centres, quats = _poses(boxes)
            c, q, sz = centres.tolist(), quats.tolist(), boxes[:, 3:6].tolist()
            scores, names = det.scores.tolist(), det.names
            per_class: dict[str, int] = {}
            for i in range(n):
                name = names[i]
                idx = per_class.get(name, 0)
                per_class[name] = idx + 1
                m = self._cubes[i]
                m.ns, m.id = name, idx
                m.lifetime = self._life
                p, o = m.pose.position, m.pose.orientation
                p.x, p.y, p.z = c[i]
                o.x, o.y, o.z, o.w = q[i]
                m.scale.x, m.scale.y, m.scale.z = sz[i]
                m.color = self._colors.get(name, self._grey)
                markers.append(m)
                if self.text:
                    t = self._labels[i]
                    t.ns, t.id = name + "/label", idx
                    t.lifetime = self._life
                    t.text = f"{name} {scores[i]:.2f}"
                    p = t.pose.position
                    p.x, p.y, p.z = c[i][0], c[i][1], c[i][2] + sz[i][2] / 2 + 0.4
                    markers.append(t)
        self._array.markers = markers
        return self._array


# nuScenes detection name -> autoware_perception_msgs/ObjectClassification label. Autoware has no class for
# barriers, traffic cones or construction vehicles: cones and barriers are UNKNOWN (the constants that exist in
# every released version; 1.8+ also has HAZARD), construction vehicles TRUCK.
AUTOWARE_LABELS: dict[str, str] = {
    "car": "CAR", "truck": "TRUCK", "construction_vehicle": "TRUCK", "bus": "BUS", "trailer": "TRAILER",
    "barrier": "UNKNOWN", "motorcycle": "MOTORCYCLE", "bicycle": "BICYCLE", "pedestrian": "PEDESTRIAN",
    "traffic_cone": "UNKNOWN",
}
# DetectedObjectKinematics.orientation_availability per class, as nuScenes scores the heading: not at all for
# traffic cones (round), up to a half turn for barriers, fully for everything else (the model predicts sin and cos).
ORIENTATION: dict[str, str] = {"traffic_cone": "UNAVAILABLE", "barrier": "SIGN_UNKNOWN"}


def velocity_in_object_frame(boxes: np.ndarray) -> np.ndarray:
    """``(N, 2)`` velocity of boxes ``(N, 9)`` (``vx, vy`` in the boxes' frame, m/s) in each object's own frame
    (x along its heading ``yaw``, y to its left): Autoware's convention for ``twist_with_covariance``."""
    c, s_ = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    vx, vy = boxes[:, 7], boxes[:, 8]
    return np.stack([c * vx + s_ * vy, -s_ * vx + c * vy], axis=1)


def velocity_from_object_frame(yaw: np.ndarray, twist_xy: np.ndarray) -> np.ndarray:
    """Inverse of :func:`velocity_in_object_frame`: ``(N, 2)`` twist in the object frame -> ``vx, vy``."""
    c, s_ = np.cos(yaw), np.sin(yaw)
    tx, ty = twist_xy[:, 0], twist_xy[:, 1]
    return np.stack([c * tx - s_ * ty, s_ * tx + c * ty], axis=1)


class DetectedObjectsBuilder(_PooledBuilder):
    """Builds ``autoware_perception_msgs/DetectedObjects`` (pooled like :class:`DetectionArrayBuilder`).

    Per box: ``existence_probability`` = the score, one classification (:data:`AUTOWARE_LABELS`, probability 1.0,
    as Autoware's CenterPoint node), ``kinematics.pose_with_covariance.pose`` = the box centre and heading,
    ``orientation_availability`` (:data:`ORIENTATION`), ``twist_with_covariance.twist.linear`` = the predicted
    velocity in the object's frame (:func:`velocity_in_object_frame`; ``has_twist`` true), ``shape`` a
    BOUNDING_BOX with ``dimensions`` = (l, w, h). The model predicts no uncertainty: both covariances stay zero
    with ``has_position_covariance`` and ``has_twist_covariance`` false.
    """

    def __init__(self):
        from autoware_perception_msgs.msg import DetectedObjectKinematics, DetectedObjects, ObjectClassification
        from std_msgs.msg import Header

        self._header = Header()
        self._array = DetectedObjects(header=self._header)
        self._pool: list = []
        self._labels = {n: getattr(ObjectClassification, lab) for n, lab in AUTOWARE_LABELS.items()}
        self._unknown = ObjectClassification.UNKNOWN
        self._orient = {n: getattr(DetectedObjectKinematics, v) for n, v in ORIENTATION.items()}
        self._available = DetectedObjectKinematics.AVAILABLE

    def _new(self):
        from autoware_perception_msgs.msg import DetectedObject, ObjectClassification, Shape

        o = DetectedObject()
        o.classification = [ObjectClassification(probability=1.0)]
        o.shape.type = Shape.BOUNDING_BOX
        o.kinematics.has_twist = True
        return o

    def build(self, det: "Detections", stamp_ns: int, frame_id: str):
        """The message for ``det`` (boxes in ``frame_id``); valid until the next call."""
        n, c, q, sz, scores, names = self._fill(det, stamp_ns, frame_id)
        v = velocity_in_object_frame(np.asarray(det.boxes, dtype=np.float64)).tolist() if n else []
        for i in range(n):
            o = self._pool[i]
            name = names[i]
            o.existence_probability = scores[i]
            o.classification[0].label = self._labels.get(name, self._unknown)
            k = o.kinematics
            k.orientation_availability = self._orient.get(name, self._available)
            pose = k.pose_with_covariance.pose
            p, r = pose.position, pose.orientation
            p.x, p.y, p.z = c[i]
            r.x, r.y, r.z, r.w = q[i]
            lin = k.twist_with_covariance.twist.linear
            lin.x, lin.y = v[i]
            d = o.shape.dimensions
            d.x, d.y, d.z = sz[i]
        self._array.objects = self._pool[:n]
        return self._array


MARKER_PERIODS = 3.0  # markers live this many measured output periods (at least marker_lifetime_s)


def marker_lifetime(configured_s: float, output_times_s: Sequence[float], periods: float = MARKER_PERIODS) -> float:
    """Lifetime of the next markers, s: ``max(configured_s, periods x the median interval of output_times_s)``
    (monotonic times of the latest outputs); ``configured_s`` until two outputs were seen; 0 (forever) stays 0.

    Every array starts with a DELETEALL, so boxes are replaced by the next output whatever their lifetime; the
    lifetime only decides how long the last boxes stay once the output stops. A fixed short lifetime makes boxes
    blink at low output rates (a CPU at 1 Hz shows them 0.25 s of every second); the median ignores a single
    long gap (cameras paused, a bag restarted).
    """
    if configured_s <= 0.0:
        return 0.0
    t = list(output_times_s)
    if len(t) < 2:
        return float(configured_s)
    return max(float(configured_s), periods * statistics.median(b - a for a, b in zip(t, t[1:])))


def detection_array(det: "Detections", stamp_ns: int, frame_id: str):
    """A new ``vision_msgs/Detection3DArray`` of ``det`` (see :class:`DetectionArrayBuilder` for the fast path)."""
    return DetectionArrayBuilder().build(det, stamp_ns, frame_id)


def marker_array(det: "Detections", stamp_ns: int, frame_id: str, lifetime_s: float, text: bool = True):
    """A new RViz ``MarkerArray`` of ``det`` (see :class:`MarkerArrayBuilder`)."""
    return MarkerArrayBuilder(lifetime_s, text).build(det, stamp_ns, frame_id)


def label_info(class_names: Iterable[str], threshold: float, stamp_ns: int = 0, frame_id: str = ""):
    """``vision_msgs/LabelInfo``: class id i -> name (publish once, transient-local)."""
    from std_msgs.msg import Header
    from vision_msgs.msg import LabelInfo, VisionClass

    return LabelInfo(header=Header(stamp=stamp_msg(stamp_ns), frame_id=frame_id),
                     class_map=[VisionClass(class_id=i, class_name=n) for i, n in enumerate(class_names)],
                     threshold=float(threshold))


MIN_LAG_SETS = 5  # fewer camera sets in the rate window: too few to judge the lag


def run_ratio(rates: Mapping[str, float]) -> float | None:
    """Share of the camera sets handed to inference over the rate window that were run, i.e. not superseded by a
    newer set while the model was busy (``rates``: ``sets``, ``superseded``); None below :data:`MIN_LAG_SETS`."""
    sets = rates.get("sets", 0)
    if sets < MIN_LAG_SETS:
        return None
    return max(0.0, sets - rates.get("superseded", 0)) / sets


def diagnostic_level(window: Mapping[str, float], model_ready: bool, *, rates: Mapping[str, float] | None = None,
                     lag_warn_ratio: float = 0.8, lag_error_ratio: float = 0.25, cpu_fallback: bool = False,
                     missing_cameras: Mapping[str, int] | None = None) -> tuple[bytes, str]:
    """Level and one-line summary of one diagnostics period.

    ``window`` holds counts since the previous report: ``nonfinite`` (boxes with NaN/inf dropped),
    ``failures`` (processing errors), ``tf_failures``, ``input_errors``, ``dropped`` (incomplete sets),
    ``partial`` (sets run without some cameras), ``late``, ``slow`` (sets above max_processing_time_ms),
    ``uncompensated_sets`` (cameras not moved to the reference stamp: no ``fixed_frame`` on TF),
    ``temporal_fallback_sets`` (a temporal model's previous frames without history),
    ``published`` and ``images``. ``rates`` holds counts over the longer rate window (``rate_window_s``):
    ``sets`` (camera sets handed to inference), ``superseded`` (of those, replaced by a newer set before the model
    took them), ``published`` and ``span_s``. ``missing_cameras``: camera name -> sets it was missing from over
    the rate window. ``cpu_fallback``: ``device: auto`` found no CUDA device.

    ERROR: no model, non-finite outputs, processing errors, or fewer than ``lag_error_ratio`` of the sets run
    (:func:`run_ratio`). WARN: TF failures, bad inputs, dropped/partial sets, slow processing, uncompensated or
    history-less sets, images arriving but nothing published, fewer than ``lag_warn_ratio`` of the sets run,
    missing cameras, the CPU fallback. A ratio of 0 disables its check. The summary lists every problem of the
    period (errors first).
    """
    g = lambda k: window.get(k, 0)  # noqa: E731
    if not model_ready:
        return ERROR, "model not loaded"
    errors = []
    if g("nonfinite"):
        errors.append(f"{g('nonfinite'):.0f} non-finite model outputs dropped")
    if g("failures"):
        errors.append(f"{g('failures'):.0f} processing failures")
    warns = []
    for key, text in (("tf_failures", "TF lookups failed"), ("input_errors", "bad input messages"),
                      ("calibration_errors", "bad CameraInfo"), ("dropped", "incomplete sets dropped"),
                      ("partial", "sets run without some cameras"), ("slow", "sets over max_processing_time_ms"),
                      ("uncompensated_sets", "sets without ego-motion compensation (fixed_frame not on TF: static "
                                             "extrinsics)"),
                      ("temporal_fallback_sets", "sets whose previous frames had no history (current frame used)")):
        if g(key):
            warns.append(f"{g(key):.0f} {text}")
    if g("images") and not g("published") and not warns and not errors:
        warns.append("images arrive but no set was published")
    ratio = run_ratio(rates or {})
    if ratio is not None and (ratio < lag_error_ratio or ratio < lag_warn_ratio):
        r = rates
        span = max(1e-3, r.get("span_s", 0.0))
        text = (f"inference lags the cameras: {ratio:.0%} of {r['sets']:.0f} sets run over {span:.1f} s "
                f"({r.get('superseded', 0):.0f} superseded by newer sets; output {r.get('published', 0) / span:.1f} "
                f"Hz, camera sets {r['sets'] / span:.1f} Hz)")
        (errors if ratio < lag_error_ratio else warns).append(text)
    if missing_cameras:
        span = (rates or {}).get("span_s", 0.0)
        names = ", ".join(f"{name} ({n:.0f})" for name, n in missing_cameras.items())
        warns.append(f"cameras missing from sets in the last {span:.1f} s (sets): {names}")
    if cpu_fallback:
        warns.append("device auto found no CUDA device: running on the CPU")
    if errors:
        return ERROR, "; ".join(errors + warns)
    if warns:
        return WARN, "; ".join(warns)
    if not g("images"):
        return OK, "waiting for images"
    return OK, "running"


def diagnostic_array(name: str, hardware_id: str, level: bytes, message: str, values: Mapping[str, object],
                     stamp):
    """``diagnostic_msgs/DiagnosticArray`` with one status; ``values`` become key/value strings."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from std_msgs.msg import Header

    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()])
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
