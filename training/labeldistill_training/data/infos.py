"""Per-sample info records built through nuscenes-devkit (real or synthetic nuScenes, any split).

One info (a plain dict of numpy arrays and strings, picklable) per key frame::

    sample_token, scene_token, scene_name: str
    timestamp: int                      microseconds (the LIDAR_TOP key frame's)
    frame_index: int                    index of the sample in its scene
    prev_sample_token, next_sample_token: str ('' at the scene ends)
    ego2global: (4, 4) float64          ego pose at the LIDAR_TOP key frame = the sample's "key ego" frame
    lidar: {sample_data_token, path, timestamp, lidar2ego (4, 4), ego2global (4, 4)}
    sweeps: [{sample_data_token, path, timestamp, lidar2ego, ego2global, is_key_frame}, ...]
                                        previous LiDAR sample_data, newest first (up to max_sweeps)
    cams: {CHANNEL: {sample_data_token, path, timestamp, K (3, 3), cam2ego (4, 4), ego2global (4, 4),
                     width, height}}
    gt_boxes: (N, 9) float64            x, y, z, l, w, h, yaw, vx, vy in the key ego frame (velocity from
                                        nusc.box_velocity, NaN -> 0)
    gt_names: list[str]                 detection names (category_to_detection_name); others are skipped
    gt_attributes: list[str]            attribute name or ''
    num_lidar_pts, num_radar_pts: (N,) int64
    valid_flag: (N,) bool               num_lidar_pts + num_radar_pts > 0 (the evaluation's point filter)
    visibility: list[str]               visibility token ('1'..'4', '' if absent)
    instance_tokens, ann_tokens: list[str]

Paths are relative to the dataroot. Matrices are float64 and map column vectors (``p_b = T_a2b @ p_a``).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from labeldistill_ros import geometry as geo


def _calib(nusc, sd: dict) -> np.ndarray:
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    return geo.make_transform(np.array(cs["rotation"]), np.array(cs["translation"]))


def _pose(nusc, sd: dict) -> np.ndarray:
    ep = nusc.get("ego_pose", sd["ego_pose_token"])
    return geo.make_transform(np.array(ep["rotation"]), np.array(ep["translation"]))


def _lidar_record(nusc, sd: dict) -> dict:
    return {"sample_data_token": sd["token"], "path": sd["filename"], "timestamp": int(sd["timestamp"]),
            "lidar2ego": _calib(nusc, sd), "ego2global": _pose(nusc, sd), "is_key_frame": bool(sd["is_key_frame"])}


def _cam_record(nusc, sd: dict) -> dict:
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    return {"sample_data_token": sd["token"], "path": sd["filename"], "timestamp": int(sd["timestamp"]),
            "K": np.array(cs["camera_intrinsic"], dtype=np.float64), "cam2ego": _calib(nusc, sd),
            "ego2global": _pose(nusc, sd), "width": int(sd["width"]), "height": int(sd["height"])}


def sample_info(nusc, sample: dict, frame_index: int, cameras, max_sweeps: int = 10) -> dict:
    """The info record of one ``sample`` (see the module docstring)."""
    from nuscenes.eval.detection.utils import category_to_detection_name

    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    lidar = _lidar_record(nusc, lidar_sd)
    sweeps = []
    sd = lidar_sd
    while len(sweeps) < max_sweeps and sd["prev"]:
        sd = nusc.get("sample_data", sd["prev"])
        sweeps.append(_lidar_record(nusc, sd))
    cams = {ch: _cam_record(nusc, nusc.get("sample_data", sample["data"][ch])) for ch in cameras}
    scene = nusc.get("scene", sample["scene_token"])

    names, attrs, trans, sizes, rots, vels = [], [], [], [], [], []
    n_lidar, n_radar, vis, inst, anns = [], [], [], [], []
    for ann_tok in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_tok)
        name = category_to_detection_name(ann["category_name"])
        if name is None:
            continue
        names.append(name)
        attrs.append(nusc.get("attribute", ann["attribute_tokens"][0])["name"] if ann["attribute_tokens"] else "")
        trans.append(ann["translation"])
        sizes.append(ann["size"])
        rots.append(ann["rotation"])
        vels.append(nusc.box_velocity(ann_tok)[:2])
        n_lidar.append(ann["num_lidar_pts"])
        n_radar.append(ann["num_radar_pts"])
        vis.append(ann.get("visibility_token", "") or "")
        inst.append(ann["instance_token"])
        anns.append(ann_tok)
    ego2global = lidar["ego2global"]
    if names:
        boxes = geo.nuscenes_to_boxes(trans, sizes, rots, vels, geo.invert_transform(ego2global))
    else:
        boxes = np.zeros((0, 9))
    n_lidar = np.array(n_lidar, dtype=np.int64)
    n_radar = np.array(n_radar, dtype=np.int64)
    return {
        "sample_token": sample["token"], "scene_token": sample["scene_token"], "scene_name": scene["name"],
        "timestamp": int(sample["timestamp"]), "frame_index": int(frame_index),
        "prev_sample_token": sample["prev"], "next_sample_token": sample["next"],
        "ego2global": ego2global, "lidar": lidar, "sweeps": sweeps, "cams": cams,
        "gt_boxes": boxes, "gt_names": names, "gt_attributes": attrs,
        "num_lidar_pts": n_lidar, "num_radar_pts": n_radar, "valid_flag": (n_lidar + n_radar) > 0,
        "visibility": vis, "instance_tokens": inst, "ann_tokens": anns,
    }


def create_infos(nusc, split: str, cameras=None, max_sweeps: int = 10, verbose: bool = False) -> list[dict]:
    """Infos of every sample of ``split``, scene by scene in table order and in time order within a scene.

    Args:
        nusc: a loaded ``nuscenes.NuScenes``.
        split: predefined (``mini_val``, ``train``, ...) or custom (``<version>/splits.json``) split name.
        cameras: channels to record (default: the six cameras).
        max_sweeps: previous LiDAR sample_data kept per sample.
        verbose: print progress.
    """
    from nuscenes.utils.splits import get_scenes_of_split

    from .config import CAMERA_CHANNELS

    cameras = tuple(cameras or CAMERA_CHANNELS)
    wanted = set(get_scenes_of_split(split, nusc))
    infos = []
    for scene in nusc.scene:
        if scene["name"] not in wanted:
            continue
        tok, k = scene["first_sample_token"], 0
        while tok:
            sample = nusc.get("sample", tok)
            infos.append(sample_info(nusc, sample, k, cameras, max_sweeps))
            tok, k = sample["next"], k + 1
        if verbose:
            print(f"infos: {scene['name']}: {k} samples")
    return infos


def load_nuscenes(dataroot: str, version: str, verbose: bool = False):
    """``nuscenes.NuScenes(version, dataroot)`` (imported lazily: the devkit import takes ~2 s)."""
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=version, dataroot=str(dataroot), verbose=verbose)


def save_infos(infos: list[dict], path: str | Path) -> None:
    """Pickle infos (atomically: written to a temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(infos, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def load_infos(path: str | Path) -> list[dict]:
    """Load infos written by :func:`save_infos`."""
    with open(path, "rb") as f:
        return pickle.load(f)


def get_infos(dataroot: str, version: str, split: str, cache_dir: str | None = None, max_sweeps: int = 10,
              nusc=None, rebuild: bool = False) -> list[dict]:
    """Infos of a split, cached as ``<cache_dir or dataroot/infos>/<version>_<split>_s<max_sweeps>.pkl``.

    The cache is rebuilt when missing, when ``rebuild`` is set, or when the version's ``sample.json`` is newer.
    """
    cache = Path(cache_dir or Path(dataroot) / "infos") / f"{version}_{split}_s{max_sweeps}.pkl"
    tables = Path(dataroot) / version / "sample.json"
    if (not rebuild and cache.exists() and tables.exists()
            and cache.stat().st_mtime >= tables.stat().st_mtime):
        return load_infos(cache)
    nusc = nusc or load_nuscenes(dataroot, version)
    infos = create_infos(nusc, split, max_sweeps=max_sweeps)
    try:
        save_infos(infos, cache)
    except OSError:  # read-only dataroot: work without a cache
        pass
    return infos
