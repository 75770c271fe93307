"""CameraInfo validation and the calibration cache (K per camera, extrinsics from a TF lookup, change key)."""
from __future__ import annotations

import numpy as np
import pytest

from labeldistill_ros.node.calibration import CalibrationCache, CalibrationError, intrinsics

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
