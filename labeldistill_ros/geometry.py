"""Frames, rotations, camera projection, augmentation matrices and box conversions for the whole project.

Conventions (fixed for every module of ``labeldistill_ros`` and ``training``):

Frames
    * **ego** = ``base_link``: x forward, y left, z up, metres, origin at the rear-axle centre on the ground
      (nuScenes ``ego_pose``).
    * **camera optical**: x right, y down, z forward (depth), metres.
    * **LiDAR** as in nuScenes (``LIDAR_TOP``: on the real car it is yawed -90 deg relative to ego, x right,
      y forward); only reached through a ``lidar2ego`` transform.
    * **global**: nuScenes map frame (x east-ish, y north-ish, z up).
    * **pixel**: (u, v) = (column, row) with (0, 0) at the centre of the top-left pixel, in pixels.
    * Transforms are 4x4 homogeneous matrices ``T_a2b`` (named ``a2b``) that map column vectors of points in
      frame ``a`` to frame ``b``: ``p_b = T_a2b @ [p_a, 1]``.

Boxes
    * Project layout ``(N, 9)`` float: ``x, y, z, l, w, h, yaw, vx, vy`` in ego; (x, y, z) is the geometric
      centre in metres; ``l`` is the extent along the heading, ``w`` across it, ``h`` vertical; ``yaw`` is the
      heading about +z from +x in radians; (vx, vy) in m/s in the same frame. Functions that do not need
      velocity accept ``(N, >=7)``.
    * nuScenes boxes: ``translation`` (geometric centre, global), ``size`` = [w, l, h], ``rotation`` =
      quaternion [w, x, y, z] (global), ``velocity`` = [vx, vy] (global).
    * ROS ``vision_msgs/BoundingBox3D``: ``center`` pose with quaternion [x, y, z, w] and ``size`` = (l, w, h),
      i.e. size.x along the box's own x axis (the heading).

Quaternions are unit, Hamilton convention, [w, x, y, z] unless a name says ``xyzw``.

Everything here is numpy in / numpy out (float64 unless noted), except :func:`camera_vector_27`, which also
accepts torch tensors because the network builds it on the fly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
"""The 10 nuScenes detection classes in the standard order; a label id is an index into this tuple."""

TASK_GROUPS: tuple[tuple[str, ...], ...] = (
    ("car",),
    ("truck", "construction_vehicle"),
    ("bus", "trailer"),
    ("barrier",),
    ("motorcycle", "bicycle"),
    ("pedestrian", "traffic_cone"),
)
"""The six CenterPoint task groups (one head per group); their concatenation equals :data:`CLASS_NAMES`."""


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


# --------------------------------------------------------------------------------------------------------------
# Augmentation matrices (BEVDepth conventions)
# --------------------------------------------------------------------------------------------------------------
def _rot2d_image(rad: float) -> np.ndarray:
    """2x2 rotation of pixel coordinates (v down) that matches PIL's counter-clockwise ``Image.rotate``."""
    c, s = np.cos(rad), np.sin(rad)
    return np.array([[c, s], [-s, c]])


def img_aug_matrix(
    resize: float,
    crop: Sequence[float],
    flip: bool = False,
    rotate_deg: float = 0.0,
) -> np.ndarray:
    """Image-augmentation matrix ``ida`` (BEVDepth's ``ida_mat``), 4x4.

    The image is processed in this order (BEVDepth's ``img_transform``): resize by ``resize`` (both axes),
    crop the box ``crop = (x0, y0, x1, y1)`` (pixels of the resized image; the output is
    ``(x1 - x0) x (y1 - y0)``), optionally flip left-right, then rotate by ``rotate_deg`` degrees
    counter-clockwise about the centre of the cropped image (PIL ``Image.rotate`` sense).

    The matrix acts on column vectors ``[u, v, d, 1]`` of original-image pixel coordinates (u column, v row)
    and returns the augmented-image pixel coordinates ``[u', v', d, 1]``: rows 0-1 hold a 2x2 linear part and
    a translation in column 3; row 2 passes the third entry (depth, or 1 for plain homogeneous pixels
    ``[u, v, 1, 1]``) through unchanged. Because the map is affine in pixels, projecting into the augmented
    image is ``ida @ intrinsics_4x4(K) @ [x, y, z, 1]`` followed by the perspective division of the first two
    entries by the third; :func:`augment_intrinsics` gives the equivalent 3x3.
    """
    x0, y0, x1, y1 = (float(c) for c in crop)
    rot = np.eye(2) * float(resize)
    tran = -np.array([x0, y0])
    if flip:
        A = np.array([[-1.0, 0.0], [0.0, 1.0]])
        rot = A @ rot
        tran = A @ tran + np.array([x1 - x0, 0.0])
    A = _rot2d_image(np.deg2rad(rotate_deg))
    centre = np.array([x1 - x0, y1 - y0]) / 2.0
    rot = A @ rot
    tran = A @ tran + (centre - A @ centre)
    ida = np.eye(4)
    ida[:2, :2] = rot
    ida[:2, 3] = tran
    return ida


def bev_aug_matrix(rot_rad: float = 0.0, scale: float = 1.0, flip_x: bool = False, flip_y: bool = False) -> np.ndarray:
    """BEV-augmentation matrix ``bda`` (BEVDepth's ``bda_mat``), 4x4 acting on ego points ``[x, y, z, 1]``.

    ``bda = F @ S @ Rz(rot_rad)``: rotate about +z by ``rot_rad`` (radians), scale all three axes by
    ``scale``, then ``flip_x`` negates x (BEVDepth ``flip_dx``) and ``flip_y`` negates y (``flip_dy``).
    Apply the same matrix to images (through the network's geometry), boxes (:func:`transform_boxes`) and
    LiDAR points (:func:`transform_points`).
    """
    c, s = np.cos(rot_rad), np.sin(rot_rad)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    F = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0])
    bda = np.eye(4)
    bda[:3, :3] = F @ (float(scale) * np.eye(3)) @ R
    return bda


def intrinsics_4x4(K) -> np.ndarray:
    """Embed a 3x3 intrinsics matrix in 4x4 (``[[K, 0], [0, 1]]``), the form the frustum geometry inverts."""
    out = np.eye(4)
    out[:3, :3] = np.asarray(K, dtype=np.float64)
    return out


def augment_intrinsics(K, ida) -> np.ndarray:
    """3x3 projection matrix of the augmented image: ``[[A, t], [0, 0, 1]] @ K`` with A = ``ida[:2, :2]`` and
    t = ``ida[:2, 3]``. Use it with :func:`project_points` to get augmented-image pixels; it equals a pinhole K
    (no skew) only when the augmentation has no rotation.
    """
    ida = np.asarray(ida, dtype=np.float64)
    M = np.eye(3)
    M[:2, :2] = ida[:2, :2]
    M[:2, 2] = ida[:2, 3]
    return M @ np.asarray(K, dtype=np.float64)


def camera_vector_27(K, cam2ego, ida, bda):
    """BEVDepth's 27-d camera-aware MLP input (``DepthNet.forward``'s ``mlp_input``), batched.

    Accepts numpy arrays or torch tensors (returns the same kind) with any leading batch shape ``...``:
    ``K (..., 3, 3)`` (a 4x4 is also accepted, only the top-left 3x3 is read), ``cam2ego (..., 4, 4)``,
    ``ida (..., 4, 4)``, ``bda (..., 4, 4)`` (broadcast it to the cameras' batch shape yourself).
    Output ``(..., 27)``, in this exact order::

        0  fx = K[0,0]      1  fy = K[1,1]      2  cx = K[0,2]      3  cy = K[1,2]
        4  ida[0,0]         5  ida[0,1]         6  ida[0,3]
        7  ida[1,0]         8  ida[1,1]         9  ida[1,3]
        10 bda[0,0]         11 bda[0,1]         12 bda[1,0]         13 bda[1,1]         14 bda[2,2]
        15..26 cam2ego[:3, :4] row-major (r00 r01 r02 tx r10 r11 r12 ty r20 r21 r22 tz)
    """
    entries = [
        K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2],
        ida[..., 0, 0], ida[..., 0, 1], ida[..., 0, 3], ida[..., 1, 0], ida[..., 1, 1], ida[..., 1, 3],
        bda[..., 0, 0], bda[..., 0, 1], bda[..., 1, 0], bda[..., 1, 1], bda[..., 2, 2],
    ]
    if isinstance(K, np.ndarray):
        head = np.stack(entries, axis=-1)
        tail = cam2ego[..., :3, :4].reshape(cam2ego.shape[:-2] + (12,))
        return np.concatenate([head, tail], axis=-1)
    import torch

    head = torch.stack(entries, dim=-1)
    tail = cam2ego[..., :3, :4].reshape(cam2ego.shape[:-2] + (12,))
    return torch.cat([head, tail], dim=-1)
