"""Detections -> ROS messages: ``vision_msgs/Detection3DArray``, optionally
``autoware_perception_msgs/DetectedObjects`` (which carries the velocity), RViz ``MarkerArray`` and latched
``LabelInfo`` (stamps, the twist and the class colours through :mod:`labeldistill_ros.ros_convert`; the
``/diagnostics`` message is in :mod:`.diagnostics`).

Conventions (``docs/node.md``, :mod:`labeldistill_ros.geometry`): boxes are in ``frame_id`` (the node's
``target_frame``, x forward, y left, z up, metres); ``header.stamp`` is the source camera set's stamp, never
``now()``; ``bbox.center`` is the geometric centre with the heading as a yaw quaternion; ``bbox.size`` = (l, w, h)
(x along the heading); ``results[0].hypothesis.class_id`` is the nuScenes detection name and ``score`` in [0, 1];
``results[0].pose.pose`` repeats the box pose.
"""
from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from ..geometry import yaw_to_quat
from ..ros_convert import class_rgb, split_ns, stamp_msg, velocity_in_object_frame

if TYPE_CHECKING:  # pragma: no cover
    from ..inference import Detections


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
        stamp = self._stamp.pack(*split_ns(stamp_ns))
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
        self._alpha = alpha
        self._colors: dict[str, object] = {}  # class name -> ColorRGBA (ros_convert.class_rgb), made on first use
        self._white = ColorRGBA(r=1.0, g=1.0, b=1.0, a=0.9)
        self._delete_all = Marker(header=self._header, action=Marker.DELETEALL)
        self._array = MarkerArray()
        self._cubes: list = []
        self._labels: list = []

    def set_lifetime(self, lifetime_s: float) -> None:
        """The lifetime of the markers of the next arrays, s (0 = forever)."""
        sec, nsec = split_ns(round(max(0.0, lifetime_s) * 1e9))
        self._life.sec, self._life.nanosec = sec, nsec
        self.lifetime_s = sec + nsec / 1e9

    def _color(self, name: str):
        from std_msgs.msg import ColorRGBA

        r, g, b = class_rgb(name)
        c = self._colors[name] = ColorRGBA(r=r, g=g, b=b, a=self._alpha)
        return c

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
                m.color = self._colors.get(name) or self._color(name)
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
