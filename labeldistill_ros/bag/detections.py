"""Detections in a bag -> numpy: ``vision_msgs/Detection3DArray`` (ground truth or a recorded run) as
:class:`BoxFrame`, and the velocities an ``autoware_perception_msgs/DetectedObjects`` carries, joined to the boxes
of the same set. Boxes use the project layout ``(N, 9)`` ``x, y, z, l, w, h, yaw, vx, vy`` in the message's frame
(metres, radians, m/s); stamps are integer nanoseconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..geometry import pose_to_box, quat_to_yaw
from ..ros_convert import stamp_to_ns, velocity_from_object_frame


@dataclass
class BoxFrame:
    """Boxes of one Detection3DArray: ``boxes (N, 9)`` in ``frame_id`` (velocity 0 unless known), ``names``
    (class_id strings), ``scores (N,)``, ``ids`` (Detection3D.id: instance token for ground truth),
    ``sample_token`` (ground truth only), ``receive_ns`` (bag receive time; for a recording of a live run the
    wall clock at reception)."""

    stamp_ns: int
    frame_id: str
    boxes: np.ndarray
    names: list[str]
    scores: np.ndarray
    ids: list[str] = field(default_factory=list)
    sample_token: str = ""
    receive_ns: int = 0


def detections_from_msg(msg, velocities: np.ndarray | None = None) -> BoxFrame:
    """vision_msgs/Detection3DArray -> :class:`BoxFrame`. Class and score are taken from the best hypothesis;
    ``velocities (N, 2)`` (m/s, same frame) fill the boxes' vx, vy when given."""
    n = len(msg.detections)
    boxes = np.zeros((n, 9))
    names, scores, ids = [], np.zeros(n), []
    for i, d in enumerate(msg.detections):
        c = d.bbox.center
        boxes[i] = pose_to_box([c.position.x, c.position.y, c.position.z],
                               [c.orientation.x, c.orientation.y, c.orientation.z, c.orientation.w],
                               [d.bbox.size.x, d.bbox.size.y, d.bbox.size.z])
        if d.results:
            best = max(d.results, key=lambda r: r.hypothesis.score)
            names.append(best.hypothesis.class_id)
            scores[i] = best.hypothesis.score
        else:
            names.append("")
        ids.append(d.id)
    if velocities is not None and len(velocities):
        v = np.asarray(velocities, dtype=np.float64).reshape(-1, 2)
        if len(v) != n:
            raise ValueError(f"{len(v)} velocities for {n} boxes")
        boxes[:, 7:9] = v
    return BoxFrame(stamp_to_ns(msg.header.stamp), msg.header.frame_id, boxes, names, scores, ids)


def velocities_from_objects(msg) -> tuple[int, np.ndarray, np.ndarray]:
    """autoware_perception_msgs/DetectedObjects -> ``(stamp_ns, centres (N, 3), velocities (N, 2))`` in the
    message frame (m, m/s): each object's twist (x along its heading, y to its left) turned by its heading
    (:func:`~labeldistill_ros.ros_convert.velocity_from_object_frame`)."""
    n = len(msg.objects)
    centres, quats, twist = np.zeros((n, 3)), np.zeros((n, 4)), np.zeros((n, 2))
    for i, o in enumerate(msg.objects):
        k = o.kinematics
        p, q = k.pose_with_covariance.pose.position, k.pose_with_covariance.pose.orientation
        centres[i] = (p.x, p.y, p.z)
        quats[i] = (q.w, q.x, q.y, q.z)
        if k.has_twist:
            twist[i] = (k.twist_with_covariance.twist.linear.x, k.twist_with_covariance.twist.linear.y)
    yaw = quat_to_yaw(quats) if n else np.zeros(0)
    return stamp_to_ns(msg.header.stamp), centres, velocity_from_object_frame(yaw, twist)


def attach_velocities(frames: list[BoxFrame], objects: list[tuple[int, np.ndarray, np.ndarray]],
                      tol_m: float = 1e-3) -> int:
    """Fill the boxes' vx, vy of each detection frame from the DetectedObjects message of the same stamp (the node
    publishes both from one set): object ``i`` is box ``i`` when the centres agree within ``tol_m``, else each
    box takes the object nearest to its centre (within ``tol_m``). Returns how many frames got velocities."""
    by_stamp = {st: (c, v) for st, c, v in objects}
    filled = 0
    for f in frames:
        hit = by_stamp.get(f.stamp_ns)
        if hit is None or not len(f.boxes):
            continue
        centres, vel = hit
        if len(centres) == len(f.boxes) and np.all(np.abs(centres - f.boxes[:, :3]) <= tol_m):
            f.boxes[:, 7:9] = vel
        else:
            d = np.linalg.norm(f.boxes[:, None, :3] - centres[None, :, :], axis=2) if len(centres) else None
            if d is None:
                continue
            j = d.argmin(axis=1)
            ok = d[np.arange(len(j)), j] <= tol_m
            f.boxes[ok, 7:9] = vel[j[ok]]
        filled += 1
    return filled
