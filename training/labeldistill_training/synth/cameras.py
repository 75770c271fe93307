"""Sensor rig of the synthetic car: six cameras in the real nuScenes ring layout and a top LiDAR.

Mounting positions, headings and focal lengths are those of the nuScenes car (log n015, rounded); intrinsics are
scaled to the rendered image size. Each scene (log) gets a small calibration perturbation, so consumers must read
the per-sample ``calibrated_sensor`` records rather than assume one rig.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labeldistill_ros import geometry as geo

from ..data.config import CAMERA_CHANNELS  # the six nuScenes channels, network order

LIDAR_CHANNEL = "LIDAR_TOP"

# channel: (position in ego (m), optical-axis heading about ego +z (deg), focal length (px at 1600x900),
#           principal point (px at 1600x900)).
_NUSCENES_RIG: dict[str, tuple[tuple[float, float, float], float, float, tuple[float, float]]] = {
    "CAM_FRONT": ((1.70, 0.016, 1.51), 0.3, 1266.4, (816.3, 491.5)),
    "CAM_FRONT_RIGHT": ((1.55, -0.493, 1.50), -56.4, 1260.8, (808.0, 495.3)),
    "CAM_FRONT_LEFT": ((1.52, 0.495, 1.51), 55.2, 1272.6, (826.6, 479.8)),
    "CAM_BACK": ((0.028, 0.004, 1.58), 179.9, 809.2, (829.2, 481.8)),
    "CAM_BACK_LEFT": ((1.04, 0.485, 1.59), 108.6, 1256.7, (792.1, 492.8)),
    "CAM_BACK_RIGHT": ((1.01, -0.481, 1.56), -110.8, 1259.5, (807.3, 501.2)),
}
_LIDAR_POSITION = (0.943, 0.0, 1.84)
_LIDAR_YAW_DEG = -90.0

# Optical frame (x right, y down, z forward) -> ego frame (x forward, y left, z up) for a camera looking along +x.
_OPTICAL_TO_FORWARD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class CameraSpec:
    """One calibrated camera.

    Attributes:
        channel: nuScenes channel name.
        K: ``(3, 3)`` intrinsics in pixels of the ``width x height`` image.
        cam2ego: ``(4, 4)`` camera-optical -> ego transform (m).
        width, height: image size in pixels.
    """

    channel: str
    K: np.ndarray
    cam2ego: np.ndarray
    width: int
    height: int


@dataclass(frozen=True)
class LidarSpec:
    """The top LiDAR (a 32-beam spinning sensor, HDL-32E-like).

    Attributes:
        lidar2ego: ``(4, 4)`` LiDAR -> ego transform (yawed -90 deg like the real car: LiDAR x = ego -y).
        elevations_deg: ``(32,)`` beam elevations, lowest first (ring index = position in this array).
        azimuth_steps: rays per revolution.
        max_range: metres.
    """

    lidar2ego: np.ndarray
    elevations_deg: np.ndarray
    azimuth_steps: int
    max_range: float = 70.0


def _rot_zyx(yaw_deg: float, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Rotation R = Rz(yaw) @ Ry(pitch) @ Rx(roll) about the ego axes (degrees)."""
    y, p, r = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    Rz = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
    Ry = np.array([[np.cos(p), 0, np.sin(p)], [0, 1, 0], [-np.sin(p), 0, np.cos(p)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(r), -np.sin(r)], [0, np.sin(r), np.cos(r)]])
    return Rz @ Ry @ Rx


def camera_rig(width: int, height: int, rng: np.random.Generator | None = None) -> list[CameraSpec]:
    """The six cameras for a ``width x height`` image, optionally with a per-log calibration perturbation.

    Args:
        width, height: image size in pixels (intrinsics scale by ``width / 1600`` and ``height / 900``).
        rng: if given, perturbs each mounting by N(0, 1 cm) in position and N(0, 0.3 deg) in yaw/pitch/roll.
    Returns:
        Six :class:`CameraSpec` in :data:`CAMERA_CHANNELS` order.
    """
    sx, sy = width / 1600.0, height / 900.0
    cams = []
    for ch in CAMERA_CHANNELS:
        pos, yaw, f, (cx, cy) = _NUSCENES_RIG[ch]
        pos = np.array(pos, dtype=np.float64)
        dyaw = dpitch = droll = 0.0
        if rng is not None:
            pos = pos + rng.normal(0.0, 0.01, 3)
            dyaw, dpitch, droll = rng.normal(0.0, 0.3, 3)
        R = _rot_zyx(yaw + dyaw, dpitch, droll) @ _OPTICAL_TO_FORWARD
        K = np.array([[f * sx, 0.0, cx * sx], [0.0, f * sy, cy * sy], [0.0, 0.0, 1.0]])
        cams.append(CameraSpec(ch, K, geo.make_transform(R, pos), int(width), int(height)))
    return cams


def lidar_rig(azimuth_steps: int, rng: np.random.Generator | None = None) -> LidarSpec:
    """The top LiDAR: 32 beams from -30.67 deg to +10.67 deg elevation, mounted at 1.84 m, yawed -90 deg.

    Args:
        azimuth_steps: rays per revolution.
        rng: if given, perturbs the mounting by N(0, 1 cm) and N(0, 0.2 deg).
    """
    pos = np.array(_LIDAR_POSITION)
    dyaw = dpitch = droll = 0.0
    if rng is not None:
        pos = pos + rng.normal(0.0, 0.01, 3)
        dyaw, dpitch, droll = rng.normal(0.0, 0.2, 3)
    R = _rot_zyx(_LIDAR_YAW_DEG + dyaw, dpitch, droll)
    elev = np.linspace(-30.67, 10.67, 32)
    return LidarSpec(geo.make_transform(R, pos), elev, int(azimuth_steps))
