"""The in-package TF buffer and listener: ``tf2_ros.Buffer`` / ``TransformListener`` semantics for the node's
needs, used where tf2_ros is not installed (selected in :mod:`.ros_compat`) and by the offline bag replay.

* :class:`TransformBuffer`: static transforms valid at any time, dynamic ones interpolated
  (:class:`~labeldistill_ros.ros_convert.PoseTrajectory`: linear translation, slerp rotation), chained through the
  tree, ``time = 0`` meaning the latest common time; :class:`LookupException` / :class:`ExtrapolationException` /
  :class:`ConnectivityException` (all :class:`TransformException`) name the frames and times;
* :class:`TransformListener`: fills it from ``/tf`` (volatile) and ``/tf_static`` (transient-local, so a late
  joiner still gets the static calibration).

Frames follow TF: ``lookup_transform(target, source)`` returns the transform that maps points expressed in
``source`` into ``target`` (``T_source2target``); translations in metres, times in nanoseconds internally.
"""
from __future__ import annotations

import threading
import time as _time
from typing import Any

import numpy as np

from ..geometry import invert_rigid
from ..ros_convert import ExtrapolationError, PoseTrajectory, stamp_to_ns, transform_msg, transform_to_matrix


def _timeout_s(timeout: Any) -> float:
    if timeout is None:
        return 0.0
    if hasattr(timeout, "nanoseconds"):
        return timeout.nanoseconds / 1e9
    return float(timeout)


class TransformException(Exception):
    """Base of the TF lookup errors (as ``tf2_ros.TransformException``)."""


class LookupException(TransformException):
    """A frame is unknown to the buffer."""


class ConnectivityException(TransformException):
    """Both frames are known but not connected in one tree."""


class ExtrapolationException(TransformException):
    """The requested time lies outside the buffered data of a dynamic transform."""


class TransformBuffer:
    """In-package TF buffer with ``tf2_ros.Buffer``'s lookup semantics for the node's needs (thread-safe)."""

    def __init__(self, cache_time_s: float = 10.0):
        self.cache_ns = int(cache_time_s * 1e9)
        self._cond = threading.Condition()
        self._static: dict[str, tuple[str, np.ndarray]] = {}  # child -> (parent, T_child2parent)
        self._dyn: dict[str, tuple[str, PoseTrajectory]] = {}  # child -> (parent, poses over time)
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
        vec = np.array([tr.x, tr.y, tr.z, ro.w, ro.x, ro.y, ro.z], dtype=np.float64)
        if not parent or not child or parent == child or not np.all(np.isfinite(vec)) \
                or np.linalg.norm(vec[3:]) < 1e-9:
            return False  # tf2 rejects these too (with an error log)
        with self._cond:
            if static:
                T = transform_to_matrix(t)
                old = self._static.get(child)
                if old is None or old[0] != parent or not np.array_equal(old[1], T):
                    self._static[child] = (parent, T)
                    self.static_version += 1
                self._dyn.pop(child, None)
            else:
                entry = self._dyn.get(child)
                if entry is None or entry[0] != parent:
                    entry = self._dyn[child] = (parent, PoseTrajectory())
                poses = entry[1]
                poses.add(stamp_to_ns(t.header.stamp), vec[:3], vec[3:])
                poses.drop_before(poses.stamps[-1] - self.cache_ns)
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
        return transform_msg(target_frame, source_frame, T, stamp)

    def can_transform(self, target_frame: str, source_frame: str, time: Any = None, timeout: Any = None) -> bool:
        try:
            self.lookup_matrix(target_frame, source_frame, time, timeout)
            return True
        except TransformException:
            return False

    def lookup_matrix(self, target_frame: str, source_frame: str, time: Any = None,
                      timeout: Any = None) -> tuple[np.ndarray, int]:
        """Like :meth:`lookup_transform` but returns ``(T_source2target (4, 4), stamp_ns)``."""
        t_ns = stamp_to_ns(time)
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
        parent, poses = self._dyn[child]
        try:
            return poses.at(t_ns)
        except ExtrapolationError as exc:
            edge = "earliest" if exc.side == "past" else "latest"
            raise ExtrapolationException(
                f"Lookup would require extrapolation into the {exc.side}. Requested time {t_ns / 1e9:.6f} but the "
                f"{edge} data is at time {exc.nearest_ns / 1e9:.6f}, when looking up transform from frame "
                f"[{source}] to frame [{target}] (edge {parent} -> {child})") from None

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
            latest = [self._dyn[c][1].stamps[-1] for c in edges if c in self._dyn]
            t_ns = min(latest) if latest else 0
        T_s = np.eye(4)  # source -> common: left-multiply each edge child -> parent, walking up
        for c in up_s[:up_s.index(common)]:
            T_s = self._edge(c, t_ns, target, source) @ T_s
        T_t = np.eye(4)
        for c in up_t[:up_t.index(common)]:
            T_t = self._edge(c, t_ns, target, source) @ T_t
        # T_s maps source -> common, T_t maps target -> common.
        return invert_rigid(T_t) @ T_s, t_ns


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
