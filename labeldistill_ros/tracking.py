"""Object velocity from motion across camera sets: a constant-velocity Kalman tracker in a fixed frame.

A single-frame student sees one instant and cannot tell how fast an object moves (its vx, vy stay near 0). Its
boxes over consecutive sets can: each class's boxes are associated with the tracks of the previous sets (greedy
nearest neighbour on the tracks' predicted positions, within ``gate_m``), and each track runs a Kalman filter on
its centre with state ``(x, y, vx, vy)`` in the fixed frame. A new track starts at velocity 0 with the class's
speed prior as its uncertainty, so a track seen twice with a metre of detection noise does not jump to a
metre-per-half-second speed: the filter weighs the displacement against that noise (``position_noise_m``).

The same object serves the node (sets in time order, boxes moved into its ``fixed_frame``) and the offline
evaluation (each scene's key frames in order, in the global frame), so the velocity scored offline is the velocity
the node publishes. Frames: the caller's fixed frame (``map`` / global), metres, seconds; boxes use the project
layout ``(N, 9)`` x, y, z, l, w, h, yaw, vx, vy (:mod:`labeldistill_ros.geometry.boxes`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry.transforms import transform_points

# Typical speed (m/s, one sigma) of each nuScenes class: the prior of a new track's velocity. Static classes get a
# small prior, so noise in their positions is not read as motion.
SPEED_PRIOR_MPS = {"car": 6.0, "truck": 6.0, "bus": 6.0, "trailer": 4.0, "construction_vehicle": 1.0,
                   "pedestrian": 1.0, "motorcycle": 5.0, "bicycle": 3.0, "barrier": 0.05, "traffic_cone": 0.05}

MAX_SPEED_FACTOR = 2.5  # a track's first association reaches MAX_SPEED_FACTOR x its class's speed prior x dt


@dataclass
class TrackerConfig:
    """``gate_m``: the largest distance (m) between a track's predicted centre and a box to associate them.
    ``position_noise_m``: one sigma of a detected centre (m). ``accel_noise_mps2``: one sigma of the
    acceleration between sets (m/s^2). ``max_gap_s``: a track not seen for longer is dropped. ``min_updates``:
    a track's velocity is reported once it has been associated this many times (a new track reports the
    model's own velocity)."""

    gate_m: float = 3.0
    position_noise_m: float = 0.8
    accel_noise_mps2: float = 1.0
    max_gap_s: float = 1.5
    min_updates: int = 1


class _Track:
    __slots__ = ("label", "x", "P", "t_ns", "updates")

    def __init__(self, label: int, xy: np.ndarray, t_ns: int, pos_var: float, speed_sigma: float):
        self.label, self.t_ns, self.updates = label, t_ns, 0
        self.x = np.array([xy[0], xy[1], 0.0, 0.0])
        self.P = np.diag([pos_var, pos_var, speed_sigma ** 2, speed_sigma ** 2])


class VelocityTracker:
    """Tracks the boxes of successive camera sets and estimates each box's velocity (see the module docstring).

    Args:
        class_names: the model's class names (labels index them).
        config: :class:`TrackerConfig`.
    """

    def __init__(self, class_names, config: TrackerConfig | None = None):
        self.class_names = tuple(class_names)
        self.cfg = config or TrackerConfig()
        self._speed = np.array([SPEED_PRIOR_MPS.get(n, 3.0) for n in self.class_names])
        self._tracks: list[_Track] = []
        self._last_ns: int | None = None

    def reset(self) -> None:
        """Forget every track (a new drive, a bag loop, time going back)."""
        self._tracks.clear()
        self._last_ns = None

    def __len__(self) -> int:
        return len(self._tracks)

    def update(self, stamp_ns: int, centres_xy: np.ndarray, labels: np.ndarray, scores: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Associate one set's boxes with the tracks and update them.

        ``centres_xy``: ``(N, 2)`` box centres in the fixed frame (m), ``labels``: ``(N,)`` class indices,
        ``scores``: ``(N,)`` (the higher-scored box first between equally near pairs), ``stamp_ns``: the set's
        stamp. Returns ``(velocity (N, 2) m/s in the fixed frame, known (N,) bool)``: ``known`` is False for a box
        that started a track (its velocity is then 0 here: keep the model's). A stamp not after the previous one
        resets the tracker first.
        """
        centres_xy = np.asarray(centres_xy, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        n = len(labels)
        if self._last_ns is not None and stamp_ns <= self._last_ns:
            self.reset()
        self._last_ns = stamp_ns
        cfg = self.cfg
        self._tracks = [t for t in self._tracks if (stamp_ns - t.t_ns) * 1e-9 <= cfg.max_gap_s]
        dts = [(stamp_ns - t.t_ns) * 1e-9 for t in self._tracks]  # s since each track was last predicted
        for t, dt in zip(self._tracks, dts):
            self._predict(t, dt)
            t.t_ns = stamp_ns
        vel = np.zeros((n, 2))
        known = np.zeros(n, dtype=bool)
        # Candidate pairs (distance, track, box) of the same class within the track's gate; a track seen once has
        # no velocity yet, so its gate also covers the class's fastest plausible motion since then.
        rank = -np.asarray(scores, dtype=np.float64).reshape(-1) if scores is not None else np.zeros(n)
        pairs = []
        for ti, t in enumerate(self._tracks):
            gate = cfg.gate_m + (MAX_SPEED_FACTOR * self._speed[t.label] * dts[ti] if t.updates == 0 else 0.0)
            for i in np.flatnonzero(labels == t.label):
                d = float(np.hypot(*(t.x[:2] - centres_xy[i])))
                if d <= gate:
                    pairs.append((d, float(rank[i]), ti, int(i)))
        used_t, used_b = set(), set()
        for _d, _r, ti, i in sorted(pairs):  # globally nearest first
            if ti in used_t or i in used_b:
                continue
            used_t.add(ti)
            used_b.add(i)
            t = self._tracks[ti]
            self._correct(t, centres_xy[i])
            t.updates += 1
            if t.updates >= cfg.min_updates:
                vel[i], known[i] = t.x[2:], True
        for i in range(n):
            if i not in used_b:
                self._tracks.append(_Track(int(labels[i]), centres_xy[i], stamp_ns, cfg.position_noise_m ** 2,
                                           float(self._speed[labels[i]])))
        return vel, known

    def _predict(self, t: _Track, dt: float) -> None:
        F = np.eye(4)
        F[0, 2] = F[1, 3] = dt
        q = self.cfg.accel_noise_mps2 ** 2
        G = np.array([[dt * dt / 2, 0], [0, dt * dt / 2], [dt, 0], [0, dt]])
        t.x = F @ t.x
        t.P = F @ t.P @ F.T + q * (G @ G.T)

    def _correct(self, t: _Track, z: np.ndarray) -> None:
        H = np.zeros((2, 4))
        H[0, 0] = H[1, 1] = 1.0
        S = H @ t.P @ H.T + np.eye(2) * self.cfg.position_noise_m ** 2
        K = t.P @ H.T @ np.linalg.inv(S)
        t.x = t.x + K @ (z - H @ t.x)
        t.P = (np.eye(4) - K @ H) @ t.P


def apply_tracked_velocity(tracker: VelocityTracker, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                           stamp_ns: int, target2fixed: np.ndarray | None) -> np.ndarray:
    """One set's boxes ``(N, 9)`` in the target frame (``base_link`` / the key ego frame) with vx, vy replaced by the
    tracked velocity where a track has one (a copy; the model's velocity elsewhere). ``target2fixed``: ``(4, 4)``
    target -> fixed frame (``map`` / global) at ``stamp_ns``; None (no pose): the boxes come back unchanged and the
    tracker is left as it was. The velocity is the object's own (not relative to the ego vehicle), expressed in the
    target frame, as the model's and nuScenes' are."""
    boxes = np.array(boxes, dtype=np.float64, copy=True)
    if target2fixed is None:
        return boxes
    T = np.asarray(target2fixed, dtype=np.float64)
    vel, known = tracker.update(int(stamp_ns), transform_points(T, boxes[:, :3])[:, :2], labels, scores)
    if known.any():
        boxes[known, 7:9] = vel[known] @ T[:2, :2]  # fixed -> target: R^T v, row-wise
    return boxes
