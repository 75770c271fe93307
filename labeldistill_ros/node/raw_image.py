"""Camera messages as the middleware delivers them: serialized CDR bytes, read without deserialising.

The node subscribes to its images with ``raw=True``: rclpy hands over the serialized message (one ``bytes`` object)
and no ``sensor_msgs/Image`` is built. Most camera sets are superseded by newer ones before the model is free (a
CPU runs a few sets a second of the cameras' 12), and deserialising every 4.3 MB image (a copy into a Python
``array``) cost the executor about 6 ms a set. :func:`parse` reads only the header, the geometry and where the
pixels start (a few dozen bytes); the pixels stay where they are, and :attr:`RawImage.data` is a read-only numpy
view on them. A set that is run converts its images then (:func:`labeldistill_ros.node.ros_compat.image_to_rgb`
on this view, or ``cv_bridge`` on the deserialised message where cv_bridge is installed: :meth:`RawImage.message`).

CDR layout (XCDR1, the ROS 2 default): a 4-byte encapsulation header (``00 01``: little endian), then the fields
in order, each aligned to its size relative to the end of that header; a string is a ``uint32`` length counting
its NUL terminator, then the bytes; ``uint8[]`` is a ``uint32`` length, then the bytes::

    sensor_msgs/Image            header.stamp.sec int32, .nanosec uint32, header.frame_id string, height uint32,
                                 width uint32, encoding string, is_bigendian uint8, step uint32, data uint8[]
    sensor_msgs/CompressedImage  header (as above), format string, data uint8[]

A big-endian payload (``00 00``; no current ROS 2 platform writes one) is deserialised with rclpy instead.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ..ros_convert import NS_PER_S, stamp_to_ns

_U32 = struct.Struct("<I")
_STAMP = struct.Struct("<iI")
CDR_LE = b"\x00\x01"


class RawImageError(ValueError):
    """Serialized bytes that are not a whole Image / CompressedImage message."""


@dataclass
class RawImage:
    """One image message, not deserialised (see the module docstring). ``data`` is a read-only ``uint8`` view on
    ``raw`` (no copy); ``height``, ``width``, ``encoding``, ``step``, ``is_bigendian`` are 0 / '' for a compressed
    image, whose ``format`` is set instead. ``received_ns``: when the middleware received it (system clock, ns)."""

    raw: bytes
    compressed: bool
    stamp_ns: int
    frame_id: str
    data: np.ndarray
    height: int = 0
    width: int = 0
    encoding: str = ""
    is_bigendian: int = 0
    step: int = 0
    format: str = ""
    received_ns: int = 0

    def message(self):
        """The deserialised ``sensor_msgs/Image`` / ``CompressedImage`` (for cv_bridge)."""
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import CompressedImage, Image

        return deserialize_message(self.raw, CompressedImage if self.compressed else Image)


class _Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes):
        self.buf, self.pos, self.end = buf, 4, len(buf)

    def _align(self, n: int) -> None:
        self.pos += (-(self.pos - 4)) % n

    def u32(self) -> int:
        self._align(4)
        if self.pos + 4 > self.end:
            raise RawImageError("truncated message")
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u8(self) -> int:
        if self.pos + 1 > self.end:
            raise RawImageError("truncated message")
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def string(self) -> str:
        n = self.u32()
        if n == 0 or self.pos + n > self.end:
            raise RawImageError("bad string length")
        s = bytes(self.buf[self.pos:self.pos + n - 1]).decode("utf-8", "replace")
        self.pos += n
        return s

    def octets(self) -> tuple[int, int]:
        """(offset, length) of a ``uint8[]`` field."""
        n = self.u32()
        if self.pos + n > self.end:
            raise RawImageError(f"data has {n} bytes but the message ends {self.end - self.pos} bytes later")
        off = self.pos
        self.pos += n
        return off, n


def parse(raw: bytes, compressed: bool) -> RawImage | None:
    """Read the serialized ``sensor_msgs/Image`` (or ``CompressedImage``) ``raw``; None for a big-endian payload
    (deserialise it instead). Raises :class:`RawImageError` when the bytes do not hold a whole message."""
    if len(raw) < 16:
        raise RawImageError(f"{len(raw)} bytes is no image message")
    if raw[:2] != CDR_LE:
        return None
    r = _Reader(raw)
    sec, nsec = _STAMP.unpack_from(raw, 4)
    stamp_ns = sec * NS_PER_S + nsec
    r.pos = 12
    frame_id = r.string()
    if compressed:
        fmt = r.string()
        off, n = r.octets()
        return RawImage(raw, True, stamp_ns, frame_id,
                        np.frombuffer(raw, dtype=np.uint8, count=n, offset=off), format=fmt)
    height, width = r.u32(), r.u32()
    encoding = r.string()
    big = r.u8()
    step = r.u32()
    off, n = r.octets()
    return RawImage(raw, False, stamp_ns, frame_id,
                    np.frombuffer(raw, dtype=np.uint8, count=n, offset=off), height, width, encoding, big, step)


def from_message(raw: bytes, compressed: bool) -> RawImage:
    """:class:`RawImage` of serialized bytes through rclpy's deserialisation (the big-endian case)."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CompressedImage, Image

    try:
        msg = deserialize_message(raw, CompressedImage if compressed else Image)
    except Exception as exc:  # noqa: BLE001 - rclpy raises a bare RuntimeError
        raise RawImageError(f"cannot deserialise: {exc}") from exc
    stamp = stamp_to_ns(msg.header.stamp)
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if compressed:
        return RawImage(raw, True, stamp, msg.header.frame_id, data, format=msg.format)
    return RawImage(raw, False, stamp, msg.header.frame_id, data, int(msg.height), int(msg.width), msg.encoding,
                    int(msg.is_bigendian), int(msg.step))
