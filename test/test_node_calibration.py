"""CameraInfo validation and the calibration cache (K per camera, extrinsics from a TF lookup, change key)."""
from __future__ import annotations

import numpy as np
import pytest

from labeldistill_ros.node.calibration import CalibrationCache, CalibrationError, intrinsics
from labeldistill_ros.ros_convert import transform_msg

pytestmark = pytest.mark.timeout(30)

K = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])


def info(k=K, w=1600, h=900, frame="CAM_FRONT", d=(0.0,) * 5):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo(width=w, height=h, k=[float(v) for v in np.asarray(k).reshape(-1)], d=list(d),
                     distortion_model="plumb_bob")
    msg.header.frame_id = frame
    return msg


def test_valid_intrinsics():
    Kv, size, warning = intrinsics(info())
    np.testing.assert_array_equal(Kv, K)
    assert size == (1600, 900) and warning is None
    _, _, warning = intrinsics(info(d=(-0.3, 0.1, 0, 0, 0)), "camera_info of CAM_X")
    assert "CAM_X" in warning and "rectified" in warning


@pytest.mark.parametrize("k,match", [
    (np.zeros(9), r"fx = k\[0\] and fy = k\[4\] must be > 0.*uncalibrated"),
    (np.where(np.eye(3) > 0, np.nan, 0.0), "non-finite"),
    (np.array([[100.0, 0, 50], [0, 100, 50], [0, 0, 0]]), "not a pinhole matrix"),
])
def test_bad_k_names_the_field_and_the_fix(k, match):
    with pytest.raises(CalibrationError, match=match):
        intrinsics(info(k=k), "camera_info of CAM_FRONT")


class Lookup:
    def __init__(self):
        self.T = {f"CAM_{i}": np.eye(4) for i in range(3)}
        self.calls = []

    def __call__(self, target, source, stamp, timeout):
        self.calls.append((target, source, stamp, timeout))
        return self.T[source]


def test_cache_resolves_calibration_and_tracks_changes():
    names = ["CAM_0", "CAM_1", "CAM_2"]
    c = CalibrationCache(names, "base_link")
    lookup = Lookup()
    for i in range(3):
        c.update_info(i, info(frame=names[i]))
    sizes = [(1600, 900)] * 3
    a = c.resolve([0, 1, 2], names, sizes, [1, 2, 3], lookup, 0.05)
    assert a.changed and a.Ks.shape == (3, 3, 3) and a.cam2target.shape == (3, 4, 4)
    assert lookup.calls[1] == ("base_link", "CAM_1", 2, 0.05)
    assert not c.resolve([0, 1, 2], names, sizes, [4, 5, 6], lookup, 0.05).changed  # same calibration
    lookup.T["CAM_1"] = np.diag([1.0, 1.0, 1.0, 1.0]) + np.eye(4, k=3) * 0.1  # TF changed (new /tf_static)
    b = c.resolve([0, 1, 2], names, sizes, [7, 8, 9], lookup, 0.05)
    assert b.changed and b.key != a.key
    c.update_info(2, info(k=K * [[1.01], [1.01], [1]]))  # new CameraInfo
    assert c.resolve([0, 1, 2], names, sizes, [7, 8, 9], lookup, 0.05).changed
    sub = c.resolve([0, 2], ["CAM_0", "CAM_2"], sizes[:2], [7, 9], lookup, 0.05)  # a camera skipped
    assert sub.changed and sub.cameras == (0, 2) and sub.Ks.shape == (2, 3, 3)
    assert c.changes == 4


def test_cache_errors_and_frame_selection():
    c = CalibrationCache(["CAM_0", "CAM_1"], "base_link")
    with pytest.raises(CalibrationError, match="CAM_0: no valid camera_info"):
        c.resolve([0], ["CAM_0"], [(1600, 900)], [0], Lookup(), 0.0)
    c.update_info(0, info(frame="info_frame"))
    with pytest.raises(CalibrationError, match="the image is 800x450 but its camera_info says width=1600"):
        c.resolve([0], ["CAM_0"], [(800, 450)], [0], Lookup(), 0.0)
    assert c.frame_of(0, "img_frame") == "img_frame" and c.frame_of(0, "") == "info_frame"
    c.update_info(1, info(frame=""))
    with pytest.raises(CalibrationError, match="camera_frames"):
        c.frame_of(1, "")
    with pytest.raises(CalibrationError, match="must be > 0"):
        c.update_info(1, info(k=np.zeros(9)))
    assert not c.has_info(1)  # a bad CameraInfo replaces the old one: no stale K is used
    override = CalibrationCache(["CAM_0"], "base_link", camera_frames=["cam0_optical"])
    assert override.frame_of(0, "img_frame") == "cam0_optical"


def test_ego_motion_between_camera_stamps_is_compensated_through_the_fixed_frame():
    """The ego drives at 10 m/s while turning; three cameras fire 0, 20 and 40 ms apart. A world-fixed landmark
    seen by each camera at its own stamp lands on one position in base_link at the reference (latest) stamp; the
    static extrinsics alone put it up to 0.4 m off. Without the fixed frame on TF: static extrinsics, flagged."""
    from labeldistill_ros import geometry as g
    from labeldistill_ros.node.ros_compat import TfBackend, TransformBuffer

    names = ["CAM_0", "CAM_1", "CAM_2"]
    buf = TransformBuffer()
    optical = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    static = [g.make_transform(g.quat_to_matrix(g.yaw_to_quat(yaw)) @ optical, [1.0, 0.2 * i, 1.6])
              for i, yaw in enumerate((0.0, 0.9, -0.9))]
    for n, T in zip(names, static):
        buf.set_transform_static(transform_msg("base_link", n, T, 0))
    t0 = 1_000_000_000_000

    def pose(t_ns):  # base_link -> map: 10 m/s along a 0.2 rad/s turn
        dt = (t_ns - t0) / 1e9
        return g.make_transform(g.quat_to_matrix(g.yaw_to_quat(0.3 + 0.2 * dt)), [100 + 10 * dt, 50 + 2 * dt, 0.0])

    for k in range(-5, 10):
        buf.set_transform(transform_msg("map", "base_link", pose(t0 + k * 10_000_000), t0 + k * 10_000_000))
    tf = TfBackend.from_buffer(buf)
    c = CalibrationCache(names, "base_link")
    for i in range(3):
        c.update_info(i, info(frame=names[i]))
    stamps = [t0, t0 + 20_000_000, t0 + 40_000_000]
    cal = c.resolve([0, 1, 2], names, [(1600, 900)] * 3, stamps, tf.lookup_matrix, 0.0, "map", tf.exceptions)
    assert cal.compensated and cal.reference_stamp_ns == stamps[2]
    np.testing.assert_allclose(cal.ego_pose, pose(stamps[2]), atol=1e-9)
    landmark = np.array([130.0, 60.0, 1.0, 1.0])  # map frame
    want = np.linalg.inv(pose(stamps[2])) @ landmark  # in base_link at the reference stamp
    for i, s in enumerate(stamps):
        in_cam = np.linalg.inv(pose(s) @ static[i]) @ landmark  # what camera i measured at its own stamp
        np.testing.assert_allclose(cal.cam2target[i] @ in_cam, want, atol=1e-6)
        static_err = np.linalg.norm((static[i] @ in_cam - want)[:3])
        assert (static_err > 0.3) == (i == 0)  # the earliest camera, 40 ms before: ~0.4 m off uncompensated
    off = CalibrationCache(names, "base_link")
    for i in range(3):
        off.update_info(i, info(frame=names[i]))
    cal2 = off.resolve([0, 1, 2], names, [(1600, 900)] * 3, stamps, tf.lookup_matrix, 0.0, "odom", tf.exceptions)
    assert not cal2.compensated and "odom" in cal2.uncompensated_reason and cal2.ego_pose is None
    np.testing.assert_allclose(cal2.cam2target, np.stack(static), atol=1e-9)
    assert cal2.key == cal.key  # the change key follows the static calibration, not the motion
