"""Rotations (quaternions [w, x, y, z], matrices, yaw, slerp) and rigid 4x4 transforms of points, with the pinhole
projection between ego points and pixels. Conventions: :mod:`labeldistill_ros.geometry`."""
from __future__ import annotations

import numpy as np


# --------------------------------------------------------------------------------------------------------------
# Rotations
# --------------------------------------------------------------------------------------------------------------
def quat_to_matrix(q_wxyz: np.ndarray) -> np.ndarray:
    """Unit quaternion(s) [w, x, y, z] ``(..., 4)`` -> rotation matrix ``(..., 3, 3)`` (normalised first)."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    R = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return R.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrix ``(..., 3, 3)`` -> unit quaternion [w, x, y, z] ``(..., 4)`` with w >= 0.

    Uses the numerically stable branch (largest of w, x, y, z) per matrix.
    """
    R = np.asarray(R, dtype=np.float64)
    batch = R.shape[:-2]
    m = R.reshape(-1, 3, 3)
    r = {(i, j): m[:, i, j] for i in range(3) for j in range(3)}
    tr = r[0, 0] + r[1, 1] + r[2, 2]
    # 4 * squares of |w|, |x|, |y|, |z|; each candidate below divides by the largest one's root.
    sq = np.stack([1 + tr, 1 + 2 * r[0, 0] - tr, 1 + 2 * r[1, 1] - tr, 1 + 2 * r[2, 2] - tr], axis=1)
    s = 2.0 * np.sqrt(np.maximum(sq, 1e-12))  # (M, 4)
    cands = np.stack(
        [
            np.stack([s[:, 0] / 4, (r[2, 1] - r[1, 2]) / s[:, 0], (r[0, 2] - r[2, 0]) / s[:, 0],
                      (r[1, 0] - r[0, 1]) / s[:, 0]], axis=1),
            np.stack([(r[2, 1] - r[1, 2]) / s[:, 1], s[:, 1] / 4, (r[0, 1] + r[1, 0]) / s[:, 1],
                      (r[0, 2] + r[2, 0]) / s[:, 1]], axis=1),
            np.stack([(r[0, 2] - r[2, 0]) / s[:, 2], (r[0, 1] + r[1, 0]) / s[:, 2], s[:, 2] / 4,
                      (r[1, 2] + r[2, 1]) / s[:, 2]], axis=1),
            np.stack([(r[1, 0] - r[0, 1]) / s[:, 3], (r[0, 2] + r[2, 0]) / s[:, 3],
                      (r[1, 2] + r[2, 1]) / s[:, 3], s[:, 3] / 4], axis=1),
        ],
        axis=1,
    )  # (M, 4 branches, 4)
    q = cands[np.arange(len(m)), np.argmax(sq, axis=1)]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1.0
    return q.reshape(batch + (4,))


def yaw_to_quat(yaw) -> np.ndarray:
    """Yaw angle(s) about +z in radians, shape ``(...)`` -> quaternion(s) [w, x, y, z] ``(..., 4)``, w >= 0."""
    half = 0.5 * np.asarray(yaw, dtype=np.float64)
    q = np.stack([np.cos(half), np.zeros_like(half), np.zeros_like(half), np.sin(half)], axis=-1)
    return np.where(q[..., :1] < 0, -q, q)


def quat_to_yaw(q_wxyz) -> np.ndarray:
    """Heading of the rotated +x axis in the xy plane, ``atan2(R[1,0], R[0,0])`` in (-pi, pi].

    Equal to nuScenes' ``Quaternion.yaw_pitch_roll[0]``. Input ``(..., 4)`` [w, x, y, z], output ``(...)``.
    """
    R = quat_to_matrix(q_wxyz)
    return np.arctan2(R[..., 1, 0], R[..., 0, 0])


def slerp_quat(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions ``(4,)`` at fraction ``a`` in [0, 1] (the shorter arc;
    linear and renormalised when they are nearly equal). Works for either component order, [w, x, y, z] or ROS's
    [x, y, z, w], as long as both inputs use the same one."""
    q0, q1 = np.asarray(q0, dtype=np.float64), np.asarray(q1, dtype=np.float64)
    d = float(np.dot(q0, q1))
    if d < 0.0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + a * (q1 - q0)
    else:
        th = np.arccos(d)
        q = (np.sin((1 - a) * th) * q0 + np.sin(a * th) * q1) / np.sin(th)
    return q / np.linalg.norm(q)


def wrap_angle(a) -> np.ndarray:
    """Wrap angle(s) in radians to [-pi, pi)."""
    return (np.asarray(a, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi


# --------------------------------------------------------------------------------------------------------------
# Rigid transforms and points
# --------------------------------------------------------------------------------------------------------------
def make_transform(R_or_quat, t) -> np.ndarray:
    """4x4 transform from a rotation (3x3 matrix or [w, x, y, z] quaternion) and a translation (3,) in metres."""
    R = np.asarray(R_or_quat, dtype=np.float64)
    if R.shape == (4,):
        R = quat_to_matrix(R)
    if R.shape != (3, 3):
        raise ValueError(f"make_transform: rotation must be (3, 3) or a (4,) quaternion, got {R.shape}")
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (orthonormal rotation): ``[R^T, -R^T t]``, no LAPACK call (a 4x4
    ``np.linalg.inv`` goes through OpenBLAS, whose threads stall for a fraction of a millisecond per call on a
    busy machine; the node inverts a dozen TF transforms per camera set)."""
    T = np.asarray(T, dtype=np.float64)
    out = np.eye(4)
    Rt = T[:3, :3].T
    out[:3, :3] = Rt
    out[:3, 3] = -(Rt @ T[:3, 3])
    return out


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of 4x4 transform(s) ``(..., 4, 4)`` whose linear part is any invertible 3x3 (rigid or not)."""
    T = np.asarray(T, dtype=np.float64)
    A = T[..., :3, :3]
    t = T[..., :3, 3:]
    Ainv = np.linalg.inv(A)
    out = np.zeros_like(T)
    out[..., :3, :3] = Ainv
    out[..., :3, 3:] = -Ainv @ t
    out[..., 3, 3] = 1.0
    return out


def transform_points(T: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points ``(N, 3)`` -> ``(N, 3)`` (same units)."""
    T = np.asarray(T, dtype=np.float64)
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    return pts @ T[:3, :3].T + T[:3, 3]


def project_points(pts_ego: np.ndarray, cam2ego: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ego points into a pinhole camera.

    Args:
        pts_ego: ``(N, 3)`` points in the ego frame (m).
        cam2ego: ``(4, 4)`` camera-optical -> ego transform.
        K: ``(3, 3)`` intrinsics of the (un-augmented or augmented) image, pixels.
    Returns:
        ``uv (N, 2)`` pixel coordinates and ``depth (N,)`` = z in the camera optical frame (m). Rows with
        ``depth <= 0`` lie behind the camera and their ``uv`` is meaningless (depth is clamped to 1e-9 in the
        division so no warnings/inf are produced); filter them with ``depth > 0``.
    """
    pc = transform_points(invert_transform(cam2ego), pts_ego)
    uvw = pc @ np.asarray(K, dtype=np.float64).T
    depth = pc[:, 2]
    z = np.where(np.abs(uvw[:, 2]) < 1e-9, 1e-9, uvw[:, 2])
    return uvw[:, :2] / z[:, None], depth


def unproject_points(uv: np.ndarray, depth: np.ndarray, cam2ego: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Inverse of :func:`project_points`: pixels ``(N, 2)`` + camera depth ``(N,)`` (m) -> ego points ``(N, 3)``."""
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    d = np.asarray(depth, dtype=np.float64).reshape(-1, 1)
    pix = np.concatenate([uv * d, d], axis=1)
    pc = pix @ np.linalg.inv(np.asarray(K, dtype=np.float64)).T
    return transform_points(cam2ego, pc)
