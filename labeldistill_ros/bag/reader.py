"""Read the project's rosbag2 conventions (see :mod:`labeldistill_ros.bag`) with ``rosbags``: no ROS needed.

Everything a bag holds comes back as numpy in the frames it was recorded in:

* calibration: ``sensor -> base_link`` 4x4 transforms from ``/tf_static`` (metres);
* ego poses: ``base_link -> map`` 4x4 at any stamp, interpolated between ``/tf`` samples (linear translation,
  slerp rotation) - :class:`~labeldistill_ros.ros_convert.PoseTrajectory`;
* cameras: K (3x3, pixels) and image size from ``/CAM_X/camera_info``; images as JPEG bytes or decoded
  ``(H, W, 3)`` uint8 RGB;
* boxes: project layout ``(N, 9)`` ``x, y, z, l, w, h, yaw, vx, vy`` in the message's frame (``base_link``),
  metres / radians / m/s (:mod:`.detections`).

Message fields are read with :mod:`labeldistill_ros.ros_convert` (stamps, transforms, images).

Stamps are integers in nanoseconds (header stamps = dataset time). A bag that cannot be read (missing or
corrupted ``metadata.yaml``, truncated or corrupted storage file, undecodable message) raises
:class:`BagError`, whose message names the file and the problem.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..ros_convert import PoseTrajectory, decode_compressed, decode_image, stamp_to_ns, transform_to_matrix
from .detections import BoxFrame, detections_from_msg, velocities_from_objects
from .typestore import typestore

GT_DETECTIONS = "/ground_truth/detections"
GT_SAMPLE_TOKEN = "/ground_truth/sample_token"
GT_VELOCITIES = "/ground_truth/velocities"
GT_MARKERS = "/ground_truth/markers"
TF = "/tf"
TF_STATIC = "/tf_static"
MAP_FRAME = "map"
BASE_FRAME = "base_link"


class BagError(RuntimeError):
    """A bag that cannot be read as recorded; the message names the file and what is wrong."""


# --------------------------------------------------------------------------------------------------------------
# Decoded content
# --------------------------------------------------------------------------------------------------------------
@dataclass
class CameraInfo:
    """Intrinsics of one camera: ``K`` (3, 3) pixels, image ``width``/``height`` pixels, optical ``frame_id``."""

    K: np.ndarray
    width: int
    height: int
    frame_id: str


@dataclass
class ImageMsg:
    """One camera image as recorded: ``data`` is the JPEG/PNG bytes (``compressed``) or ``(H, W, 3)`` RGB uint8."""

    camera: str
    stamp_ns: int
    frame_id: str
    compressed: bool
    data: Any
    encoding: str = ""

    def rgb(self) -> np.ndarray:
        """The image as ``(H, W, 3)`` uint8 RGB (decoding compressed bytes with OpenCV, else Pillow)."""
        if not self.compressed:
            return self.data
        return decode_compressed(self.data, self.camera, self.encoding)


class StaticTimeline:
    """The ``/tf_static`` state over receive time: ``at(t_ns)`` is the accumulated state after the last message
    received at or before ``t_ns`` (the first state before any; ``{}`` if the bag has none)."""

    def __init__(self, stamps_ns: list[int], states: list[dict]):
        self.stamps, self.states = stamps_ns, states

    def at(self, t_ns: int | None = None) -> dict[str, tuple[str, np.ndarray]]:
        if not self.states:
            return {}
        if t_ns is None:
            return self.states[-1]
        i = bisect.bisect_right(self.stamps, t_ns) - 1
        return self.states[max(i, 0)]


def image_from_msg(camera: str, msg, compressed: bool) -> ImageMsg:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8; decoded to RGB, an array of its own) or CompressedImage
    (the bytes kept) -> :class:`ImageMsg`; :class:`~labeldistill_ros.ros_convert.ImageError` when malformed."""
    stamp = stamp_to_ns(msg.header.stamp)
    if compressed:
        return ImageMsg(camera, stamp, msg.header.frame_id, True, np.asarray(msg.data, np.uint8).tobytes(),
                        msg.format)
    rgb = decode_image(msg, f"{camera} image")
    return ImageMsg(camera, stamp, msg.header.frame_id, False, rgb if rgb.flags.owndata else rgb.copy(),
                    msg.encoding)


# --------------------------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------------------------
class BagReader:
    """Read a rosbag2 (MCAP or sqlite3) written with the project's conventions.

    Use as a context manager or call :meth:`close`. All iteration happens in bag (receive-time) order.
    """

    def __init__(self, path: str | Path):
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"{self.path}: no such bag (expected a rosbag2 folder with metadata.yaml)")
        self.ts = typestore()
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:  # noqa: BLE001 - rosbags raises several kinds; all mean "unreadable"
            raise BagError(f"{self._describe()}: cannot open the bag: {type(exc).__name__}: {exc}") from exc
        self.connections = list(self._reader.connections)
        self._by_topic: dict[str, list] = {}
        for c in self.connections:
            self._by_topic.setdefault(c.topic, []).append(c)

    def _describe(self) -> str:
        """The bag named by its storage file(s), e.g. ``run1/run1.mcap`` (the folder alone if none)."""
        files = sorted(str(p) for p in self.path.glob("*") if p.suffix in (".mcap", ".db3"))
        return ", ".join(files) if files else str(self.path)

    # -- basics ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        try:
            self._reader.close()
        except Exception:  # noqa: BLE001 - closing a broken bag must not hide the original error
            pass

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def topics(self) -> dict[str, tuple[str, int]]:
        """``{topic: (msgtype, message count)}``."""
        return {t: (cs[0].msgtype, sum(c.msgcount for c in cs)) for t, cs in self._by_topic.items()}

    def has_topic(self, topic: str) -> bool:
        return topic in self._by_topic

    def qos(self, topic: str) -> list:
        """The recorded ``offered_qos_profiles`` (rosbags ``Qos`` tuples) of ``topic``."""
        cs = self._by_topic.get(topic, [])
        return list(cs[0].ext.offered_qos_profiles) if cs else []

    @property
    def start_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def end_ns(self) -> int:
        """Receive time of the last message, ns (rosbags' ``end_time`` is one past it)."""
        return int(self._reader.end_time) - 1

    def raw_messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[Any, int, bytes]]:
        """``(connection, receive_ns, cdr bytes)`` in receive-time order; ``topics=None`` means all."""
        conns = self.connections if topics is None else [c for t in topics for c in self._by_topic.get(t, [])]
        if not conns:
            return
        it = self._reader.messages(connections=conns)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001
                raise BagError(f"{self._describe()}: storage is truncated or corrupted: "
                               f"{type(exc).__name__}: {exc}") from exc
            yield item

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, int, Any]]:
        """``(topic, receive_ns, deserialised message)`` in receive-time order."""
        for conn, t, raw in self.raw_messages(topics):
            try:
                msg = self.ts.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001
                raise BagError(f"{self._describe()}: message on {conn.topic} at {t} ns is corrupted "
                               f"({conn.msgtype}): {type(exc).__name__}: {exc}") from exc
            yield conn.topic, t, msg

    def check(self) -> int:
        """Read every message once (deserialising it); returns the count. Raises :class:`BagError` on damage."""
        n = 0
        for _ in self.messages():
            n += 1
        expected = sum(c.msgcount for c in self.connections)
        if expected and n != expected:
            raise BagError(f"{self._describe()}: metadata.yaml lists {expected} messages but the storage holds "
                           f"{n}: the bag is truncated")
        return n

    # -- calibration and poses ---------------------------------------------------------------------------------
    def static_transforms(self, at_ns: int | None = None) -> dict[str, tuple[str, np.ndarray]]:
        """``{child_frame: (parent_frame, child -> parent 4x4)}`` from ``/tf_static`` as a subscriber holds it at
        receive time ``at_ns`` (later messages override earlier ones, as tf2 does; ``None``: the end of the bag).

        A bag of several scenes re-sends the calibration at each scene start, so ``at_ns`` selects the scene's.
        """
        return self.static_timeline().at(at_ns)

    def static_timeline(self) -> "StaticTimeline":
        """Every ``/tf_static`` message in receive order (:class:`StaticTimeline`)."""
        stamps, states, cur = [], [], {}
        for _, t, msg in self.messages([TF_STATIC]):
            cur = dict(cur)
            for tf in msg.transforms:
                cur[tf.child_frame_id] = (tf.header.frame_id, transform_to_matrix(tf))
            stamps.append(t)
            states.append(cur)
        return StaticTimeline(stamps, states)

    def sensor_to_base(self, frame: str, base: str = BASE_FRAME) -> np.ndarray:
        """``frame -> base`` 4x4 by chaining ``/tf_static`` (raises ``LookupError`` if not connected)."""
        return chain_static(self.static_transforms(), frame, base)

    def trajectory(self, parent: str = MAP_FRAME, child: str = BASE_FRAME,
                   max_extrapolation_ns: int = 100_000_000) -> PoseTrajectory:
        """``child -> parent`` poses from ``/tf`` (default ``base_link -> map``, the ego pose), interpolated; a stamp
        up to ``max_extrapolation_ns`` outside the recorded span gets the end pose."""
        stamps, mats = [], []
        for _, _, msg in self.messages([TF]):
            for tf in msg.transforms:
                if tf.header.frame_id == parent and tf.child_frame_id == child:
                    stamps.append(stamp_to_ns(tf.header.stamp))
                    mats.append(transform_to_matrix(tf))
        return PoseTrajectory(stamps, mats, max_extrapolation_ns)

    # -- cameras -----------------------------------------------------------------------------------------------
    def camera_topics(self) -> dict[str, tuple[str, bool]]:
        """``{camera: (image topic, compressed)}`` for every ``/<camera>/image[/compressed]`` in the bag
        (compressed preferred when both are recorded)."""
        out: dict[str, tuple[str, bool]] = {}
        for topic, cs in self._by_topic.items():
            parts = topic.strip("/").split("/")
            if cs[0].msgtype == "sensor_msgs/msg/CompressedImage" and parts[1:] == ["image", "compressed"]:
                out[parts[0]] = (topic, True)
            elif cs[0].msgtype == "sensor_msgs/msg/Image" and parts[1:] == ["image"]:
                out.setdefault(parts[0], (topic, False))
        return out

    def camera_infos(self) -> dict[str, CameraInfo]:
        """``{camera: CameraInfo}`` from ``/<camera>/camera_info`` (the last message of each)."""
        out: dict[str, CameraInfo] = {}
        topics = [t for t in self._by_topic if t.endswith("/camera_info")]
        for topic, _, msg in self.messages(topics):
            cam = topic.strip("/").split("/")[0]
            out[cam] = CameraInfo(np.asarray(msg.k, dtype=np.float64).reshape(3, 3), int(msg.width),
                                  int(msg.height), msg.header.frame_id)
        return out

    def images(self, cameras: Sequence[str] | None = None, compressed: bool | None = None) -> Iterator[ImageMsg]:
        """Camera images in bag order. ``compressed`` forces the topic kind (None: as :meth:`camera_topics`)."""
        avail = self.camera_topics()
        cams = list(cameras) if cameras is not None else list(avail)
        topic_to_cam: dict[str, tuple[str, bool]] = {}
        for cam in cams:
            if compressed is None:
                if cam not in avail:
                    raise BagError(f"{self.path}: no image topic for camera {cam} (have {sorted(avail)})")
                topic, comp = avail[cam]
            else:
                topic, comp = (f"/{cam}/image/compressed", True) if compressed else (f"/{cam}/image", False)
                if topic not in self._by_topic:
                    raise BagError(f"{self.path}: topic {topic} is not in the bag")
            topic_to_cam[topic] = (cam, comp)
        for topic, _, msg in self.messages(topic_to_cam):
            cam, comp = topic_to_cam[topic]
            yield image_from_msg(cam, msg, comp)

    # -- boxes -------------------------------------------------------------------------------------------------
    def ground_truth(self, max_skew_ns: int = 200_000_000) -> list[BoxFrame]:
        """Ground-truth frames (key frames) with sample token and velocities, in stamp order.

        The token (std_msgs/String) and velocities (Float64MultiArray) have no header: each joins the
        Detection3DArray nearest in receive time (equal in a bag from labeldistill-nusc2bag; within
        ``max_skew_ns`` in a bag re-recorded from a replay with ``ros2 bag record``).
        """
        if GT_DETECTIONS not in self._by_topic:
            raise BagError(f"{self.path}: no {GT_DETECTIONS} topic (not written by labeldistill-nusc2bag?)")
        side: dict[str, tuple[list[int], list[Any]]] = {GT_SAMPLE_TOKEN: ([], []), GT_VELOCITIES: ([], [])}
        dets: list[tuple[int, Any]] = []
        for topic, t, msg in self.messages([GT_DETECTIONS, GT_SAMPLE_TOKEN, GT_VELOCITIES]):
            if topic == GT_DETECTIONS:
                dets.append((t, msg))
            else:
                side[topic][0].append(t)
                side[topic][1].append(msg.data if topic == GT_SAMPLE_TOKEN
                                      else np.asarray(msg.data, dtype=np.float64).reshape(-1, 2))

        def near(topic: str, t: int):
            ts, vals = side[topic]
            i = nearest_index(ts, t)
            return vals[i] if i >= 0 and abs(ts[i] - t) <= max_skew_ns else None

        frames = []
        for t, msg in dets:
            v = near(GT_VELOCITIES, t)
            f = detections_from_msg(msg, v if v is not None and len(v) == len(msg.detections) else None)
            f.sample_token = near(GT_SAMPLE_TOKEN, t) or ""
            f.receive_ns = t
            frames.append(f)
        frames.sort(key=lambda f: f.stamp_ns)
        return frames

    def objects(self, topic: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Every autoware_perception_msgs/DetectedObjects on ``topic`` as :func:`velocities_from_objects`."""
        if topic not in self._by_topic:
            raise BagError(f"{self.path}: topic {topic} is not in the bag (have {sorted(self._by_topic)})")
        return [velocities_from_objects(msg) for _, _, msg in self.messages([topic])]

    def detections(self, topic: str) -> list[BoxFrame]:
        """Every Detection3DArray on ``topic`` (receive time kept in ``receive_ns``), in bag order."""
        if topic == GT_DETECTIONS:
            return self.ground_truth()
        if topic not in self._by_topic:
            raise BagError(f"{self.path}: topic {topic} is not in the bag (have {sorted(self._by_topic)})")
        out = []
        for _, t, msg in self.messages([topic]):
            f = detections_from_msg(msg)
            f.receive_ns = t
            out.append(f)
        return out


def chain_static(static: dict[str, tuple[str, np.ndarray]], source: str, target: str) -> np.ndarray:
    """``source -> target`` 4x4 by walking ``{child: (parent, child -> parent)}`` upwards from ``source``
    (``target`` must be an ancestor, e.g. ``CAM_FRONT`` -> ``base_link``); ``LookupError`` otherwise."""
    T, cur = np.eye(4), source
    for _ in range(64):
        if cur == target:
            return T
        if cur not in static:
            break
        parent, M = static[cur]
        T, cur = M @ T, parent
    raise LookupError(f"no /tf_static chain from '{source}' to '{target}'")


def nearest_index(stamps_ns: Sequence[int], t_ns: int) -> int:
    """Index of the stamp in sorted ``stamps_ns`` nearest to ``t_ns`` (-1 if empty)."""
    if not len(stamps_ns):
        return -1
    i = bisect.bisect_left(stamps_ns, t_ns)
    if i == 0:
        return 0
    if i == len(stamps_ns):
        return len(stamps_ns) - 1
    return i if stamps_ns[i] - t_ns < t_ns - stamps_ns[i - 1] else i - 1


__all__ = ["BagError", "BagReader", "CameraInfo", "ImageMsg", "StaticTimeline", "chain_static", "image_from_msg",
           "nearest_index"]
