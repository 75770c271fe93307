"""Image and BEV augmentation matrices (BEVDepth conventions: ``ida``, ``bda``), the augmented intrinsics and the
27-d camera vector the depth network reads. Conventions: :mod:`labeldistill_ros.geometry`."""
from __future__ import annotations

from typing import Sequence

import numpy as np


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
