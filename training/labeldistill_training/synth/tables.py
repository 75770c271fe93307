"""The 13 nuScenes tables, ``splits.json`` and map images of a synthetic dataset.

Conventions are those of the real data (see ``shared/nuscenes-synthetic.md``): 32-hex tokens, microsecond
timestamps, quaternions [w, x, y, z], ``size`` = [w, l, h], annotations and ego poses in the global frame,
``calibrated_sensor`` = sensor -> ego, one ``ego_pose`` per ``sample_data``, LiDAR sweeps whose
``sample_token`` is the next key frame, annotation ``prev``/``next`` chains per instance (the devkit's
``box_velocity`` uses them), ``num_radar_pts`` = 0. Tokens are MD5 hashes of (seed, kind, key), so two runs with
the same seed write byte-identical tables.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict

import cv2
import numpy as np

from labeldistill_ros import geometry as geo

from ..eval.attributes import ATTRIBUTE_NAMES
from .cameras import LIDAR_CHANNEL
from .config import SynthConfig
from .sensors import SceneRecord

TABLE_NAMES: tuple[str, ...] = (
    "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
    "sample_annotation", "sample_data", "scene", "sensor", "visibility",
)

CATEGORIES: tuple[tuple[str, str], ...] = (
    ("animal", "All animals, e.g. cats, rats, dogs, deer, birds."),
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.construction_worker", "Construction worker"),
    ("human.pedestrian.personal_mobility", "A small electric or self-propelled vehicle, e.g. skateboard."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.stroller", "Strollers."),
    ("human.pedestrian.wheelchair", "Wheelchairs."),
    ("movable_object.barrier", "Temporary road barrier placed in the scene in order to redirect traffic."),
    ("movable_object.debris", "Movable object that is left on the driveable surface."),
    ("movable_object.pushable_pullable", "Objects that a pedestrian may push or pull."),
    ("movable_object.trafficcone", "All types of traffic cone."),
    ("static_object.bicycle_rack", "Area or device intended to park or secure the bicycles in a row."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle designed to travel at lower speeds."),
    ("vehicle.bus.bendy", "Bendy bus subcategory. Annotate each section of the bendy bus individually."),
    ("vehicle.bus.rigid", "Rigid bus subcategory."),
    ("vehicle.car", "Vehicle designed primarily for personal use, e.g. sedans, hatch-backs, wagons, vans."),
    ("vehicle.construction", "Vehicles primarily designed for construction. Typically very slow moving."),
    ("vehicle.emergency.ambulance", "All types of ambulances."),
    ("vehicle.emergency.police", "All types of police vehicles."),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle designed to move rapidly."),
    ("vehicle.trailer", "Any vehicle trailer, both for trucks, cars and motorcycles."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo including pick-ups, lorrys, trucks."),
)
"""The 23 nuScenes categories (name, description)."""

VISIBILITY_LEVELS: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)


class _Tokens:
    """Deterministic 32-hex tokens: md5 of (seed, kind, key)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, kind: str, *key) -> str:
        return hashlib.md5(f"{self.seed}|{kind}|{'|'.join(map(str, key))}".encode()).hexdigest()


def instance_token(seed: int, scene_index: int, actor_index: int) -> str:
    """Token of the instance of actor ``actor_index`` of scene ``scene_index`` (as written in instance.json)."""
    return _Tokens(seed)("instance", scene_index, actor_index)


def _f(x) -> list[float]:
    return [float(v) for v in np.asarray(x, dtype=np.float64).ravel()]


def _pose(T: np.ndarray) -> tuple[list[float], list[float]]:
    """(translation, rotation wxyz) of a 4x4 transform."""
    return _f(T[:3, 3]), _f(geo.matrix_to_quat(T[:3, :3]))


def split_scene_names(names: list[str], val_fraction: float) -> dict[str, list[str]]:
    """Custom splits: the last ``max(1, round(n * val_fraction))`` scenes are ``synth_val``, the rest
    ``synth_train`` (at least one each when n >= 2); ``synth_all`` holds every scene."""
    n = len(names)
    n_val = min(max(1, int(round(n * val_fraction))), max(1, n - 1))
    return {"synth_train": names[: n - n_val] if n > 1 else list(names), "synth_val": names[n - n_val:],
            "synth_all": list(names)}


def build_tables(records: list[SceneRecord], config: SynthConfig, seed: int) -> dict[str, list[dict]]:
    """All 13 tables (lists of dicts, in deterministic order) of the simulated scenes."""
    tok = _Tokens(seed)
    T: dict[str, list[dict]] = {name: [] for name in TABLE_NAMES}
    T["category"] = [{"token": tok("category", n), "name": n, "description": d, "index": i}
                     for i, (n, d) in enumerate(CATEGORIES)]
    cat_token = {c["name"]: c["token"] for c in T["category"]}
    T["attribute"] = [{"token": tok("attribute", n), "name": n, "description": n.replace(".", ": ")}
                      for n in ATTRIBUTE_NAMES]
    attr_token = {a["name"]: a["token"] for a in T["attribute"]}
    T["visibility"] = [{"token": t, "level": lvl, "description": d} for t, lvl, d in VISIBILITY_LEVELS]
    channels = [c.channel for c in records[0].scene.cameras] + [LIDAR_CHANNEL]
    T["sensor"] = [{"token": tok("sensor", ch), "channel": ch, "modality": "lidar" if ch.startswith("LIDAR")
                    else "camera"} for ch in channels]
    sensor_token = {s["channel"]: s["token"] for s in T["sensor"]}
    logs_by_location: dict[str, list[str]] = defaultdict(list)

    for rec in records:
        sc = rec.scene
        si = sc.index
        log_tok = tok("log", si)
        logs_by_location[sc.location].append(log_tok)
        T["log"].append({"token": log_tok, "logfile": sc.logfile, "vehicle": sc.vehicle, "date_captured": sc.date,
                         "location": sc.location})
        calib = {}
        for cam in sc.cameras:
            tr, rot = _pose(cam.cam2ego)
            calib[cam.channel] = tok("calibrated_sensor", si, cam.channel)
            T["calibrated_sensor"].append({"token": calib[cam.channel], "sensor_token": sensor_token[cam.channel],
                                           "translation": tr, "rotation": rot,
                                           "camera_intrinsic": [_f(row) for row in cam.K]})
        tr, rot = _pose(sc.lidar.lidar2ego)
        calib[LIDAR_CHANNEL] = tok("calibrated_sensor", si, LIDAR_CHANNEL)
        T["calibrated_sensor"].append({"token": calib[LIDAR_CHANNEL], "sensor_token": sensor_token[LIDAR_CHANNEL],
                                       "translation": tr, "rotation": rot, "camera_intrinsic": []})

        keys = [f for f in rec.frames if f.is_key]
        sample_tok = [tok("sample", si, k) for k in range(len(keys))]
        scene_tok = tok("scene", si)
        for k, f in enumerate(keys):
            T["sample"].append({"token": sample_tok[k], "timestamp": f.timestamp, "scene_token": scene_tok,
                                "prev": sample_tok[k - 1] if k > 0 else "",
                                "next": sample_tok[k + 1] if k + 1 < len(keys) else ""})
        T["scene"].append({"token": scene_tok, "log_token": log_tok, "nbr_samples": len(keys),
                           "first_sample_token": sample_tok[0], "last_sample_token": sample_tok[-1],
                           "name": sc.name, "description": f"synthetic {sc.location}, ego {sc.ego_speed:.1f} m/s"})

        # sample_data + ego_pose, chained per channel. A sweep belongs to the next key frame.
        next_key = []
        k = -1
        for f in reversed(rec.frames):
            if f.is_key:
                k += 1
            next_key.append(len(keys) - 1 - k)
        next_key = next_key[::-1]
        chain: dict[str, list[dict]] = defaultdict(list)
        for fi, f in enumerate(rec.frames):
            items = [(LIDAR_CHANNEL, f.lidar_file, "pcd", 0, 0)]
            if f.is_key:
                items += [(cam.channel, path, "jpg", cam.height, cam.width)
                          for cam, path in zip(sc.cameras, f.cam_files)]
            for ch, path, fmt, h, w in items:
                sd_tok = tok("sample_data", si, fi, ch)
                pose_tok = tok("ego_pose", si, fi, ch)
                tr, rot = _pose(f.ego2global)
                T["ego_pose"].append({"token": pose_tok, "timestamp": f.timestamp, "rotation": rot,
                                      "translation": tr})
                chain[ch].append({"token": sd_tok, "sample_token": sample_tok[next_key[fi]],
                                  "ego_pose_token": pose_tok, "calibrated_sensor_token": calib[ch],
                                  "timestamp": f.timestamp, "fileformat": fmt, "is_key_frame": f.is_key,
                                  "height": h, "width": w, "filename": path, "prev": "", "next": ""})
        for ch in channels:
            rows = chain[ch]
            for i, row in enumerate(rows):
                row["prev"] = rows[i - 1]["token"] if i > 0 else ""
                row["next"] = rows[i + 1]["token"] if i + 1 < len(rows) else ""
            T["sample_data"].extend(rows)

        # Annotations chained per instance.
        per_actor: dict[int, list[dict]] = defaultdict(list)
        for k, f in enumerate(keys):
            for a, box, npts, vis in zip(f.actors, f.boxes_global, f.num_lidar_pts, f.visibility):
                actor = sc.actors[int(a)]
                per_actor[int(a)].append({
                    "token": tok("sample_annotation", si, k, int(a)), "sample_token": sample_tok[k],
                    "instance_token": tok("instance", si, int(a)), "visibility_token": vis,
                    "attribute_tokens": [attr_token[actor.attribute]] if actor.attribute else [],
                    "translation": _f(box[:3]), "size": _f([box[4], box[3], box[5]]),
                    "rotation": _f(geo.yaw_to_quat(box[6])), "prev": "", "next": "",
                    "num_lidar_pts": int(npts), "num_radar_pts": 0,
                })
        for a in sorted(per_actor):
            anns = per_actor[a]
            for i, ann in enumerate(anns):
                ann["prev"] = anns[i - 1]["token"] if i > 0 else ""
                ann["next"] = anns[i + 1]["token"] if i + 1 < len(anns) else ""
            T["instance"].append({"token": tok("instance", si, a),
                                  "category_token": cat_token[sc.actors[a].category],
                                  "nbr_annotations": len(anns), "first_annotation_token": anns[0]["token"],
                                  "last_annotation_token": anns[-1]["token"]})
        order = {sample_tok[k]: k for k in range(len(keys))}
        T["sample_annotation"].extend(sorted((ann for a in sorted(per_actor) for ann in per_actor[a]),
                                             key=lambda r: order[r["sample_token"]]))  # stable: actor order

    for loc in sorted(logs_by_location):
        T["map"].append({"token": tok("map", loc), "log_tokens": logs_by_location[loc],
                         "category": "semantic_prior", "filename": f"maps/{tok('map', loc)}.png"})
    return T


def write_dataset_files(dataroot: str, version: str, tables: dict[str, list[dict]],
                        splits: dict[str, list[str]]) -> None:
    """Write ``<version>/<table>.json`` for all 13 tables, ``<version>/splits.json`` and the map pngs."""
    vdir = os.path.join(dataroot, version)
    os.makedirs(vdir, exist_ok=True)
    for name in TABLE_NAMES:
        with open(os.path.join(vdir, f"{name}.json"), "w") as f:
            json.dump(tables[name], f, indent=1)
    with open(os.path.join(vdir, "splits.json"), "w") as f:
        json.dump(splits, f, indent=1)
    for m in tables["map"]:
        path = os.path.join(dataroot, m["filename"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img = np.full((200, 200), 255, dtype=np.uint8)
        cv2.rectangle(img, (0, 90), (199, 110), 128, -1)  # a road stripe, for map renders
        cv2.imwrite(path, img)
