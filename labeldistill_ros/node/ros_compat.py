"""THE seam between the node and optional ROS packages: ``tf2_ros``, ``message_filters``, ``cv_bridge``.

On a vehicle (Humble/Jazzy install) the real packages are importable and used. On machines without a ROS
install (CI, these development machines) small in-package equivalents with the same semantics for the node's
use are used instead:

* TF: :class:`~.tf_buffer.TransformBuffer` + :class:`~.tf_buffer.TransformListener` (:mod:`.tf_buffer`: tf2's
  ``lookup_transform(target, source, time, timeout)`` semantics and exception types) behind :class:`TfBackend`;
* :func:`image_to_rgb` / :func:`compressed_to_rgb`: ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) and
  ``CompressedImage`` (JPEG/PNG) to an ``HxWx3 uint8 RGB`` array, as
  ``cv_bridge.CvBridge().imgmsg_to_cv2(msg, 'rgb8')`` would return it, else with the shared decoders of
  :mod:`labeldistill_ros.ros_convert`. Malformed messages raise :class:`ImageError` naming the field and the fix
  (checked before cv_bridge too, so errors read the same).
* :func:`subscribe`: ``message_filters.Subscriber`` where installed, ``node.create_subscription`` otherwise.

``LABELDISTILL_ROS_COMPAT=fallback`` forces the in-package equivalents (to compare them on a vehicle).
Frames follow TF: ``lookup_transform(target, source)`` returns the transform that maps points expressed in
``source`` into ``target`` (``T_source2target``); translations in metres, times in nanoseconds internally.
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any, Callable

import numpy as np

from ..ros_convert import ImageError, check_image, decode_compressed, decode_image, transform_to_matrix
from .tf_buffer import (ConnectivityException, ExtrapolationException, LookupException, TransformBuffer,
                        TransformException, TransformListener)

__all__ = ["ConnectivityException", "ExtrapolationException", "ImageError", "LookupException", "MODE_ENV", "OPTIONAL",
           "TfBackend", "TransformBuffer", "TransformException", "TransformListener", "backends",
           "compressed_to_rgb", "image_to_rgb", "optional_module", "subscribe"]

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
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    if name in _NOT_IMPORTABLE:  # asked per image: a failed import searches the whole path again every time
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        _NOT_IMPORTABLE.add(name)
        return None


_NOT_IMPORTABLE: set[str] = set()  # optional packages whose import failed in this process


def backends(mode: str | None = None) -> dict[str, str]:
    """Which implementation each optional package resolves to: ``{'tf2_ros': 'ros'|'fallback', ...}``."""
    return {n: ("ros" if optional_module(n, mode) is not None else "fallback") for n in OPTIONAL}


# ---------------------------------------------------------------------------------------------------------------
# TF
# ---------------------------------------------------------------------------------------------------------------
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
def image_to_rgb(msg, name: str = "image", out: np.ndarray | None = None, mode: str | None = None) -> np.ndarray:
    """``sensor_msgs/Image`` -> ``(H, W, 3) uint8`` RGB: ``cv_bridge`` where installed (the message validated first,
    so errors read the same), else :func:`~labeldistill_ros.ros_convert.decode_image` (rgb8: a read-only view,
    no copy; other encodings into ``out`` when it fits)."""
    bridge = _cv_bridge(mode)
    if bridge is None:
        return decode_image(msg, name, out)
    check_image(msg, name)
    return bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")


def compressed_to_rgb(msg, name: str = "image", mode: str | None = None) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (JPEG/PNG) -> ``(H, W, 3) uint8`` RGB: ``cv_bridge`` where installed, else
    :func:`~labeldistill_ros.ros_convert.decode_compressed`; :class:`ImageError` when undecodable."""
    bridge = _cv_bridge(mode)
    if bridge is None:
        return decode_compressed(msg.data, name, msg.format)
    n = len(msg.data)
    if n == 0:
        raise ImageError(f"{name}: compressed data is empty (format '{msg.format}')")
    try:
        return bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8")
    except Exception as exc:  # noqa: BLE001 - CvBridgeError or cv2.error
        raise ImageError(f"{name}: cannot decode compressed image (format '{msg.format}', {n} bytes): "
                         f"{exc}") from exc


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
