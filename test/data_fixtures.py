"""Session fixtures: one synthetic ``tiny`` dataset (seed 0, with instance masks) per test process, loaded through
nuscenes-devkit, and its infos. Import with ``from data_fixtures import *`` (or register as a pytest plugin)."""
from __future__ import annotations

import pytest

TINY_SEED = 0
TINY_VERSION = "v1.0-synth"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """Dataroot of the generated tiny set (2 scenes x 4 key frames, 400x225, masks): ~4 s once per process."""
    from labeldistill_training.synth.generate import generate

    root = tmp_path_factory.mktemp("synth_tiny")
    generate("tiny", TINY_SEED, str(root), workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_nusc(tiny_root):
    """``NuScenes`` over the tiny set."""
    from labeldistill_training.data.infos import load_nuscenes

    return load_nuscenes(str(tiny_root), TINY_VERSION)


@pytest.fixture(scope="session")
def tiny_infos(tiny_nusc):
    """``{split: infos}`` for synth_train, synth_val and synth_all."""
    from labeldistill_training.data.infos import create_infos

    return {s: create_infos(tiny_nusc, s) for s in ("synth_train", "synth_val", "synth_all")}


@pytest.fixture(scope="session")
def tiny_instances(tiny_root):
    """``{scene name: [instance token per mask value - 1]}`` of the tiny set's instance masks."""
    import json

    with open(tiny_root / "synth_masks" / "instances.json") as f:
        return json.load(f)


__all__ = ["tiny_root", "tiny_nusc", "tiny_infos", "tiny_instances", "TINY_SEED", "TINY_VERSION"]


REAL_SCENE = "scene-0061"  # the real key frame is the first sample of this v1.0-mini scene (split mini_train)


@pytest.fixture(scope="session")
def real_mini_root(real_sample_dir, tmp_path_factory):
    """A one-sample ``v1.0-mini`` database built from the shared real nuScenes key frame (real 1600x900 images,
    real LiDAR, real calibration with per-camera ego poses, 69 real boxes), so the pipeline and the evaluation
    are exercised on real data through a predefined split (``mini_train``)."""
    import hashlib
    import json
    import shutil

    import numpy as np

    from labeldistill_ros import geometry as geo

    src = json.loads((real_sample_dir / "sample.json").read_text())
    root = tmp_path_factory.mktemp("real_mini")
    tok = lambda *k: hashlib.md5("|".join(map(str, k)).encode()).hexdigest()  # noqa: E731
    version = root / "v1.0-mini"
    version.mkdir()
    cats = {"car": "vehicle.car", "truck": "vehicle.truck", "bus": "vehicle.bus.rigid", "trailer": "vehicle.trailer",
            "construction_vehicle": "vehicle.construction", "pedestrian": "human.pedestrian.adult",
            "motorcycle": "vehicle.motorcycle", "bicycle": "vehicle.bicycle",
            "traffic_cone": "movable_object.trafficcone", "barrier": "movable_object.barrier",
            "ignored": "movable_object.debris"}
    T = {k: [] for k in ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
                         "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility")}
    T["category"] = [{"token": tok("cat", c), "name": c, "description": c} for c in sorted(set(cats.values()))]
    T["visibility"] = [{"token": str(i), "level": lvl, "description": lvl}
                       for i, lvl in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"), 1)]
    T["log"] = [{"token": tok("log"), "logfile": "n015-2018-07-24-11-22-45+0800", "vehicle": "n015",
                 "date_captured": "2018-07-24", "location": "singapore-onenorth"}]
    T["map"] = [{"token": tok("map"), "log_tokens": [tok("log")], "category": "semantic_prior",
                 "filename": "maps/map.png"}]
    (root / "maps").mkdir()
    shutil.copy(real_sample_dir / "CAM_FRONT.jpg", root / "maps" / "map.png")  # content only read for renders
    sample_tok, ts = src["sample_token"], int(round(src["timestamp_s"] * 1e6))
    T["scene"] = [{"token": tok("scene"), "log_token": tok("log"), "nbr_samples": 1, "first_sample_token": sample_tok,
                   "last_sample_token": sample_tok, "name": REAL_SCENE, "description": "real key frame"}]
    T["sample"] = [{"token": sample_tok, "timestamp": ts, "prev": "", "next": "", "scene_token": tok("scene")}]
    ego2global = np.array(src["ego2global"])
    lidar2ego = np.array(src["lidar"]["lidar2ego"])

    def add_sd(channel, modality, T_s2e, K, ego_pose, stamp, fname, w, h):
        T["sensor"].append({"token": tok("sensor", channel), "channel": channel, "modality": modality})
        T["calibrated_sensor"].append({"token": tok("cs", channel), "sensor_token": tok("sensor", channel),
                                       "translation": T_s2e[:3, 3].tolist(),
                                       "rotation": geo.matrix_to_quat(T_s2e[:3, :3]).tolist(),
                                       "camera_intrinsic": K})
        T["ego_pose"].append({"token": tok("ep", channel), "timestamp": stamp,
                              "rotation": geo.matrix_to_quat(ego_pose[:3, :3]).tolist(),
                              "translation": ego_pose[:3, 3].tolist()})
        T["sample_data"].append({"token": tok("sd", channel), "sample_token": sample_tok,
                                 "ego_pose_token": tok("ep", channel), "calibrated_sensor_token": tok("cs", channel),
                                 "timestamp": stamp, "fileformat": fname.rsplit(".", 1)[-1], "is_key_frame": True,
                                 "height": h, "width": w, "filename": fname, "prev": "", "next": ""})

    (root / "samples" / "LIDAR_TOP").mkdir(parents=True)
    shutil.copy(real_sample_dir / src["lidar"]["file"], root / "samples" / "LIDAR_TOP" / "real.pcd.bin")
    add_sd("LIDAR_TOP", "lidar", lidar2ego, [], ego2global, ts, "samples/LIDAR_TOP/real.pcd.bin", 0, 0)
    for ch, c in src["cameras"].items():
        cam2ego, lidar2cam = np.array(c["cam2ego"]), np.array(c["lidar2cam"])
        # lidar2cam = inv(cam2ego) inv(cam_ego2global) ego2global lidar2ego  ->  the camera's own ego pose:
        cam_ego2global = ego2global @ lidar2ego @ np.linalg.inv(lidar2cam) @ np.linalg.inv(cam2ego)
        (root / "samples" / ch).mkdir()
        shutil.copy(real_sample_dir / c["file"], root / "samples" / ch / "real.jpg")
        add_sd(ch, "camera", cam2ego, c["cam2img"], cam_ego2global, int(round(c["timestamp_s"] * 1e6)),
               f"samples/{ch}/real.jpg", c["width"], c["height"])
    boxes_l = np.array([i["box"] for i in src["instances_lidar_frame"]])
    boxes_g = geo.transform_boxes(boxes_l, ego2global @ lidar2ego)
    for i, (inst, b) in enumerate(zip(src["instances_lidar_frame"], boxes_g)):
        ann, itok = tok("ann", i), tok("inst", i)
        T["instance"].append({"token": itok, "category_token": tok("cat", cats[inst["class"]]), "nbr_annotations": 1,
                              "first_annotation_token": ann, "last_annotation_token": ann})
        T["sample_annotation"].append({
            "token": ann, "sample_token": sample_tok, "instance_token": itok, "visibility_token": "4",
            "attribute_tokens": [], "translation": b[:3].tolist(), "size": [b[4], b[3], b[5]],
            "rotation": geo.yaw_to_quat(b[6]).tolist(), "prev": "", "next": "",
            "num_lidar_pts": inst["num_lidar_pts"], "num_radar_pts": inst["num_radar_pts"]})
    for name, rows in T.items():
        (version / f"{name}.json").write_text(json.dumps(rows))
    return root


__all__ += ["real_mini_root", "REAL_SCENE"]
