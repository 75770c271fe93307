"""The synthetic nuScenes-format world: devkit loading, determinism, LiDAR/annotation consistency, rendering
geometry (GT corners projected through the project's geometry cover the rendered object's pixels), sensor rig."""
from __future__ import annotations

import filecmp
import json
import os

import cv2
import numpy as np
import pytest

from labeldistill_ros import geometry as geo

CAMS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")


def test_devkit_loads_every_table_and_sensor(tiny_root, tiny_nusc):
    nusc = tiny_nusc
    for table in ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
                  "sample_annotation", "sample_data", "scene", "sensor", "visibility"):
        assert (tiny_root / "v1.0-synth" / f"{table}.json").is_file()
    assert len(nusc.scene) == 2 and len(nusc.sample) == 8
    for s in nusc.sample:
        assert set(s["data"]) == set(CAMS) | {"LIDAR_TOP"}
        for ch in CAMS:
            sd = nusc.get("sample_data", s["data"][ch])
            img = cv2.imread(str(tiny_root / sd["filename"]))
            assert img.shape == (sd["height"], sd["width"], 3) == (225, 400, 3)
            path, boxes, K = nusc.get_sample_data(sd["token"])
            assert K.shape == (3, 3) and all(b.center[2] > -60 for b in boxes)
        lidar = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
        assert lidar["is_key_frame"] and lidar["fileformat"] == "pcd"
    splits = json.loads((tiny_root / "v1.0-synth" / "splits.json").read_text())
    assert len(splits["synth_train"]) == 1 and len(splits["synth_val"]) == 1
    # Sweeps sit between key frames and belong to the next key frame; the chain is time ordered.
    sweeps = [sd for sd in nusc.sample_data if not sd["is_key_frame"]]
    assert len(sweeps) == 2 * 3  # 1 sweep between each pair of the 4 key frames, 2 scenes
    for sd in sweeps:
        assert nusc.get("sample", sd["sample_token"])["timestamp"] > sd["timestamp"]
        assert nusc.get("sample_data", sd["prev"])["timestamp"] < sd["timestamp"]


def test_every_class_with_points_in_every_scene(tiny_nusc):
    from nuscenes.eval.detection.utils import category_to_detection_name

    for scene in tiny_nusc.scene:
        seen = set()
        tok = scene["first_sample_token"]
        while tok:
            s = tiny_nusc.get("sample", tok)
            for a in s["anns"]:
                ann = tiny_nusc.get("sample_annotation", a)
                if ann["num_lidar_pts"] > 0:
                    seen.add(category_to_detection_name(ann["category_name"]))
            tok = s["next"]
        assert seen == set(geo.CLASS_NAMES), scene["name"]


def test_num_lidar_pts_matches_devkit_count(tiny_root, tiny_nusc):
    """num_lidar_pts was counted from the written cloud; the devkit recounts it in the LiDAR frame."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    n, nonzero = 0, 0
    for s in tiny_nusc.sample:
        path, boxes, _ = tiny_nusc.get_sample_data(s["data"]["LIDAR_TOP"])
        pc = LidarPointCloud.from_file(path)
        for b in boxes:
            ann = tiny_nusc.get("sample_annotation", b.token)
            assert int(points_in_box(b, pc.points[:3]).sum()) == ann["num_lidar_pts"]
            n += 1
            nonzero += ann["num_lidar_pts"] > 0
    assert n > 100 and nonzero > 0.6 * n


def test_lidar_points_are_ground_or_inside_boxes(tiny_root, tiny_infos):
    """Every return above the ground lies inside a ground-truth box (no stray points); clouds look like
    nuScenes' (float32 x 5, ring 0..31, intensity 0..255, within 70 m); LIDAR_TOP is yawed -90 deg."""
    for info in tiny_infos["synth_all"]:
        raw = np.fromfile(tiny_root / info["lidar"]["path"], dtype=np.float32).reshape(-1, 5)
        assert 5000 < len(raw) < 40000
        assert set(np.unique(raw[:, 4])) <= set(range(32))
        assert raw[:, 3].min() >= 0 and raw[:, 3].max() <= 255
        assert np.hypot(raw[:, 0], raw[:, 1]).max() < 70.5
        R = info["lidar"]["lidar2ego"][:3, :3]
        assert abs(np.degrees(np.arctan2(R[1, 0], R[0, 0])) + 90) < 2
        pts = geo.transform_points(info["lidar"]["lidar2ego"], raw[:, :3])
        inside = geo.points_in_boxes(pts, info["gt_boxes"])
        above = pts[:, 2] > 0.15
        assert above.sum() > 500
        assert np.all(inside[above].any(axis=1))
        assert np.all(np.abs(pts[~inside.any(axis=1), 2]) < 0.15)  # the rest is ground
        assert np.array_equal(inside.sum(axis=0), info["num_lidar_pts"])


def test_velocities_and_attributes_are_consistent(tiny_infos, tiny_nusc):
    from labeldistill_training.eval.attributes import default_attribute

    moving = 0
    for info in tiny_infos["synth_all"]:
        for box, name, attr in zip(info["gt_boxes"], info["gt_names"], info["gt_attributes"]):
            speed = float(np.hypot(box[7], box[8]))
            assert speed == 0.0 or speed > 0.8
            assert attr == default_attribute(name, speed)
            if speed > 0:
                moving += 1
                heading = np.array([np.cos(box[6]), np.sin(box[6])])
                assert abs(abs(heading @ box[7:9]) / speed - 1) < 0.01  # moves along its heading
            if name in ("traffic_cone", "barrier"):
                assert speed == 0.0
    assert moving > 10


def _mask(root, cam_path):
    p = os.path.join(root, cam_path.replace("samples/", "synth_masks/", 1).rsplit(".", 1)[0] + ".png")
    return cv2.imread(p, cv2.IMREAD_UNCHANGED)


def test_projected_box_corners_cover_rendered_pixels(tiny_root, tiny_infos, tiny_instances):
    """GT boxes (devkit -> infos, ego) projected with geometry.project_points enclose the rendered pixels of
    their instance (id masks), and every clearly visible box is actually drawn in the image."""
    checked = 0
    for info in tiny_infos["synth_all"]:
        tokens = tiny_instances[info["scene_name"]]
        for ch in CAMS:
            cam = info["cams"][ch]
            mask = _mask(tiny_root, cam["path"])
            image = cv2.imread(str(tiny_root / cam["path"]))
            assert mask.shape == image.shape[:2]
            key2cam_ego = geo.invert_transform(cam["ego2global"]) @ info["ego2global"]
            for box, inst in zip(info["gt_boxes"], info["instance_tokens"]):
                corners = geo.transform_points(key2cam_ego, geo.box_corners(box[None])[0])
                uv, depth = geo.project_points(corners, cam["cam2ego"], cam["K"])
                if np.any(depth < 0.3):
                    continue
                hull = np.zeros_like(mask, dtype=np.uint8)
                cv2.fillConvexPoly(hull, np.round(cv2.convexHull(uv.astype(np.float32))).astype(np.int32), 1)
                hull = cv2.dilate(hull, np.ones((3, 3), np.uint8))
                ids = [i + 1 for i, t in enumerate(tokens) if t == inst]
                assert len(ids) == 1
                pix = mask == ids[0]
                if pix.sum() >= 10:
                    assert hull[pix].mean() > 0.995, (ch, inst)
                    # The rendered object differs from the sky/ground colour around it.
                    assert image[pix].std() > 0 or image[pix].mean() != image[~pix].mean()
                    checked += 1
                centre_uv, centre_d = geo.project_points(geo.transform_points(key2cam_ego, box[None, :3]),
                                                         cam["cam2ego"], cam["K"])
                u, v = centre_uv[0]
                vis = info["visibility"][info["instance_tokens"].index(inst)]
                if vis == "4" and centre_d[0] < 40 and 5 < u < mask.shape[1] - 5 and 5 < v < mask.shape[0] - 5:
                    assert pix.sum() > 0, (ch, inst)
    assert checked > 40


def _small_config(**kw):
    from labeldistill_training.synth.config import SIZES

    return SIZES["tiny"].replace(key_frames_per_scene=2, sweeps_between_keys=1, lidar_azimuth_steps=360,
                                 image_width=160, image_height=90, write_masks=False, **kw)


def _same_tree(a, b) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    match, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(os.path.join(a, d), os.path.join(b, d))
                                                 for d in cmp.common_dirs)


def test_deterministic_by_seed(tmp_path):
    from labeldistill_training.synth.generate import generate

    cfg = _small_config()
    generate(cfg, 7, str(tmp_path / "a"), workers=1)
    generate(cfg, 7, str(tmp_path / "b"), workers=2)  # parallel scenes give the same bytes
    generate(cfg, 8, str(tmp_path / "c"), workers=1)
    assert _same_tree(tmp_path / "a", tmp_path / "b")
    for table in ("sample_annotation", "ego_pose", "sample_data", "instance"):
        a = (tmp_path / "a" / "v1.0-synth" / f"{table}.json").read_bytes()
        c = (tmp_path / "c" / "v1.0-synth" / f"{table}.json").read_bytes()
        assert a != c


def test_cli_writes_a_loadable_set(tmp_path, capsys):
    from labeldistill_training.synth import cli

    assert cli.main(["--size", "tiny", "--seed", "3", "--out", str(tmp_path / "d"), "--scenes", "1",
                     "--workers", "1"]) == 0
    assert "1 scenes, 4 samples" in capsys.readouterr().out
    assert (tmp_path / "d" / "v1.0-synth" / "sample.json").is_file()
    with pytest.raises(SystemExit):
        cli.main(["--size", "huge", "--out", str(tmp_path / "e")])


def test_camera_rig_matches_real_nuscenes(real_sample_dir):
    """Ring layout and fields of view equal the real car's (calibration of the shared real key frame)."""
    from labeldistill_training.synth.cameras import camera_rig, lidar_rig

    real = json.loads((real_sample_dir / "sample.json").read_text())
    cams = {c.channel: c for c in camera_rig(1600, 900)}
    for ch, rc in real["cameras"].items():
        ours, T = cams[ch], np.array(rc["cam2ego"])
        axis_angle = np.degrees(np.arccos(np.clip(ours.cam2ego[:3, 2] @ T[:3, 2], -1, 1)))
        assert axis_angle < 1.0, ch
        assert np.allclose(ours.cam2ego[:3, 3], T[:3, 3], atol=0.02)
        assert np.allclose(ours.K, np.array(rc["cam2img"]), atol=0.5)
    small = {c.channel: c for c in camera_rig(400, 225)}
    assert np.isclose(small["CAM_FRONT"].K[0, 0], 1266.4 / 4)
    L = lidar_rig(1084).lidar2ego
    assert np.allclose(L[:3, :3], np.array(real["lidar"]["lidar2ego"])[:3, :3], atol=0.03)


def test_renderer_occlusion_is_per_pixel():
    """Two overlapping boxes in front of a camera: the nearer one wins exactly where it covers the other."""
    from labeldistill_training.synth.cameras import camera_rig
    from labeldistill_training.synth.classes import make_parts
    from labeldistill_training.synth.render import make_backdrop, render_view
    from labeldistill_training.synth.world import make_scene

    cam = camera_rig(400, 225)[0]
    look = make_scene(_small_config(), 0, 0).look
    rng = np.random.default_rng(0)
    boxes = np.array([[20.0, 0.0, 1.5, 4.0, 6.0, 3.0, 0.0, 0, 0], [10.0, 0.5, 0.5, 0.5, 0.5, 1.0, 0.3, 0, 0]])
    parts = [make_parts("bus", boxes[0, 3:6], rng), make_parts("barrier", boxes[1, 3:6], rng)]
    out = render_view(cam, make_backdrop(cam, look), look, boxes, parts, (0.0, 0.0), rng)
    assert out.visible_px[0] > 0 and out.visible_px[1] > 0
    near = out.instance == 2
    # optical depth from the camera (1.7 m ahead of the ego origin): barrier front ~8 m, bus front face 16.3 m
    assert np.all(out.depth[near] < 9.5) and np.all(out.depth[out.instance == 1] > 16.2)
    # The far box is occluded behind the near one: its unoccluded footprint exceeds what is visible.
    assert out.full_px[0] > out.visible_px[0] and out.full_px[1] == out.visible_px[1]
