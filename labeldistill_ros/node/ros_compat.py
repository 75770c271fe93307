"""THE seam between the node and optional ROS packages: ``tf2_ros``, ``message_filters``, ``cv_bridge``.

On a vehicle (Humble/Jazzy install) the real packages are importable and used. On machines without a ROS
install (CI, these development machines) small in-package equivalents with the same semantics for the node's
use are used instead:

* :class:`TransformBuffer` + :class:`TransformListener`: a TF buffer fed from ``/tf`` (volatile) and
  ``/tf_static`` (transient-local, so a late joiner still gets the static calibration), with
  ``lookup_transform(target, source, time, timeout)`` semantics: static transforms valid at any time, dynamic
  ones interpolated (linear translation, slerp rotation), chained through the tree, ``time = 0`` meaning the
  latest common time, and a :class:`LookupException` / :class:`ExtrapolationException` /
  :class:`ConnectivityException` (all :class:`TransformException`) naming the frames and times.
* :func:`image_to_rgb` / :func:`compressed_to_rgb`: ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) and
  ``CompressedImage`` (JPEG/PNG via ``cv2.imdecode``) to an ``HxWx3 uint8 RGB`` array, as
  ``cv_bridge.CvBridge().imgmsg_to_cv2(msg, 'rgb8')`` would return it. Malformed messages raise
  :class:`ImageError` naming the field and the fix (checked before cv_bridge too, so errors read the same).
* :func:`subscribe`: ``message_filters.Subscriber`` where installed, ``node.create_subscription`` otherwise.

``LABELDISTILL_ROS_COMPAT=fallback`` forces the in-package equivalents (to compare them on a vehicle).
Frames follow TF: ``lookup_transform(target, source)`` returns the transform that maps points expressed in
``source`` into ``target`` (``T_source2target``); translations in metres, times in nanoseconds internally.
"""
from __future__ import annotations

import bisect
import importlib
import os
import threading
import time as _time
from types import ModuleType
from typing import Any, Callable

import numpy as np

from ..geometry import invert_rigid, matrix_to_quat, quat_to_matrix, slerp_quat

MODE_ENV = "LABELDISTILL_ROS_COMPAT"
OPTIONAL = ("tf2_ros", "message_filters", "cv_bridge")


# ---------------------------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------------------------
def optional_module(name: str, mode: str | None = None) -> ModuleType | None:
    """The ROS module ``name`` if it should be used (``mode`` auto and importable), else ``None``.

    ``mode``: ``auto`` (default; from ``$LABELDISTILL_ROS_COMPAT``) or ``fallback`` (never use ROS packages).
    """
    mode = (mode or os.environ.get(MODE_ENV) or "auto").strip().lower()
    if mode not in ("auto", "fallback"):
        raise ValueError(f"{MODE_ENV}={mode!r} is invalid: use 'auto' or 'fallback'")
    if mode == "fallback" or name not in OPTIONAL:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def backends(mode: str | None = None) -> dict[str, str]:
    """Which implementation each optional package resolves to: ``{'tf2_ros': 'ros'|'fallback', ...}``."""
    return {n: ("ros" if optional_module(n, mode) is not None else "fallback") for n in OPTIONAL}


# ---------------------------------------------------------------------------------------------------------------
# Time helpers
# ---------------------------------------------------------------------------------------------------------------
def to_ns(t: Any) -> int:
    """rclpy Time / builtin_interfaces Time / int nanoseconds / None (= 0, latest) -> int nanoseconds."""
    if t is None:
        return 0
    if isinstance(t, (int, np.integer)):
        return int(t)
    if hasattr(t, "nanoseconds"):
        return int(t.nanoseconds)
    if hasattr(t, "sec") and hasattr(t, "nanosec"):
        return int(t.sec) * 1_000_000_000 + int(t.nanosec)
    raise TypeError(f"cannot read a time from {type(t).__name__}")


def _timeout_s(timeout: Any) -> float:
    if timeout is None:
        return 0.0
    if hasattr(timeout, "nanoseconds"):
        return timeout.nanoseconds / 1e9
    return float(timeout)


# ---------------------------------------------------------------------------------------------------------------
# TF fallback
# ---------------------------------------------------------------------------------------------------------------
class TransformException(Exception):
    """Base of the TF lookup errors (as ``tf2_ros.TransformException``)."""


class LookupException(TransformException):
    """A frame is unknown to the buffer."""


class ConnectivityException(TransformException):
    """Both frames are known but not connected in one tree."""


class ExtrapolationException(TransformException):
    """The requested time lies outside the buffered data of a dynamic transform."""


def _quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    return quat_to_matrix(np.array([q[3], q[0], q[1], q[2]]))


class TransformBuffer:
    """In-package TF buffer with ``tf2_ros.Buffer``'s lookup semantics for the node's needs (thread-safe)."""

    def __init__(self, cache_time_s: float = 10.0):
        self.cache_ns = int(cache_time_s * 1e9)
        self._cond = threading.Condition()
        self._static: dict[str, tuple[str, np.ndarray]] = {}  # child -> (parent, T_child2parent)
        self._dyn: dict[str, tuple[str, list[int], list[np.ndarray]]] = {}  # child -> (parent, stamps, [t|q])
        self.static_version = 0  # bumped whenever a static transform changes

    # -- filling -------------------------------------------------------------------------------------------------
    def set_transform(self, t, authority: str = "") -> bool:
        """Add a dynamic ``geometry_msgs/TransformStamped``."""
        return self._set(t, static=False)

    def set_transform_static(self, t, authority: str = "") -> bool:
        """Add a static ``geometry_msgs/TransformStamped`` (valid at every time)."""
        return self._set(t, static=True)

    def _set(self, t, static: bool) -> bool:
        parent, child = t.header.frame_id.lstrip("/"), t.child_frame_id.lstrip("/")
        tr, ro = t.transform.translation, t.transform.rotation
        vec = np.array([tr.x, tr.y, tr.z, ro.x, ro.y, ro.z, ro.w], dtype=np.float64)
        if not parent or not child or parent == child or not np.all(np.isfinite(vec)) \
                or np.linalg.norm(vec[3:]) < 1e-9:
            return False  # tf2 rejects these too (with an error log)
        vec[3:] /= np.linalg.norm(vec[3:])
        with self._cond:
            if static:
                T = np.eye(4)
                T[:3, :3] = _quat_xyzw_to_matrix(vec[3:])
                T[:3, 3] = vec[:3]
                old = self._static.get(child)
                if old is None or old[0] != parent or not np.array_equal(old[1], T):
                    self._static[child] = (parent, T)
                    self.static_version += 1
                self._dyn.pop(child, None)
            else:
                stamp = to_ns(t.header.stamp)
                entry = self._dyn.get(child)
                if entry is None or entry[0] != parent:
                    entry = (parent, [], [])
                    self._dyn[child] = entry
                _, stamps, vals = entry
                i = bisect.bisect_left(stamps, stamp)
                if i < len(stamps) and stamps[i] == stamp:
                    vals[i] = vec
                else:
                    stamps.insert(i, stamp)
                    vals.insert(i, vec)
                cut = bisect.bisect_left(stamps, stamps[-1] - self.cache_ns)
                if cut:
                    del stamps[:cut], vals[:cut]
            self._cond.notify_all()
        return True

    def clear(self) -> None:
        """Forget the dynamic transforms (time jumped back); static ones stay, as in tf2."""
        with self._cond:
            self._dyn.clear()

    def all_frames(self) -> set[str]:
        with self._cond:
            return set(self._static) | set(self._dyn) | {p for p, _ in self._static.values()} | \
                {e[0] for e in self._dyn.values()}

    # -- lookups -------------------------------------------------------------------------------------------------
    def lookup_transform(self, target_frame: str, source_frame: str, time: Any = None, timeout: Any = None):
        """``geometry_msgs/TransformStamped`` mapping ``source_frame`` points into ``target_frame`` at ``time``.

        ``time`` 0/None = latest common time. Waits up to ``timeout`` (rclpy Duration or seconds) for data.
        """
        T, stamp = self.lookup_matrix(target_frame, source_frame, time, timeout)
        return _matrix_to_msg(T, target_frame, source_frame, stamp)

    def can_transform(self, target_frame: str, source_frame: str, time: Any = None, timeout: Any = None) -> bool:
        try:
            self.lookup_matrix(target_frame, source_frame, time, timeout)
            return True
        except TransformException:
            return False

    def lookup_matrix(self, target_frame: str, source_frame: str, time: Any = None,
                      timeout: Any = None) -> tuple[np.ndarray, int]:
        """Like :meth:`lookup_transform` but returns ``(T_source2target (4, 4), stamp_ns)``."""
        t_ns = to_ns(time)
        deadline = _time.monotonic() + _timeout_s(timeout)
        with self._cond:
            while True:
                try:
                    return self._lookup(target_frame.lstrip("/"), source_frame.lstrip("/"), t_ns)
                except TransformException:
                    left = deadline - _time.monotonic()
                    if left <= 0:
                        raise
                    self._cond.wait(left)

    def _chain(self, frame: str) -> list[str]:
        out, seen = [frame], {frame}
        while True:
            f = out[-1]
            parent = self._static[f][0] if f in self._static else (self._dyn[f][0] if f in self._dyn else None)
            if parent is None or parent in seen:
                return out
            out.append(parent)
            seen.add(parent)

    def _edge(self, child: str, t_ns: int, target: str, source: str) -> np.ndarray:
        if child in self._static:
            return self._static[child][1]
        parent, stamps, vals = self._dyn[child]
        i = bisect.bisect_left(stamps, t_ns)
        if i < len(stamps) and stamps[i] == t_ns:
            v = vals[i]
        elif i == 0 or i == len(stamps):
            where = "past" if i == 0 else "future"
            edge = "earliest" if i == 0 else "latest"
            known = stamps[0] if i == 0 else stamps[-1]
            raise ExtrapolationException(
                f"Lookup would require extrapolation into the {where}. Requested time {t_ns / 1e9:.6f} but the "
                f"{edge} data is at time {known / 1e9:.6f}, when looking up transform from frame [{source}] to "
                f"frame [{target}] (edge {parent} -> {child})")
        else:
            a = (t_ns - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
            v0, v1 = vals[i - 1], vals[i]
            v = np.concatenate([v0[:3] + a * (v1[:3] - v0[:3]), slerp_quat(v0[3:], v1[3:], a)])
        T = np.eye(4)
        T[:3, :3] = _quat_xyzw_to_matrix(v[3:])
        T[:3, 3] = v[:3]
        return T

    def _lookup(self, target: str, source: str, t_ns: int) -> tuple[np.ndarray, int]:
        known = self.all_frames()
        for f, role in ((target, "target_frame"), (source, "source_frame")):
            if f not in known:
                raise LookupException(f'"{f}" passed to lookupTransform argument {role} does not exist. '
                                      f"Known frames: {sorted(known)}")
        if target == source:
            return np.eye(4), t_ns
        up_s, up_t = self._chain(source), self._chain(target)
        common = next((f for f in up_s if f in set(up_t)), None)
        if common is None:
            raise ConnectivityException(
                f"Could not find a connection between '{target}' and '{source}' because they are not part of "
                f"the same tree (roots '{up_t[-1]}' and '{up_s[-1]}')")
        edges = up_s[:up_s.index(common)] + up_t[:up_t.index(common)]
        if t_ns == 0:  # latest common time over the dynamic edges
            latest = [self._dyn[c][1][-1] for c in edges if c in self._dyn]
            t_ns = min(latest) if latest else 0
        T_s = np.eye(4)  # source -> common: left-multiply each edge child -> parent, walking up
        for c in up_s[:up_s.index(common)]:
            T_s = self._edge(c, t_ns, target, source) @ T_s
        T_t = np.eye(4)
        for c in up_t[:up_t.index(common)]:
            T_t = self._edge(c, t_ns, target, source) @ T_t
        # T_s maps source -> common, T_t maps target -> common.
        return invert_rigid(T_t) @ T_s, t_ns


def _matrix_to_msg(T: np.ndarray, target: str, source: str, stamp_ns: int):
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped()
    msg.header.frame_id, msg.child_frame_id = target, source
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = map(float, T[:3, 3])
    w, x, y, z = matrix_to_quat(T[:3, :3])
    msg.transform.rotation.x, msg.transform.rotation.y = float(x), float(y)
    msg.transform.rotation.z, msg.transform.rotation.w = float(z), float(w)
    return msg


def transform_to_matrix(t) -> np.ndarray:
    """``geometry_msgs/TransformStamped`` (or ``Transform``) -> 4x4 ``T_child2parent`` (float64)."""
    tr = getattr(t, "transform", t)
    q = np.array([tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w], dtype=np.float64)
    T = np.eye(4)
    T[:3, :3] = _quat_xyzw_to_matrix(q)
    T[:3, 3] = (tr.translation.x, tr.translation.y, tr.translation.z)
    return T


class TransformListener:
    """Fills a :class:`TransformBuffer` from ``/tf`` and ``/tf_static`` (QoS as tf2_ros' listener)."""

    def __init__(self, buffer: TransformBuffer, node, qos=None, static_qos=None):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile
        from tf2_msgs.msg import TFMessage

        qos = qos or QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST)
        static_qos = static_qos or QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                                              durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.buffer = buffer
        self.subs = [
            node.create_subscription(TFMessage, "/tf", self._on_tf, qos),
            node.create_subscription(TFMessage, "/tf_static", self._on_tf_static, static_qos),
        ]

    def _on_tf(self, msg) -> None:
        for t in msg.transforms:
            self.buffer.set_transform(t, "default_authority")

    def _on_tf_static(self, msg) -> None:
        for t in msg.transforms:
            self.buffer.set_transform_static(t, "default_authority")


class TfBackend:
    """The TF buffer and listener the node uses, whichever implementation, with its exception types."""

    def __init__(self, node, cache_time_s: float = 10.0, mode: str | None = None):
        tf2_ros = optional_module("tf2_ros", mode)
        if tf2_ros is not None:
            from rclpy.duration import Duration

            self.kind = "tf2_ros"
            self.buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time_s), node=node)
            self.listener = tf2_ros.TransformListener(self.buffer, node)
            self.exceptions: tuple[type[BaseException], ...] = (tf2_ros.TransformException, TransformException)
        else:
            self.kind = "fallback"
            self.buffer = TransformBuffer(cache_time_s)
            self.listener = TransformListener(self.buffer, node)
            self.exceptions = (TransformException,)

    @classmethod
    def from_buffer(cls, buffer: TransformBuffer) -> "TfBackend":
        """A backend over an in-package buffer that the caller fills (offline bag replay: no node, no listener)."""
        self = cls.__new__(cls)
        self.kind, self.buffer, self.listener, self.exceptions = "fallback", buffer, None, (TransformException,)
        return self

    def lookup_matrix(self, target: str, source: str, stamp_ns: int, timeout_s: float) -> np.ndarray:
        """``T_source2target`` 4x4 at ``stamp_ns`` (waiting up to ``timeout_s``); raises one of ``exceptions``."""
        if self.kind == "fallback":
            return self.buffer.lookup_matrix(target, source, stamp_ns, timeout_s)[0]
        from rclpy.duration import Duration
        from rclpy.time import Time

        t = self.buffer.lookup_transform(target, source, Time(nanoseconds=int(stamp_ns)),
                                         Duration(nanoseconds=int(timeout_s * 1e9)))
        return transform_to_matrix(t)

    def clear(self) -> None:
        """Drop dynamic transforms (after time jumped back: a bag loop)."""
        self.buffer.clear()


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------
class ImageError(ValueError):
    """A malformed image message; the text names the field and the fix."""


# encoding -> (channels, cv2 conversion code name to RGB or None for rgb8)
ENCODINGS = {"rgb8": (3, None), "bgr8": (3, "COLOR_BGR2RGB"), "rgba8": (4, "COLOR_RGBA2RGB"),
             "bgra8": (4, "COLOR_BGRA2RGB"), "mono8": (1, "COLOR_GRAY2RGB")}


def check_image(msg, name: str = "image") -> tuple[int, int, int]:
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


def image_to_rgb(msg, name: str = "image", out: np.ndarray | None = None, mode: str | None = None) -> np.ndarray:
    """``sensor_msgs/Image`` -> ``(H, W, 3) uint8`` RGB.

    rgb8 with ``step == width*3`` is returned as a read-only view on the message buffer (no copy); other
    encodings are converted into ``out`` when it has the right shape (buffer reuse), else a new array.
    """
    h, w, ch = check_image(msg, name)
    bridge = _cv_bridge(mode)
    if bridge is not None:
        return bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
    import cv2

    buf = np.frombuffer(msg.data, dtype=np.uint8)
    rows = buf.reshape(h, int(msg.step))
    view = rows[:, : w * ch].reshape(h, w, ch) if ch > 1 else rows[:, :w]
    code = ENCODINGS[msg.encoding][1]
    if code is None:
        return view
    dst = out if out is not None and out.shape == (h, w, 3) and out.dtype == np.uint8 else None
    return cv2.cvtColor(view, getattr(cv2, code), dst=dst)


def compressed_to_rgb(msg, name: str = "image", mode: str | None = None) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (JPEG/PNG) -> ``(H, W, 3) uint8`` RGB, or :class:`ImageError`."""
    n = len(msg.data)
    if n == 0:
        raise ImageError(f"{name}: compressed data is empty (format '{msg.format}')")
    bridge = _cv_bridge(mode)
    if bridge is not None:
        try:
            return bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8")
        except Exception as exc:  # noqa: BLE001 - CvBridgeError or cv2.error
            raise ImageError(f"{name}: cannot decode compressed image (format '{msg.format}', {n} bytes): "
                             f"{exc}") from exc
    import cv2

    img = cv2.imdecode(np.frombuffer(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"{name}: cannot decode compressed image (format '{msg.format}', {n} bytes): the data "
                         f"is truncated or not JPEG/PNG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


_BRIDGES: dict[str, Any] = {}


def _cv_bridge(mode: str | None):
    mod = optional_module("cv_bridge", mode)
    if mod is None:
        return None
    if "bridge" not in _BRIDGES:
        _BRIDGES["bridge"] = mod.CvBridge()
    return _BRIDGES["bridge"]


# ---------------------------------------------------------------------------------------------------------------
# Subscriptions
# ---------------------------------------------------------------------------------------------------------------
def subscribe(node, msg_type, topic: str, qos, callback: Callable[[Any], None], mode: str | None = None):
    """Subscribe ``callback(msg)`` to ``topic``: via ``message_filters.Subscriber`` where installed.

    Returns the subscription-like object (keep a reference). Topic remapping applies in both cases.
    """
    mf = optional_module("message_filters", mode)
    if mf is None:
        return node.create_subscription(msg_type, topic, callback, qos)
    sub = mf.Subscriber(node, msg_type, topic, qos_profile=qos)
    sub.registerCallback(callback)
    return sub
