"""Simulate and write all sensor data of one scene (images, LiDAR sweeps, optional instance masks).

One call of :func:`simulate_scene` is independent of every other scene (own random streams), so scenes can be
generated in parallel processes and the output stays byte-identical. It returns a :class:`SceneRecord` with
everything :mod:`.tables` needs (timestamps, ego poses, file names, annotations with ``num_lidar_pts`` counted
from the written key-frame clouds and visibility from the rendered images).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from labeldistill_ros import geometry as geo

from .cameras import LIDAR_CHANNEL
from .config import SynthConfig
from .lidar import box_members, cast_sweep
from .render import make_backdrop, render_view
from .world import Scene, frame_rng, make_scene

VISIBILITY_BINS = (0.4, 0.6, 0.8)
"""Upper edges of nuScenes visibility levels '1' (0-40 %), '2', '3'; '4' is 80-100 %."""


@dataclass
class FrameRecord:
    """One LiDAR frame (key frames also carry the six images and the annotations).

    Attributes:
        t: scene time (s); timestamp: microseconds; is_key: key frame (sample) or sweep.
        ego2global: ``(4, 4)`` at this time.
        lidar_file: path relative to the dataroot; cam_files: six image paths (key frames only).
        actors: ``(K,)`` indices of the annotated actors; boxes_global: ``(K, 9)`` their boxes in the global
            frame; num_lidar_pts: ``(K,)`` points of this frame's cloud inside each box; visibility: ``(K,)``
            nuScenes visibility tokens ('1'..'4').
    """

    t: float
    timestamp: int
    is_key: bool
    ego2global: np.ndarray
    lidar_file: str
    cam_files: list[str] = field(default_factory=list)
    actors: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    boxes_global: np.ndarray = field(default_factory=lambda: np.zeros((0, 9)))
    num_lidar_pts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    visibility: list[str] = field(default_factory=list)


@dataclass
class SceneRecord:
    """A simulated scene: its :class:`~.world.Scene` and its frames in time order."""

    scene: Scene
    frames: list[FrameRecord]


def visibility_token(fraction: float) -> str:
    """nuScenes visibility token for a visible fraction in [0, 1]."""
    return str(1 + int(np.searchsorted(VISIBILITY_BINS, fraction, side="right")))


def _file_name(scene: Scene, folder: str, channel: str, timestamp: int, ext: str) -> str:
    return f"{folder}/{channel}/{scene.logfile}__{channel}__{timestamp}.{ext}"


def count_points_in_boxes(points_lidar: np.ndarray, lidar2ego: np.ndarray, boxes_ego: np.ndarray) -> np.ndarray:
    """``(N,)`` number of points of a cloud ``(P, >=3)`` (LiDAR frame, as written) inside each ego box."""
    if len(boxes_ego) == 0:
        return np.zeros(0, dtype=np.int64)
    pe = geo.transform_points(lidar2ego, np.asarray(points_lidar[:, :3], dtype=np.float64))
    return np.array([len(m) for m in box_members(pe, boxes_ego)], dtype=np.int64)


def simulate_scene(config: SynthConfig, seed: int, index: int, dataroot: str) -> SceneRecord:
    """Build scene ``index``, ray-cast all its LiDAR frames, render its key-frame images and write them.

    Args:
        config: dataset preset; seed: master seed; index: scene index; dataroot: output root folder.
    Returns:
        The :class:`SceneRecord` (file names relative to ``dataroot``).
    """
    scene = make_scene(config, seed, index)
    parts = [a.parts for a in scene.actors]
    backdrops = [make_backdrop(c, scene.look) for c in scene.cameras]
    beam_rng = frame_rng(scene, 9, 0)
    dead_ring = int(beam_rng.integers(32)) if beam_rng.random() < 0.2 else -1

    times = sorted([(float(t), True) for t in scene.key_times] + [(float(t), False) for t in scene.sweep_times])
    frames: list[FrameRecord] = []
    for fi, (t, is_key) in enumerate(times):
        ts = scene.timestamp_us(t)
        boxes = scene.boxes_ego(t)
        ego_xy = (scene.ego_x(t), scene.ego_y)
        sweep = cast_sweep(scene.lidar, boxes, parts, ego_xy, frame_rng(scene, 1, fi), dead_ring=dead_ring)
        lidar_file = _file_name(scene, "samples" if is_key else "sweeps", LIDAR_CHANNEL, ts, "pcd.bin")
        _write_bytes(os.path.join(dataroot, lidar_file), sweep.points.astype(np.float32).tobytes())
        rec = FrameRecord(t=t, timestamp=ts, is_key=is_key, ego2global=scene.ego2global(t), lidar_file=lidar_file)
        if is_key:
            visible = np.zeros(len(boxes), dtype=np.int64)
            full = np.zeros(len(boxes), dtype=np.int64)
            for ci, (cam, bd) in enumerate(zip(scene.cameras, backdrops)):
                out = render_view(cam, bd, scene.look, boxes, parts, ego_xy, frame_rng(scene, 2, fi, ci))
                visible += out.visible_px
                full += out.full_px
                cam_file = _file_name(scene, "samples", cam.channel, ts, "jpg")
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out.image, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
                assert ok
                _write_bytes(os.path.join(dataroot, cam_file), buf.tobytes())
                rec.cam_files.append(cam_file)
                if config.write_masks:
                    mask_file = _file_name(scene, "synth_masks", cam.channel, ts, "png")
                    ok, buf = cv2.imencode(".png", out.instance.astype(np.uint16))
                    _write_bytes(os.path.join(dataroot, mask_file), buf.tobytes())
            annotated = np.nonzero(scene.annotated(t))[0]
            counts = count_points_in_boxes(sweep.points, scene.lidar.lidar2ego, boxes)
            frac = np.where(full > 0, visible / np.maximum(full, 1), 0.0)
            rec.actors = annotated
            rec.boxes_global = geo.transform_boxes(scene.boxes_road(t), scene.road2global)[annotated]
            rec.num_lidar_pts = counts[annotated]
            rec.visibility = [visibility_token(min(1.0, f)) for f in frac[annotated]]
        frames.append(rec)
    return SceneRecord(scene, frames)


def _write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
