"""The seam to tf2_ros / message_filters / cv_bridge: selection logic (with stand-in modules for the ROS
packages), the in-package TF buffer's lookup semantics, the latched /tf_static listener with real rclpy, and the
image converters (every encoding, malformed messages, compressed images)."""
from __future__ import annotations

import json
import sys
import threading
import time
import types

import cv2
import numpy as np
import pytest

from labeldistill_ros.geometry import make_transform, yaw_to_quat
from labeldistill_ros.node import ros_compat as rc
from labeldistill_ros.ros_convert import NS_PER_S as S
from labeldistill_ros.ros_convert import transform_msg, transform_to_matrix

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------------- helpers
def rot_z(yaw, t=(0, 0, 0)):
    return make_transform(yaw_to_quat(yaw), t)



@pytest.fixture
def fake_modules(monkeypatch):
    """Install stand-in modules under the ROS package names (as on a vehicle) for the selection tests."""
    def install(name, **attrs):
        mod = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(mod, k, v)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod
    monkeypatch.setattr(rc, "_BRIDGES", {})
    monkeypatch.delenv(rc.MODE_ENV, raising=False)
    return install


# -------------------------------------------------------------------------------------------------- selection
def test_here_every_optional_package_falls_back():
    assert rc.backends() == {"tf2_ros": "fallback", "message_filters": "fallback", "cv_bridge": "fallback"}


def test_a_missing_package_is_searched_for_once_not_per_image(monkeypatch):
    """The staging thread asks for cv_bridge per image: a failed import must not walk the path again each time."""
    monkeypatch.delenv(rc.MODE_ENV, raising=False)
    monkeypatch.setattr(rc, "_NOT_IMPORTABLE", set())
    searched = []

    class CountingFinder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "cv_bridge":
                searched.append(name)
            return None  # let the real finders answer

    monkeypatch.setattr(sys, "meta_path", [CountingFinder, *sys.meta_path])
    assert [rc.optional_module("cv_bridge") for _ in range(5)] == [None] * 5
    assert searched == ["cv_bridge"]
    mod = types.ModuleType("cv_bridge")  # installed later in the process (a test, a shim): found
    monkeypatch.setitem(sys.modules, "cv_bridge", mod)
    assert rc.optional_module("cv_bridge") is mod


def test_installed_packages_are_used_unless_forced_to_fallback(fake_modules, monkeypatch):
    for name in rc.OPTIONAL:
        fake_modules(name)
    assert rc.backends() == {n: "ros" for n in rc.OPTIONAL}
    assert rc.optional_module("tf2_ros") is sys.modules["tf2_ros"]
    monkeypatch.setenv(rc.MODE_ENV, "fallback")
    assert rc.backends() == {n: "fallback" for n in rc.OPTIONAL}
    monkeypatch.setenv(rc.MODE_ENV, "sometimes")
    with pytest.raises(ValueError, match="LABELDISTILL_ROS_COMPAT"):
        rc.backends()


def test_tf_backend_uses_tf2_ros_when_installed(fake_modules):
    calls = {}

    class TransformException(Exception):
        pass

    class Buffer:
        def __init__(self, cache_time=None, node=None):
            calls["buffer"] = (cache_time.nanoseconds, node)

        def lookup_transform(self, target, source, time, timeout):
            calls["lookup"] = (target, source, time.nanoseconds, timeout.nanoseconds)
            return transform_msg(target, source, rot_z(0.5, (1, 2, 3)))

        def clear(self):
            calls["clear"] = True

    class TransformListener:
        def __init__(self, buffer, node):
            calls["listener"] = (buffer, node)

    fake_modules("tf2_ros", Buffer=Buffer, TransformListener=TransformListener,
                 TransformException=TransformException)
    node = object()
    tf = rc.TfBackend(node, cache_time_s=10.0)
    assert tf.kind == "tf2_ros" and calls["buffer"] == (10 * S, node) and calls["listener"][1] is node
    assert TransformException in tf.exceptions
    T = tf.lookup_matrix("base_link", "CAM_FRONT", 5 * S + 7, 0.05)
    np.testing.assert_allclose(T, rot_z(0.5, (1, 2, 3)), atol=1e-12)
    assert calls["lookup"] == ("base_link", "CAM_FRONT", 5 * S + 7, 50_000_000)
    tf.clear()
    assert calls["clear"]


def test_cv_bridge_is_used_after_the_same_validation(fake_modules):
    used = []

    class CvBridge:
        def imgmsg_to_cv2(self, msg, desired_encoding):
            used.append(desired_encoding)
            return np.zeros((msg.height, msg.width, 3), np.uint8)

    fake_modules("cv_bridge", CvBridge=CvBridge)
    out = rc.image_to_rgb(make_image(np.zeros((4, 5, 3), np.uint8), "bgr8"))
    assert out.shape == (4, 5, 3) and used == ["rgb8"]
    with pytest.raises(rc.ImageError, match="encoding"):  # our check runs first: same message on a vehicle
        rc.image_to_rgb(make_image(np.zeros((4, 5, 3), np.uint8), "bgr8", label="yuv422"))
    assert used == ["rgb8"]


def test_subscribe_goes_through_message_filters_when_installed(fake_modules):
    made = []

    class Subscriber:
        def __init__(self, node, msg_type, topic, qos_profile=None):
            made.append((node, msg_type, topic, qos_profile))
            self.cbs = []

        def registerCallback(self, cb):
            self.cbs.append(cb)

    class Node:
        def create_subscription(self, *a):
            made.append(("plain",) + a)
            return "sub"

    node = Node()
    assert rc.subscribe(node, int, "/t", "qos", print, mode="fallback") == "sub"
    assert made[-1] == ("plain", int, "/t", print, "qos")
    fake_modules("message_filters", Subscriber=Subscriber)
    sub = rc.subscribe(node, int, "/t", "qos", print)
    assert made[-1] == (node, int, "/t", "qos") and sub.cbs == [print]


# ---------------------------------------------------------------------------------------------------- TF buffer
def test_static_chain_lookup_both_directions_at_any_time():
    buf = rc.TransformBuffer()
    T_base_mount = rot_z(0.3, (1.0, 0.5, 1.2))
    T_mount_cam = make_transform(np.array([0.5, -0.5, 0.5, -0.5]), (0.1, 0.0, 0.05))  # optical frame
    buf.set_transform_static(transform_msg("base_link", "mount", T_base_mount))
    buf.set_transform_static(transform_msg("mount", "cam", T_mount_cam))
    T, _ = buf.lookup_matrix("base_link", "cam", 123 * S)
    np.testing.assert_allclose(T, T_base_mount @ T_mount_cam, atol=1e-12)
    T_inv, _ = buf.lookup_matrix("cam", "base_link", 0)
    np.testing.assert_allclose(T_inv, np.linalg.inv(T_base_mount @ T_mount_cam), atol=1e-12)
    msg = buf.lookup_transform("base_link", "cam", None)
    assert (msg.header.frame_id, msg.child_frame_id) == ("base_link", "cam")
    np.testing.assert_allclose(transform_to_matrix(msg), T, atol=1e-12)
    # sibling frames through their common parent
    buf.set_transform_static(transform_msg("base_link", "lidar", rot_z(-1.0, (0.9, 0, 1.8))))
    T_cl, _ = buf.lookup_matrix("lidar", "cam", 0)
    np.testing.assert_allclose(T_cl, np.linalg.inv(rot_z(-1.0, (0.9, 0, 1.8))) @ T, atol=1e-12)


def test_dynamic_transforms_interpolate_and_refuse_to_extrapolate():
    buf = rc.TransformBuffer()
    buf.set_transform(transform_msg("map", "base_link", rot_z(0.0, (0, 0, 0)), 10 * S))
    buf.set_transform(transform_msg("map", "base_link", rot_z(1.0, (2, 4, 0)), 11 * S))
    T, stamp = buf.lookup_matrix("map", "base_link", 10 * S + S // 4)
    np.testing.assert_allclose(T, rot_z(0.25, (0.5, 1.0, 0)), atol=1e-9)  # lerp + slerp
    T, stamp = buf.lookup_matrix("map", "base_link", 0)  # latest
    assert stamp == 11 * S
    np.testing.assert_allclose(T, rot_z(1.0, (2, 4, 0)), atol=1e-12)
    with pytest.raises(rc.ExtrapolationException, match="into the future.*base_link"):
        buf.lookup_matrix("map", "base_link", 12 * S)
    with pytest.raises(rc.ExtrapolationException, match="into the past"):
        buf.lookup_matrix("map", "base_link", 9 * S)
    # a static camera under the moving base: static edge at any time, dynamic edge interpolated
    buf.set_transform_static(transform_msg("base_link", "cam", rot_z(0.0, (1, 0, 0))))
    T, _ = buf.lookup_matrix("map", "cam", 10 * S + S // 2)
    np.testing.assert_allclose(T, rot_z(0.5, (1, 2, 0)) @ rot_z(0.0, (1, 0, 0)), atol=1e-9)
    buf.clear()  # time jumped back: dynamic data forgotten, static kept
    assert buf.can_transform("base_link", "cam")
    with pytest.raises(rc.LookupException):
        buf.lookup_matrix("map", "cam", 0)


def test_missing_and_disconnected_frames_raise_clear_errors():
    buf = rc.TransformBuffer()
    buf.set_transform_static(transform_msg("base_link", "CAM_FRONT", np.eye(4)))
    buf.set_transform_static(transform_msg("odom", "imu", np.eye(4)))
    with pytest.raises(rc.LookupException, match='"CAM_BACK" passed to lookupTransform argument source_frame'):
        buf.lookup_matrix("base_link", "CAM_BACK", 0)
    with pytest.raises(rc.ConnectivityException, match="not part of the same tree"):
        buf.lookup_matrix("base_link", "imu", 0)
    assert issubclass(rc.ExtrapolationException, rc.TransformException)
    t = time.monotonic()
    with pytest.raises(rc.LookupException):
        buf.lookup_matrix("base_link", "CAM_BACK", 0, timeout=0.1)
    assert 0.09 < time.monotonic() - t < 1.0


def test_lookup_waits_for_a_transform_that_arrives_within_the_timeout():
    buf = rc.TransformBuffer()
    buf.set_transform_static(transform_msg("base_link", "x", np.eye(4)))
    threading.Timer(0.05, lambda: buf.set_transform_static(transform_msg("base_link", "cam", rot_z(0.1)))).start()
    T, _ = buf.lookup_matrix("base_link", "cam", 0, timeout=2.0)
    np.testing.assert_allclose(T, rot_z(0.1), atol=1e-12)


def test_invalid_transforms_are_rejected():
    buf = rc.TransformBuffer()
    bad = transform_msg("base_link", "cam", np.eye(4))
    bad.transform.rotation.w = 0.0
    assert not buf.set_transform_static(bad)
    assert not buf.set_transform_static(transform_msg("a", "a", np.eye(4)))
    assert buf.all_frames() == set()


def test_real_calibration_round_trips_through_the_buffer(real_sample_dir):
    sample = json.loads((real_sample_dir / "sample.json").read_text())
    buf = rc.TransformBuffer()
    for cam, c in sample["cameras"].items():
        buf.set_transform_static(transform_msg("base_link", cam, np.array(c["cam2ego"])))
    for cam, c in sample["cameras"].items():
        T, _ = buf.lookup_matrix("base_link", cam, int(c["timestamp_s"] * 1e9))
        np.testing.assert_allclose(T, np.array(c["cam2ego"]), atol=1e-6)  # stored matrices: 1e-8 from orthonormal


def test_listener_receives_latched_tf_static_published_before_it_started(rclpy_context):
    """A late-joining node still gets /tf_static (transient local), and /tf updates arrive too."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from ros_helpers import spin_until
    from tf2_msgs.msg import TFMessage

    pub_node = rclpy.create_node("ld_test_tf_pub", context=rclpy_context)
    static_pub = pub_node.create_publisher(TFMessage, "/tf_static",
                                           QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    static_pub.publish(TFMessage(transforms=[transform_msg("base_link", "CAM_FRONT", rot_z(0.2, (1.7, 0, 1.5)))]))
    dyn_pub = pub_node.create_publisher(TFMessage, "/tf", 100)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(pub_node)
    ex.spin_once(timeout_sec=0.1)

    node = rclpy.create_node("ld_test_tf_listener", context=rclpy_context)
    ex.add_node(node)
    buf = rc.TransformBuffer()
    rc.TransformListener(buf, node)
    assert spin_until(ex, lambda: buf.can_transform("base_link", "CAM_FRONT"), 15.0), "latched /tf_static missed"
    np.testing.assert_allclose(buf.lookup_matrix("base_link", "CAM_FRONT", 0)[0], rot_z(0.2, (1.7, 0, 1.5)),
                               atol=1e-9)
    msg = TFMessage(transforms=[transform_msg("map", "base_link", rot_z(0.0, (5, 0, 0)), 42 * S)])
    assert spin_until(ex, lambda: buf.can_transform("map", "CAM_FRONT", 42 * S), 15.0,
                      on_tick=lambda: dyn_pub.publish(msg))


# -------------------------------------------------------------------------------------------------------- images
def make_image(rgb: np.ndarray, encoding: str, pad: int = 0, label: str | None = None):
    """An Image of ``rgb`` in ``encoding`` (rows padded by ``pad`` bytes); ``label`` overrides the encoding field."""
    from sensor_msgs.msg import Image

    enc = label or encoding
    conv = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]),
            "bgra8": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)]),
            "mono8": rgb[..., 0]}[encoding]
    h, w = rgb.shape[:2]
    rows = conv.reshape(h, -1)
    if pad:
        rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=enc, step=rows.shape[1], data=rows.tobytes())


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
@pytest.mark.parametrize("pad", [0, 5])
def test_every_encoding_converts_to_rgb(encoding, pad):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    out = rc.image_to_rgb(make_image(rgb, encoding, pad=pad))
    expected = np.repeat(rgb[..., :1], 3, axis=2) if encoding == "mono8" else rgb
    assert out.dtype == np.uint8 and out.shape == (6, 9, 3)
    np.testing.assert_array_equal(out, expected)


def test_rgb8_is_a_view_and_conversions_reuse_the_output_buffer():
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    msg = make_image(rgb, "rgb8")
    assert not rc.image_to_rgb(msg).flags.owndata  # no copy of a 4 MB image per frame
    buf = np.empty((4, 5, 3), np.uint8)
    out = rc.image_to_rgb(make_image(rgb, "bgr8"), out=buf)
    assert out is buf or np.shares_memory(out, buf)
    np.testing.assert_array_equal(buf, rgb)


@pytest.mark.parametrize("field,value,match", [
    ("encoding", "yuv422", r"encoding 'yuv422' is not supported.*bgr8"),
    ("encoding", "passthrough", "is not supported"),
    ("step", 10, r"step=10 is smaller than width\*channels=5\*3=15"),
    ("height", 0, "height=0"),
])
def test_malformed_images_name_the_field(field, value, match):
    msg = make_image(np.zeros((4, 5, 3), np.uint8), "rgb8")
    setattr(msg, field, value)
    with pytest.raises(rc.ImageError, match=match):
        rc.image_to_rgb(msg, "CAM_FRONT image")


def test_truncated_and_oversized_data_are_rejected():
    msg = make_image(np.zeros((4, 5, 3), np.uint8), "rgb8")
    msg.data = bytes(59)
    with pytest.raises(rc.ImageError, match=r"CAM_X: data has 59 bytes but step\*height = 15\*4 = 60 \(truncated\)"):
        rc.image_to_rgb(msg, "CAM_X")
    msg.data = bytes(61)
    with pytest.raises(rc.ImageError, match="too long"):
        rc.image_to_rgb(msg)
    msg.width = 6  # size mismatch: step no longer covers a row
    msg.data = bytes(60)
    with pytest.raises(rc.ImageError, match="step=15"):
        rc.image_to_rgb(msg)


def test_compressed_images_decode_to_rgb():
    from sensor_msgs.msg import CompressedImage

    rgb = np.random.default_rng(2).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    out = rc.compressed_to_rgb(CompressedImage(format="png", data=png.tobytes()))
    np.testing.assert_array_equal(out, rgb)  # lossless
    smooth = np.tile(np.linspace(0, 255, 24, dtype=np.uint8)[None, :, None], (16, 1, 3))
    smooth[..., 2] = 40
    ok, jpg = cv2.imencode(".jpg", smooth[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = rc.compressed_to_rgb(CompressedImage(format="jpeg", data=jpg.tobytes()))
    assert np.abs(out.astype(int) - smooth).max() < 12 and out[..., 2].mean() < 60  # RGB order, not BGR
    with pytest.raises(rc.ImageError, match=r"cannot decode compressed image \(format 'jpeg', 50 bytes\)"):
        rc.compressed_to_rgb(CompressedImage(format="jpeg", data=jpg.tobytes()[:50]))
    with pytest.raises(rc.ImageError, match="empty"):
        rc.compressed_to_rgb(CompressedImage(format="jpeg", data=b""))
