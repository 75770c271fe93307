"""labeldistill_ros.ros_convert: the one place that converts stamps, transforms, poses over time, images, the
Autoware twist and class colours between ROS messages (rclpy or rosbags) and numpy."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from labeldistill_ros import ros_convert as rcv
from labeldistill_ros.geometry import make_transform, yaw_to_quat

pytestmark = pytest.mark.timeout(60)


def test_stamps_round_trip_through_rclpy_and_rosbags_messages():
    from rclpy.time import Time

    from labeldistill_ros.bag.typestore import typestore

    for ns in (0, 1, 999_999_999, 1_000_000_000, 1532402927_604844000, -1):
        sec, nsec = rcv.split_ns(ns)
        assert 0 <= nsec < rcv.NS_PER_S and sec * rcv.NS_PER_S + nsec == ns
        assert rcv.stamp_to_ns(rcv.stamp_msg(ns)) == ns
        assert rcv.stamp_to_ns(rcv.stamp_msg(ns, typestore().types)) == ns
    assert rcv.stamp_to_ns(Time(nanoseconds=42)) == 42 and rcv.stamp_to_ns(None) == 0 and rcv.stamp_to_ns(7) == 7
    with pytest.raises(TypeError, match="cannot read a time"):
        rcv.stamp_to_ns("now")
    d = rcv.duration_msg(2.5)
    assert (d.sec, d.nanosec) == (2, 500_000_000)


def test_transforms_round_trip_for_rclpy_and_rosbags():
    from labeldistill_ros.bag.typestore import typestore

    T = make_transform(yaw_to_quat(0.7), [1.0, -2.0, 0.5])
    for types in (None, typestore().types):
        msg = rcv.transform_msg("base_link", "CAM_FRONT", T, 5 * rcv.NS_PER_S + 3, types)
        assert (msg.header.frame_id, msg.child_frame_id) == ("base_link", "CAM_FRONT")
        assert rcv.stamp_to_ns(msg.header.stamp) == 5 * rcv.NS_PER_S + 3
        np.testing.assert_allclose(rcv.transform_to_matrix(msg), T, atol=1e-12)
        np.testing.assert_allclose(rcv.transform_to_matrix(msg.transform), T, atol=1e-12)
        q = msg.transform.rotation  # ROS order x, y, z, w: a yaw of 0.7 about +z
        np.testing.assert_allclose([q.x, q.y, q.z, q.w], [0, 0, np.sin(0.35), np.cos(0.35)], atol=1e-12)


def test_pose_trajectory_interpolates_and_refuses_to_extrapolate():
    T0, T1 = make_transform(yaw_to_quat(0.0), [0, 0, 0]), make_transform(yaw_to_quat(1.0), [2, 4, 0])
    tr = rcv.PoseTrajectory([200, 100], [T1, T0])  # any order
    assert len(tr) == 2 and tr.stamps == [100, 200]
    mid = tr.at(150)
    np.testing.assert_allclose(mid[:3, 3], [1, 2, 0])
    assert np.isclose(np.arctan2(mid[1, 0], mid[0, 0]), 0.5)  # slerp: half the yaw
    np.testing.assert_allclose(tr.at(200), T1)
    with pytest.raises(rcv.ExtrapolationError, match="outside the recorded poses") as err:
        tr.at(201)
    assert (err.value.side, err.value.nearest_ns, err.value.requested_ns) == ("future", 200, 201)
    assert rcv.PoseTrajectory([100], [T0], max_extrapolation_ns=10).at(90) is not None
    tr.add(300, [9, 9, 9], [1, 0, 0, 0])
    tr.drop_before(200)
    assert tr.stamps == [200, 300]
    with pytest.raises(LookupError, match="no poses"):
        rcv.PoseTrajectory().at(0)


class _Image:
    def __init__(self, rgb, encoding, pad=0):
        data = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "mono8": rgb[..., :1],
                "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])}[encoding]
        data = np.ascontiguousarray(data).reshape(rgb.shape[0], -1)
        self.height, self.width, self.encoding = rgb.shape[0], rgb.shape[1], encoding
        self.step = data.shape[1] + pad
        self.data = np.pad(data, ((0, 0), (0, pad))).tobytes()


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "mono8"])
def test_decode_image_with_and_without_opencv(encoding, monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    if encoding == "mono8":
        rgb[..., 1] = rgb[..., 2] = rgb[..., 0]
    msg = _Image(rgb, encoding, pad=3)
    np.testing.assert_array_equal(rcv.decode_image(msg), rgb)
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError: the numpy path
    np.testing.assert_array_equal(rcv.decode_image(msg), rgb)


def test_decode_compressed_and_its_errors():
    rgb = np.random.default_rng(1).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    np.testing.assert_array_equal(rcv.decode_compressed(png.tobytes()), rgb)
    np.testing.assert_array_equal(rcv.decode_compressed(png), rgb)  # rosbags hands over an ndarray
    with pytest.raises(rcv.ImageError, match="CAM_X: compressed data is empty"):
        rcv.decode_compressed(b"", "CAM_X", "jpeg")
    with pytest.raises(rcv.ImageError, match="truncated or not JPEG/PNG"):
        rcv.decode_compressed(png.tobytes()[:20], "CAM_X", "png")


def test_twist_round_trip_and_class_colours():
    rng = np.random.default_rng(2)
    boxes = np.zeros((5, 9))
    boxes[:, 6], boxes[:, 7:9] = rng.uniform(-np.pi, np.pi, 5), rng.normal(size=(5, 2))
    twist = rcv.velocity_in_object_frame(boxes)
    np.testing.assert_allclose(np.linalg.norm(twist, axis=1), np.linalg.norm(boxes[:, 7:9], axis=1))
    np.testing.assert_allclose(rcv.velocity_from_object_frame(boxes[:, 6], twist), boxes[:, 7:9], atol=1e-12)
    assert rcv.class_rgb("trailer") == (1.0, 140 / 255, 0.0) and rcv.class_rgb("?") == (160 / 255,) * 3


def test_imports_without_rclpy_or_opencv():
    code = ("import sys; import labeldistill_ros.ros_convert, labeldistill_ros.bag.reader; "
            "bad = [m for m in ('rclpy', 'cv2', 'torch') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
