"""ROS messages <-> numpy: the one place that reads and builds stamps, transforms, poses over time, images, the
Autoware twist and the class colours, for the node, the bag tools, the training tools (nusc2bag, bag_eval), the
benchmarks and the tests.

Reading works on anything with the message's fields (rclpy messages, ``rosbags`` dataclasses). Building takes
``types``: ``None`` for the rclpy classes (imported when first used), or a ``rosbags`` typestore's ``types``
mapping (``'geometry_msgs/msg/TransformStamped' -> class``), so the bag tools build bag messages without rclpy.
This module imports neither rclpy nor OpenCV at import time.

Units and frames (:mod:`labeldistill_ros.geometry` holds the project's conventions):

* stamps: ``builtin_interfaces/Time`` (``sec`` int32, ``nanosec`` in [0, 1e9)) <-> integer nanoseconds
  (``stamp_ns``) of the same clock (ROS time, or the dataset time in a bag);
* transforms: ``geometry_msgs/TransformStamped`` (``header.frame_id`` = parent, ``child_frame_id`` = child,
  translation in metres, rotation quaternion x, y, z, w) <-> 4x4 ``T_child2parent`` (float64), which maps points
  in the child frame into the parent frame; numpy quaternions are [w, x, y, z] as in ``geometry``;
* poses over time: :class:`PoseTrajectory` (linear translation, slerp rotation; nanosecond stamps);
* images: ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) and ``CompressedImage`` (JPEG/PNG) ->
  ``(H, W, 3) uint8 RGB``; malformed messages raise :class:`ImageError` naming the field and the fix. (The node
  picks cv_bridge or these decoders in :mod:`labeldistill_ros.node.ros_compat`.)
* Autoware twist: velocity ``(vx, vy)`` in the boxes' frame <-> the object frame (x along the heading, y left);
* class colours: one RGB table for every marker (node, ground truth in bags).
"""
from __future__ import annotations

import bisect
import importlib
from typing import Any, Mapping, Sequence

import numpy as np

from .geometry import make_transform, matrix_to_quat, slerp_quat

NS_PER_S = 1_000_000_000


def msg_type(name: str, types: Mapping[str, Any] | None = None):
    """The message class ``name`` (``'pkg/msg/Type'``): from ``types`` (a rosbags typestore's ``types``) or, for
    ``None``, the rclpy class ``pkg.msg.Type`` (an ``ImportError`` naming the package when it is not installed)."""
    if types is not None:
        return types[name]
    pkg, _, cls = name.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), cls)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"message type {name} is not installed for rclpy ({exc}); install {pkg}") from exc


# --------------------------------------------------------------------------------------------------------------
# Stamps
# --------------------------------------------------------------------------------------------------------------
def stamp_to_ns(stamp: Any) -> int:
    """Integer nanoseconds of ``builtin_interfaces/Time`` (``sec``, ``nanosec``), an rclpy ``Time``
    (``nanoseconds``), an int (already nanoseconds) or ``None`` (0: tf2's "latest")."""
    if stamp is None:
        return 0
    if isinstance(stamp, (int, np.integer)):
        return int(stamp)
    if hasattr(stamp, "nanoseconds"):
        return int(stamp.nanoseconds)
    if hasattr(stamp, "sec") and hasattr(stamp, "nanosec"):
        return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)
    raise TypeError(f"cannot read a time from {type(stamp).__name__}")


def split_ns(stamp_ns: int) -> tuple[int, int]:
    """``(sec, nanosec)`` of integer nanoseconds (``nanosec`` in [0, 1e9), also for negative stamps)."""
    return divmod(int(stamp_ns), NS_PER_S)


def stamp_msg(stamp_ns: int, types: Mapping[str, Any] | None = None):
    """``builtin_interfaces/Time`` of integer nanoseconds."""
    sec, nsec = split_ns(stamp_ns)
    return msg_type("builtin_interfaces/msg/Time", types)(sec=sec, nanosec=nsec)


def duration_msg(seconds: float, types: Mapping[str, Any] | None = None):
    """``builtin_interfaces/Duration`` of ``seconds`` (rounded to the nanosecond)."""
    sec, nsec = split_ns(round(float(seconds) * NS_PER_S))
    return msg_type("builtin_interfaces/msg/Duration", types)(sec=sec, nanosec=nsec)


def header_msg(stamp_ns: int, frame_id: str, types: Mapping[str, Any] | None = None):
    """``std_msgs/Header`` with a stamp of integer nanoseconds."""
    return msg_type("std_msgs/msg/Header", types)(stamp=stamp_msg(stamp_ns, types), frame_id=frame_id)


# --------------------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------------------
def transform_to_matrix(t: Any) -> np.ndarray:
    """``geometry_msgs/TransformStamped`` or ``Transform`` -> 4x4 ``T_child2parent`` (float64, metres); the
    quaternion is normalised."""
    tr = getattr(t, "transform", t)
    r, p = tr.rotation, tr.translation
    return make_transform(np.array([r.w, r.x, r.y, r.z], dtype=np.float64), (p.x, p.y, p.z))


def transform_msg(parent: str, child: str, T: np.ndarray, stamp_ns: int = 0,
                  types: Mapping[str, Any] | None = None):
    """``geometry_msgs/TransformStamped`` of 4x4 ``T_child2parent``: ``header.frame_id = parent``,
    ``child_frame_id = child``, stamp ``stamp_ns``."""
    T = np.asarray(T, dtype=np.float64)
    w, x, y, z = (float(v) for v in matrix_to_quat(T[:3, :3]))
    tx, ty, tz = (float(v) for v in T[:3, 3])
    transform = msg_type("geometry_msgs/msg/Transform", types)(
        translation=msg_type("geometry_msgs/msg/Vector3", types)(x=tx, y=ty, z=tz),
        rotation=msg_type("geometry_msgs/msg/Quaternion", types)(x=x, y=y, z=z, w=w))
    return msg_type("geometry_msgs/msg/TransformStamped", types)(
        header=header_msg(stamp_ns, parent, types), child_frame_id=child, transform=transform)


# --------------------------------------------------------------------------------------------------------------
# Poses over time
# --------------------------------------------------------------------------------------------------------------
class ExtrapolationError(LookupError):
    """A stamp outside the recorded poses (beyond the allowance). ``side`` is ``'past'`` or ``'future'``,
    ``nearest_ns`` the recorded stamp on that side, ``requested_ns`` the stamp asked for."""

    def __init__(self, text: str, side: str, requested_ns: int, nearest_ns: int):
        super().__init__(text)
        self.side, self.requested_ns, self.nearest_ns = side, requested_ns, nearest_ns


class PoseTrajectory:
    """Time series of one ``child -> parent`` transform (e.g. ``base_link -> map``, the ego pose), interpolated:
    linear in translation, slerp in rotation (:func:`~labeldistill_ros.geometry.slerp_quat`).

    Stamps are integer nanoseconds, kept sorted; a stamp added twice keeps the newer pose. :meth:`at` returns the
    4x4 pose at a stamp; outside the recorded span it returns the end pose when within ``max_extrapolation_ns``
    of it, else raises :class:`ExtrapolationError` (``max_extrapolation_ns = 0``: tf2's rule, no extrapolation).
    """

    def __init__(self, stamps_ns: Sequence[int] = (), matrices: Sequence[np.ndarray] = (),
                 max_extrapolation_ns: int = 0):
        self.stamps: list[int] = []
        self._poses: list[np.ndarray] = []  # (7,): translation (3,), quaternion [w, x, y, z]
        self.max_extrapolation_ns = int(max_extrapolation_ns)
        for s, m in zip(stamps_ns, matrices):
            m = np.asarray(m, dtype=np.float64)
            self.add(int(s), m[:3, 3], matrix_to_quat(m[:3, :3]))

    def __len__(self) -> int:
        return len(self.stamps)

    def add(self, stamp_ns: int, translation, quat_wxyz) -> None:
        """Record the pose at ``stamp_ns``: translation ``(3,)`` metres, unit quaternion [w, x, y, z]."""
        q = np.asarray(quat_wxyz, dtype=np.float64)
        pose = np.concatenate([np.asarray(translation, dtype=np.float64).reshape(3), q / np.linalg.norm(q)])
        i = bisect.bisect_left(self.stamps, stamp_ns)
        if i < len(self.stamps) and self.stamps[i] == stamp_ns:
            self._poses[i] = pose
        else:
            self.stamps.insert(i, stamp_ns)
            self._poses.insert(i, pose)

    def drop_before(self, stamp_ns: int) -> None:
        """Forget the poses older than ``stamp_ns`` (a cache window)."""
        cut = bisect.bisect_left(self.stamps, stamp_ns)
        if cut:
            del self.stamps[:cut], self._poses[:cut]

    def at(self, t_ns: int) -> np.ndarray:
        """4x4 ``T_child2parent`` at ``t_ns``; :class:`ExtrapolationError` outside the span (see the class)."""
        if not self.stamps:
            raise LookupError("no poses recorded")
        stamps = self.stamps
        i = bisect.bisect_left(stamps, t_ns)
        if i < len(stamps) and stamps[i] == t_ns:
            v = self._poses[i]
        elif i == 0 or i == len(stamps):
            j = 0 if i == 0 else len(stamps) - 1
            if abs(stamps[j] - t_ns) > self.max_extrapolation_ns:
                raise ExtrapolationError(
                    f"stamp {t_ns} ns is {abs(stamps[j] - t_ns) / 1e9:.3f} s outside the recorded poses "
                    f"[{stamps[0]}, {stamps[-1]}] ns", "past" if i == 0 else "future", t_ns, stamps[j])
            v = self._poses[j]
        else:
            a = (t_ns - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
            v0, v1 = self._poses[i - 1], self._poses[i]
            v = np.concatenate([v0[:3] + a * (v1[:3] - v0[:3]), slerp_quat(v0[3:], v1[3:], a)])
        return make_transform(v[3:], v[:3])


# --------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------
class ImageError(ValueError):
    """A malformed image message; the text names the field and the fix."""


# encoding -> (channels, name of the cv2 conversion code to RGB; None for rgb8)
ENCODINGS: dict[str, tuple[int, str | None]] = {
    "rgb8": (3, None), "bgr8": (3, "COLOR_BGR2RGB"), "rgba8": (4, "COLOR_RGBA2RGB"),
    "bgra8": (4, "COLOR_BGRA2RGB"), "mono8": (1, "COLOR_GRAY2RGB")}
_TO_RGB = {"rgb8": slice(0, 3), "bgr8": slice(2, None, -1), "rgba8": slice(0, 3), "bgra8": slice(2, None, -1)}


def check_image(msg: Any, name: str = "image") -> tuple[int, int, int]:
    """Validate a ``sensor_msgs/Image``: returns ``(height, width, channels)`` or raises :class:`ImageError`."""
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise ImageError(f"{name}: encoding '{enc}' is not supported: publish one of {sorted(ENCODINGS)} "
                         f"(a driver sending 'passthrough' or '8UC3' must say bgr8 or rgb8)")
    ch = ENCODINGS[enc][0]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError(f"{name}: height={h} width={w}: both must be > 0")
    if step < w * ch:
        raise ImageError(f"{name}: step={step} is smaller than width*channels={w}*{ch}={w * ch} for '{enc}': "
                         f"fix the driver's step (bytes per row)")
    n = len(msg.data)
    if n != step * h:
        what = "truncated" if n < step * h else "too long"
        raise ImageError(f"{name}: data has {n} bytes but step*height = {step}*{h} = {step * h} ({what}): "
                         f"the message is corrupt or height/step are wrong")
    return h, w, ch


def decode_image(msg: Any, name: str = "image", out: np.ndarray | None = None) -> np.ndarray:
    """``sensor_msgs/Image`` -> ``(H, W, 3) uint8`` RGB (or :class:`ImageError`).

    rgb8 is returned as a read-only view on the message's buffer (no copy; rows padded by ``step`` stay strided);
    other encodings are converted into ``out`` when it has the right shape (buffer reuse), else a new array.
    """
    h, w, ch = check_image(msg, name)
    rows = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, int(msg.step))
    view = rows[:, : w * ch].reshape(h, w, ch) if ch > 1 else rows[:, :w]
    code = ENCODINGS[msg.encoding][1]
    if code is None:
        return view
    dst = out if out is not None and out.shape == (h, w, 3) and out.dtype == np.uint8 else None
    try:
        import cv2
    except ImportError:  # numpy only: slower, same values
        rgb = np.repeat(view[:, :, None], 3, axis=2) if ch == 1 else view[:, :, _TO_RGB[msg.encoding]]
        if dst is None:
            return np.ascontiguousarray(rgb)
        dst[...] = rgb
        return dst
    return cv2.cvtColor(view, getattr(cv2, code), dst=dst)


def decode_compressed(data: Any, name: str = "image", fmt: str = "") -> np.ndarray:
    """JPEG/PNG bytes (``CompressedImage.data``) -> ``(H, W, 3) uint8`` RGB with OpenCV (Pillow where OpenCV is
    not installed); :class:`ImageError` when empty or undecodable."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8, copy=False)
    what = f"{name}: cannot decode compressed image (format '{fmt}', {len(buf)} bytes)"
    if not len(buf):
        raise ImageError(f"{name}: compressed data is empty (format '{fmt}')")
    try:
        import cv2
    except ImportError:
        import io

        from PIL import Image, UnidentifiedImageError

        try:
            return np.asarray(Image.open(io.BytesIO(buf.tobytes())).convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(f"{what}: {exc}") from exc
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"{what}: the data is truncated or not JPEG/PNG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def compressed_to_rgb(msg: Any, name: str = "image") -> np.ndarray:
    """``sensor_msgs/CompressedImage`` -> ``(H, W, 3) uint8`` RGB (:func:`decode_compressed`)."""
    return decode_compressed(msg.data, name, msg.format)


# --------------------------------------------------------------------------------------------------------------
# Autoware twist
# --------------------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------------------
# Class colours
# --------------------------------------------------------------------------------------------------------------
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "car": (255, 158, 0), "truck": (255, 99, 71), "construction_vehicle": (233, 150, 70),
    "bus": (255, 69, 0), "trailer": (255, 140, 0), "barrier": (112, 128, 144), "motorcycle": (255, 61, 99),
    "bicycle": (220, 20, 60), "pedestrian": (0, 0, 230), "traffic_cone": (47, 79, 79),
}
"""nuScenes devkit colours (RGB 0-255) per detection class, for every marker; other names get :data:`GREY`."""
GREY: tuple[int, int, int] = (160, 160, 160)


def class_rgb(name: str) -> tuple[float, float, float]:
    """The marker colour of class ``name`` as ``ColorRGBA`` wants it: r, g, b in [0, 1]."""
    r, g, b = CLASS_COLORS.get(name, GREY)
    return r / 255.0, g / 255.0, b / 255.0
