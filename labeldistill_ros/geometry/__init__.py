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
accepts torch tensors because the network builds it on the fly. One job per module, all names importable from here:

* :mod:`.transforms`: rotations (quaternion, matrix, yaw, slerp) and rigid transforms, pinhole projection;
* :mod:`.boxes`: box corners, points in boxes, box moves, nuScenes and ROS pose forms;
* :mod:`.augmentation`: the ``ida`` / ``bda`` augmentation matrices and the 27-d camera vector.
"""
from __future__ import annotations

from .augmentation import augment_intrinsics, bev_aug_matrix, camera_vector_27, img_aug_matrix, intrinsics_4x4
from .boxes import (box_corners, box_to_pose, boxes_to_nuscenes, nuscenes_to_boxes, points_in_boxes, pose_to_box,
                    transform_boxes)
from .transforms import (invert_rigid, invert_transform, make_transform, matrix_to_quat, project_points,
                         quat_to_matrix, quat_to_yaw, slerp_quat, transform_points, unproject_points, wrap_angle,
                         yaw_to_quat)

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

__all__ = ["CLASS_NAMES", "TASK_GROUPS", "augment_intrinsics", "bev_aug_matrix", "box_corners", "box_to_pose",
           "boxes_to_nuscenes", "camera_vector_27", "img_aug_matrix", "intrinsics_4x4", "invert_rigid",
           "invert_transform", "make_transform", "matrix_to_quat", "nuscenes_to_boxes", "points_in_boxes",
           "pose_to_box", "project_points", "quat_to_matrix", "quat_to_yaw", "slerp_quat", "transform_boxes",
           "transform_points", "unproject_points", "wrap_angle", "yaw_to_quat"]
