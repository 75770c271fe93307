"""Boxes in the project layout ``(N, 9)`` ``x, y, z, l, w, h, yaw, vx, vy``: corners, points inside, moves between
frames, and the nuScenes and ROS pose forms. Conventions: :mod:`labeldistill_ros.geometry`."""
from __future__ import annotations

import numpy as np

from .transforms import matrix_to_quat, quat_to_matrix, quat_to_yaw, transform_points, wrap_angle, yaw_to_quat


# --------------------------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------------------------
def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners of boxes ``(N, >=7)`` -> ``(N, 8, 3)`` in the boxes' frame.

    Corner order, in the box's own axes (x along l/heading, y along w, z up) with signs of (x, y, z):
    0 (+,+,-), 1 (+,-,-), 2 (-,-,-), 3 (-,+,-), then 4..7 the same with z = +: i.e. bottom face 0-3
    counter-clockwise seen from above starting front-left, top face 4-7 above them.
    """
    b = np.asarray(boxes, dtype=np.float64)
    b = b.reshape(-1, b.shape[-1])
    sx = np.array([1, 1, -1, -1, 1, 1, -1, -1], dtype=np.float64)
    sy = np.array([1, -1, -1, 1, 1, -1, -1, 1], dtype=np.float64)
    sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1], dtype=np.float64)
    local = np.stack(
        [sx[None] * b[:, 3:4] / 2, sy[None] * b[:, 4:5] / 2, sz[None] * b[:, 5:6] / 2], axis=-1
    )  # (N, 8, 3)
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    x = local[..., 0] * c[:, None] - local[..., 1] * s[:, None]
    y = local[..., 0] * s[:, None] + local[..., 1] * c[:, None]
    return np.stack([x, y, local[..., 2]], axis=-1) + b[:, None, :3]


def points_in_boxes(pts: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(M, N)`` bool: point m (``pts (M, >=3)``, only xyz used) lies inside box n (``(N, >=7)``), borders included.

    Points and boxes must be in the same frame; boxes are upright (rotation about z only).
    """
    p = np.asarray(pts, dtype=np.float64)[:, :3]
    b = np.asarray(boxes, dtype=np.float64)
    b = b.reshape(-1, b.shape[-1]) if b.size else np.zeros((0, 7))
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    out = np.zeros((len(p), len(b)), dtype=bool)
    for start in range(0, len(p), 65536):  # bounded memory for large clouds
        chunk = p[start : start + 65536]
        dx, dy = chunk[:, :1] - b[:, 0], chunk[:, 1:2] - b[:, 1]
        out[start : start + 65536] = (
            (np.abs(dx * c + dy * s) <= b[:, 3] / 2)
            & (np.abs(-dx * s + dy * c) <= b[:, 4] / 2)
            & (np.abs(chunk[:, 2:3] - b[:, 2]) <= b[:, 5] / 2)
        )
    return out


def transform_boxes(boxes: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Move boxes ``(N, 7 or 9)`` with a 4x4 similarity transform ``T`` (rotation about z, optional axis flips,
    uniform scale, translation): used for the BEV augmentation (``bda``) and for ego <-> other-frame moves whose
    rotation is (close to) a pure yaw.

    * centre: ``T @ [x, y, z, 1]``;
    * size: multiplied by the uniform scale ``|det(A)|^(1/3)`` (A = ``T[:3, :3]``), as BEVDepth's bev_transform;
    * yaw: heading of ``A @ [cos yaw, sin yaw, 0]`` (handles flips: flip_x gives pi - yaw, flip_y gives -yaw);
    * velocity: ``A[:2, :2] @ [vx, vy]`` (includes the scale, as BEVDepth).

    For transforms with roll/pitch (e.g. ego -> global on a slope) use :func:`boxes_to_nuscenes`, which composes
    full quaternions.
    """
    b = np.array(boxes, dtype=np.float64).reshape(-1, np.shape(boxes)[-1])
    T = np.asarray(T, dtype=np.float64)
    A = T[:3, :3]
    out = b.copy()
    out[:, :3] = b[:, :3] @ A.T + T[:3, 3]
    out[:, 3:6] = b[:, 3:6] * np.abs(np.linalg.det(A)) ** (1.0 / 3.0)
    heading = np.stack([np.cos(b[:, 6]), np.sin(b[:, 6]), np.zeros(len(b))], axis=1) @ A.T
    out[:, 6] = wrap_angle(np.arctan2(heading[:, 1], heading[:, 0]))
    if b.shape[1] >= 9:
        out[:, 7:9] = b[:, 7:9] @ A[:2, :2].T
    return out


def boxes_to_nuscenes(boxes: np.ndarray, ego2global: np.ndarray) -> list[dict]:
    """Ego boxes ``(N, 9)`` -> nuScenes-format dicts in the global frame.

    Each dict: ``translation`` [x, y, z] (m, geometric centre), ``size`` [w, l, h] (m), ``rotation``
    [w, x, y, z] = q(ego2global) * q_z(yaw) (full 3D composition, as nuScenes' ``Box.rotate``), ``velocity``
    [vx, vy] = xy of R(ego2global) @ [vx, vy, 0] (m/s). Plain Python floats, ready for a results JSON.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, np.shape(boxes)[-1])
    T = np.asarray(ego2global, dtype=np.float64)
    Rg = T[:3, :3]
    centres = transform_points(T, b[:, :3])
    rot = matrix_to_quat(Rg[None] @ quat_to_matrix(yaw_to_quat(b[:, 6])))
    if b.shape[1] >= 9:
        vel = np.concatenate([b[:, 7:9], np.zeros((len(b), 1))], axis=1) @ Rg.T
    else:
        vel = np.zeros((len(b), 3))
    return [
        {
            "translation": centres[i].tolist(),
            "size": [float(b[i, 4]), float(b[i, 3]), float(b[i, 5])],
            "rotation": rot[i].tolist(),
            "velocity": vel[i, :2].tolist(),
        }
        for i in range(len(b))
    ]


def nuscenes_to_boxes(
    translations, sizes_wlh, rotations_wxyz, velocities, global2ego: np.ndarray
) -> np.ndarray:
    """nuScenes global boxes -> ego boxes ``(N, 9)``; the exact inverse of :func:`boxes_to_nuscenes`.

    Args: ``translations (N, 3)`` m, ``sizes_wlh (N, 3)`` m, ``rotations_wxyz (N, 4)``, ``velocities (N, 2)``
    m/s (NaN -> 0, as nuScenes gives NaN when it cannot estimate one), ``global2ego`` 4x4.
    ``yaw = atan2(R[1,0], R[0,0])`` of ``R(global2ego) @ R(box)`` (nuScenes' yaw_pitch_roll[0] after
    ``Box.rotate``); velocity = xy of ``R(global2ego) @ [vx, vy, 0]``.
    """
    t = np.asarray(translations, dtype=np.float64).reshape(-1, 3)
    n = len(t)
    s = np.asarray(sizes_wlh, dtype=np.float64).reshape(n, 3)
    q = np.asarray(rotations_wxyz, dtype=np.float64).reshape(n, 4)
    v = np.nan_to_num(np.asarray(velocities, dtype=np.float64).reshape(n, 2))
    T = np.asarray(global2ego, dtype=np.float64)
    R = T[:3, :3][None] @ quat_to_matrix(q)
    out = np.zeros((n, 9))
    out[:, :3] = transform_points(T, t)
    out[:, 3] = s[:, 1]
    out[:, 4] = s[:, 0]
    out[:, 5] = s[:, 2]
    out[:, 6] = np.arctan2(R[:, 1, 0], R[:, 0, 0])
    out[:, 7:9] = (np.concatenate([v, np.zeros((n, 1))], axis=1) @ T[:3, :3].T)[:, :2]
    return out


def box_to_pose(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One box ``(>=7,)`` -> (position ``(3,)`` xyz m, orientation quaternion ``(4,)`` [x, y, z, w]).

    For ``geometry_msgs/Pose`` / ``vision_msgs/BoundingBox3D.center``; the matching ``size`` is (l, w, h) =
    ``box[3:6]``.
    """
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    w, x, y, z = yaw_to_quat(b[6])
    return b[:3].copy(), np.array([x, y, z, w])


def pose_to_box(position, quat_xyzw, size_lwh, velocity=(0.0, 0.0)) -> np.ndarray:
    """Inverse of :func:`box_to_pose`: pose + size (l, w, h) (+ optional (vx, vy)) -> box ``(9,)``.

    The yaw is the heading of the pose's rotated +x axis (roll/pitch, if any, are dropped).
    """
    qx, qy, qz, qw = np.asarray(quat_xyzw, dtype=np.float64).reshape(4)
    out = np.zeros(9)
    out[:3] = np.asarray(position, dtype=np.float64).reshape(3)
    out[3:6] = np.asarray(size_lwh, dtype=np.float64).reshape(3)
    out[6] = quat_to_yaw(np.array([qw, qx, qy, qz]))
    out[7:9] = np.asarray(velocity, dtype=np.float64).reshape(2)
    return out
