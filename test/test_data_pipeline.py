"""nuScenes data pipeline on the synthetic tiny set: infos vs the devkit, Dataset shapes, augmentation
consistency (BEV aug keeps points in their boxes; image aug keeps projected boxes on their pixels), depth targets,
previous key frames, DataLoader workers, config validation."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from labeldistill_ros import geometry as geo
from labeldistill_training.data.collate import collate_batch
from labeldistill_training.data.config import (BevAugConfig, DataConfig, DataConfigError, DepthConfig,
                                               ImageAugConfig, load_data_config, preset)
from labeldistill_training.data.dataset import NuScenesDataset, build_dataloader
from labeldistill_training.data.infos import get_infos


def _mask(root, cam_path):
    p = os.path.join(root, cam_path.replace("samples/", "synth_masks/", 1).rsplit(".", 1)[0] + ".png")
    return cv2.imread(p, cv2.IMREAD_UNCHANGED)


def _mask_ids(tiny_instances, info):
    """instance token -> mask value in this sample's scene."""
    return {t: i + 1 for i, t in enumerate(tiny_instances[info["scene_name"]]) if t}


def _denormalise(x: torch.Tensor, cfg: DataConfig) -> np.ndarray:
    a = cfg.image_aug
    img = x.numpy().transpose(1, 2, 0) * np.array(a.std) + np.array(a.mean)
    return img[..., ::-1]  # back to BGR


def test_infos_agree_with_devkit(tiny_nusc, tiny_infos):
    infos = tiny_infos["synth_all"]
    assert len(infos) == 8 and len(tiny_infos["synth_val"]) == 4
    for info in infos:
        s = tiny_nusc.get("sample", info["sample_token"])
        assert info["timestamp"] == s["timestamp"] and info["prev_sample_token"] == s["prev"]
        ts = [sw["timestamp"] for sw in info["sweeps"]]
        assert ts == sorted(ts, reverse=True) and all(t < info["timestamp"] for t in ts)
        assert set(info["cams"]) == {"CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                                     "CAM_BACK_RIGHT"}
        # Boxes: devkit boxes in the LiDAR frame -> ego equal the infos' ego boxes (centre, size, yaw).
        _, boxes, _ = tiny_nusc.get_sample_data(s["data"]["LIDAR_TOP"])
        by_token = {b.token: b for b in boxes}
        for i, ann in enumerate(info["ann_tokens"]):
            b = by_token[ann]
            c = geo.transform_points(info["lidar"]["lidar2ego"], np.array(b.center)[None])[0]
            assert np.allclose(c, info["gt_boxes"][i, :3], atol=1e-6)
            assert np.allclose(b.wlh, info["gt_boxes"][i, [4, 3, 5]])
            yaw_l = np.arctan2(b.rotation_matrix[1, 0], b.rotation_matrix[0, 0])
            yaw_e = yaw_l + np.arctan2(info["lidar"]["lidar2ego"][1, 0], info["lidar"]["lidar2ego"][0, 0])
            assert abs(geo.wrap_angle(yaw_e - info["gt_boxes"][i, 6])) < 1e-3
        assert np.array_equal(info["valid_flag"], info["num_lidar_pts"] > 0)


def test_dataset_sample_shapes_previous_frames_and_collate(tiny_root, tiny_infos):
    cfg = preset("small_128x352", str(tiny_root), prev_key_offsets=(-1, -2), lidar_sweeps=2)
    ds = NuScenesDataset(cfg, tiny_infos["synth_train"], training=False)
    s = ds[3]
    assert s["imgs"].shape == (3, 6, 3, 128, 352) and s["imgs"].dtype == torch.float32
    assert s["K"].shape == (3, 6, 3, 3) and s["cam2ego"].shape == (3, 6, 4, 4) and s["ida"].shape == (3, 6, 4, 4)
    assert torch.equal(s["bda"], torch.eye(4))
    assert s["depth"].shape == (6, 8, 22)
    assert s["gt_boxes"].shape[1] == 9 and len(s["gt_labels"]) == len(s["gt_boxes"])
    infos = tiny_infos["synth_train"]
    assert s["frame_tokens"] == [infos[3]["sample_token"], infos[2]["sample_token"], infos[1]["sample_token"]]
    assert torch.allclose(s["frame_dt"], torch.tensor([0.0, 0.5, 1.0]))
    assert s["prev2curr"].shape == (2, 4, 4) and s["prev2curr"].dtype == torch.float32
    s0 = ds[0]  # the first sample of the scene: previous frames clamp to it
    assert s0["frame_tokens"] == [infos[0]["sample_token"]] * 3
    assert torch.equal(s0["prev2curr"], torch.eye(4).expand(2, 4, 4))
    # Points: key cloud (dt 0) + 2 previous sweeps (a sweep at 0.25 s, the previous key frame at 0.5 s).
    assert s["points"].shape[1] == 5
    assert sorted(np.unique(np.round(s["points"][:, 4].numpy(), 3)).tolist()) == [0.0, 0.25, 0.5]
    b = collate_batch([ds[1], ds[2]])
    assert b["imgs"].shape == (2, 3, 6, 3, 128, 352) and b["bda"].shape == (2, 4, 4)
    assert b["prev2curr"].shape == (2, 2, 4, 4)
    assert b["depth"].shape == (2, 6, 8, 22) and len(b["gt_boxes"]) == 2 and len(b["points"]) == 2
    r50 = NuScenesDataset(preset("r50_256x704", str(tiny_root), load_points=False), infos)[0]
    assert r50["imgs"].shape == (1, 6, 3, 256, 704) and r50["depth"].shape == (6, 16, 44)
    assert r50["prev2curr"].shape == (0, 4, 4)  # no previous frames
    assert "points" not in r50


def _aug_config(root, **kw):
    return DataConfig(dataroot=str(root), lidar_sweeps=0,
                      image_aug=ImageAugConfig(final_dim=(160, 288), resize_lim=(0.8, 1.3), rot_lim=(-12, 12)),
                      bev_aug=BevAugConfig(rot_lim=(-60, 60), scale_lim=(0.9, 1.1)), **kw)


def test_bev_aug_keeps_points_in_their_boxes(tiny_root, tiny_infos):
    cfg = _aug_config(tiny_root, min_lidar_pts=0)
    infos = tiny_infos["synth_all"]
    plain = NuScenesDataset(cfg, infos, training=False)
    flips = set()
    for seed in range(4):
        aug = NuScenesDataset(cfg, infos, training=True, seed=seed)
        for idx in (1, 6):
            a, p = aug[idx], plain[idx]
            bda = a["bda"].double().numpy()
            assert not np.allclose(bda, np.eye(4))
            flips.add((bda[0, 0] * bda[1, 1] - bda[0, 1] * bda[1, 0]) < 0)
            inside_a = geo.points_in_boxes(a["points"].double().numpy(), a["gt_boxes"].double().numpy())
            inside_p = geo.points_in_boxes(p["points"].double().numpy(), p["gt_boxes"].double().numpy())
            assert np.array_equal(inside_a, inside_p)
            assert np.array_equal(inside_a.sum(0), infos[idx]["num_lidar_pts"])
            # Boxes/points moved by exactly bda; sizes scaled by its scale.
            assert np.allclose(a["points"][:, :3].double().numpy(),
                               geo.transform_points(bda, p["points"][:, :3].double().numpy()), atol=1e-3)
            scale = abs(np.linalg.det(bda[:3, :3])) ** (1 / 3)
            assert np.allclose(a["gt_boxes"][:, 3:6].numpy(), p["gt_boxes"][:, 3:6].numpy() * scale, atol=1e-4)
    assert flips == {True, False}


def test_image_aug_keeps_projected_boxes_on_their_pixels(tiny_root, tiny_infos, tiny_instances):
    """Augmented image == original warped by the returned ida; GT boxes (undo bda) projected with cam2ego and
    augment_intrinsics(K, ida) enclose the instance's pixels of the equally warped id mask."""
    cfg = _aug_config(tiny_root)
    infos = tiny_infos["synth_all"]
    checked, flipped, rotated = 0, 0, 0
    for training, seed in ((False, 0), (True, 1), (True, 2)):
        ds = NuScenesDataset(cfg, infos, training=training, seed=seed)
        for idx in (0, 5):
            s = ds[idx]
            info = infos[idx]
            ids = _mask_ids(tiny_instances, info)
            bda = s["bda"].double().numpy()
            boxes = geo.transform_boxes(s["gt_boxes"].double().numpy(), geo.invert_transform(bda))
            tokens = [t for t, n in zip(info["instance_tokens"], info["num_lidar_pts"]) if n > 0]
            assert len(tokens) == len(boxes)
            for c, ch in enumerate(cfg.cameras):
                ida = s["ida"][0, c].double().numpy()
                flipped += ida[0, 0] < 0
                rotated += abs(ida[0, 1]) > 1e-3
                M = ida[:2, [0, 1, 3]]
                fH, fW = cfg.image_aug.final_dim
                src = cv2.imread(str(tiny_root / info["cams"][ch]["path"]))
                ref = cv2.warpAffine(src, M, (fW, fH), flags=cv2.INTER_LINEAR)
                # the model's transform antialiases the downscale (PIL-like); plain bilinear OpenCV differs only
                # at edges (exact agreement with ida: test_image_transform.py's independent reference)
                assert np.abs(_denormalise(s["imgs"][0, c], cfg) - ref).mean() < 2.5
                mask = cv2.warpAffine(_mask(tiny_root, info["cams"][ch]["path"]), M, (fW, fH),
                                      flags=cv2.INTER_NEAREST)
                P = geo.augment_intrinsics(s["K"][0, c].double().numpy(), ida)
                cam2ego = s["cam2ego"][0, c].double().numpy()
                for box, tok in zip(boxes, tokens):
                    uv, d = geo.project_points(geo.box_corners(box[None])[0], cam2ego, P)
                    pix = mask == ids[tok]
                    if np.any(d < 0.3) or pix.sum() < 10:
                        continue
                    hull = np.zeros(mask.shape, np.uint8)
                    cv2.fillConvexPoly(hull, np.round(cv2.convexHull(uv.astype(np.float32))).astype(np.int32), 1)
                    hull = cv2.dilate(hull, np.ones((3, 3), np.uint8))
                    assert hull[pix].mean() > 0.99, (training, idx, ch, tok)
                    checked += 1
    assert checked > 30 and flipped > 0 and rotated > 0


def test_depth_targets(tiny_root, tiny_infos):
    """Min-depth per stride cell equals a brute-force reference; targets do not depend on the BEV aug; and the
    cells hold the depth of the surface seen there (ground or a box)."""
    cfg = _aug_config(tiny_root).replace(image_aug=ImageAugConfig(final_dim=(160, 288), enabled=False),
                                         depth=DepthConfig(stride=8))
    info = tiny_infos["synth_all"][2]
    ds_plain = NuScenesDataset(cfg, [info], training=False)
    ds_aug = NuScenesDataset(cfg, [info], training=True, seed=5)
    a, p = ds_aug[0], ds_plain[0]
    assert torch.equal(a["depth"], p["depth"]) and not torch.equal(a["bda"], p["bda"])
    pts = ds_plain.load_lidar(info["lidar"]["path"])
    for c, ch in enumerate(cfg.cameras):
        cam = info["cams"][ch]
        ida = p["ida"][0, c].double().numpy()
        ref = np.full(p["depth"][c].shape, np.inf)
        T = geo.invert_transform(cam["ego2global"]) @ info["lidar"]["ego2global"] @ info["lidar"]["lidar2ego"]
        uv, z = geo.project_points(geo.transform_points(T, pts[:, :3]), cam["cam2ego"], cam["K"])
        uv = uv @ ida[:2, :2].T + ida[:2, 3]
        for (u, v), d in zip(uv, z):
            cu, cv_ = int(np.floor((u + 0.5) / 8)), int(np.floor((v + 0.5) / 8))
            if 0.5 <= d <= 60 and -0.5 <= u < 287.5 and -0.5 <= v < 159.5:
                ref[cv_, cu] = min(ref[cv_, cu], d)
        ref[np.isinf(ref)] = 0
        assert np.allclose(p["depth"][c].numpy(), ref, atol=1e-4)
    assert (p["depth"][:, 12:] > 0).float().mean() > 0.5  # the lower (ground) half is well covered


def test_previous_frames_in_their_own_key_ego_frame_with_prev2curr(tiny_root, tiny_infos, tiny_instances):
    """Each previous key frame's cam2ego is that frame's own calibration chain (camera -> its own key ego), and
    prev2curr = inv(cur ego2global) @ prev ego2global maps it into the current key ego: a static object's current
    box projected through prev2curr @ cam2ego lands on the object's pixels in the previous frame's image. At the
    start of a scene (previous frame clamped to the current one) prev2curr is exactly the identity."""
    cfg = DataConfig(dataroot=str(tiny_root), prev_key_offsets=(-1,), load_points=False,
                     image_aug=ImageAugConfig(final_dim=(225, 400), enabled=False, bot_pct_lim=(0.0, 0.0)))
    infos = tiny_infos["synth_all"]
    ds = NuScenesDataset(cfg, infos, training=False)
    checked = 0
    for idx in (2, 3, 6, 7):
        s = ds[idx]
        cur, prev = ds.frame_infos(idx)
        assert prev["sample_token"] == cur["prev_sample_token"]
        assert s["prev2curr"].shape == (1, 4, 4) and s["prev2curr"].dtype == torch.float32
        p2c = geo.invert_transform(cur["ego2global"]) @ prev["ego2global"]
        assert np.allclose(s["prev2curr"][0].double().numpy(), p2c, atol=1e-5)
        ids = _mask_ids(tiny_instances, cur)
        assert np.allclose(s["ida"][1, 0].numpy(), np.eye(4), atol=1e-6)
        for c, ch in enumerate(cfg.cameras):
            cam = prev["cams"][ch]
            own = geo.invert_transform(prev["ego2global"]) @ cam["ego2global"] @ cam["cam2ego"]
            assert np.allclose(s["cam2ego"][1, c].double().numpy(), own, atol=1e-5)
            cam = cur["cams"][ch]
            own = geo.invert_transform(cur["ego2global"]) @ cam["ego2global"] @ cam["cam2ego"]
            assert np.allclose(s["cam2ego"][0, c].double().numpy(), own, atol=1e-5)
            mask = _mask(tiny_root, prev["cams"][ch]["path"])
            cam2cur = p2c @ s["cam2ego"][1, c].double().numpy()  # previous camera -> current key ego
            K = s["K"][1, c].double().numpy()
            for box, tok in zip(cur["gt_boxes"], cur["instance_tokens"]):
                if np.hypot(box[7], box[8]) > 0 or tok not in ids:
                    continue  # only static objects keep their place between frames
                pix = mask == ids[tok]
                uv, d = geo.project_points(geo.box_corners(box[None])[0], cam2cur, K)
                if np.any(d < 0.3) or pix.sum() < 10:
                    continue
                hull = np.zeros(mask.shape, np.uint8)
                cv2.fillConvexPoly(hull, np.round(cv2.convexHull(uv.astype(np.float32))).astype(np.int32), 1)
                assert cv2.dilate(hull, np.ones((3, 3), np.uint8))[pix].mean() > 0.99
                checked += 1
        # ego moved between the frames: prev2curr holds that motion
        moved = np.linalg.norm(cur["ego2global"][:3, 3] - prev["ego2global"][:3, 3])
        assert moved > 0.5 and np.isclose(np.linalg.norm(s["prev2curr"][0, :3, 3]), moved, atol=1e-3)
    assert checked > 5
    for idx in (0, 4):  # the first sample of each scene: clamped to itself, identity motion
        s = ds[idx]
        assert s["frame_tokens"] == [infos[idx]["sample_token"]] * 2
        assert torch.equal(s["prev2curr"], torch.eye(4)[None]) and torch.equal(s["cam2ego"][1], s["cam2ego"][0])
    b = collate_batch([ds[0], ds[3]])
    assert b["prev2curr"].shape == (2, 1, 4, 4) and torch.equal(b["prev2curr"][0, 0], torch.eye(4))


def test_dataloader_workers_are_deterministic(tiny_root, tiny_infos):
    cfg = preset("small_128x352", str(tiny_root), lidar_sweeps=1)
    ds = NuScenesDataset(cfg, tiny_infos["synth_all"], training=True, seed=11)
    ds.set_epoch(3)
    runs = []
    for workers in (0, 2):
        runs.append(list(build_dataloader(ds, batch_size=2, num_workers=workers, shuffle=False)))
    for b0, b2 in zip(*runs):
        for k in ("imgs", "ida", "bda", "depth", "cam2ego"):
            assert torch.equal(b0[k], b2[k]), k
        assert all(torch.equal(x, y) for x, y in zip(b0["points"], b2["points"]))
    ds.set_epoch(4)
    assert not torch.equal(ds[0]["bda"], runs[0][0]["bda"][0])


def test_config_validation(tmp_path):
    y = tmp_path / "data.yaml"
    y.write_text("dataroot: /x\nversion: v1.0-mini\ntrain_split: mini_train\nval_split: mini_val\n"
                 "prev_key_offsets: [-1, -2]\nimage_aug: {final_dim: [128, 352], rot_lim: [-3, 3]}\n")
    cfg = load_data_config(y)
    assert cfg.prev_key_offsets == (-1, -2) and cfg.image_aug.final_dim == (128, 352)
    assert cfg.image_aug.rot_lim == (-3.0, 3.0) and cfg.version == "v1.0-mini"
    with pytest.raises(ValueError, match="unknown key"):
        load_data_config({"dataroot": "/x", "lidar_sweep": 3})
    with pytest.raises(ValueError, match="unknown key"):
        load_data_config({"dataroot": "/x", "image_aug": {"finaldim": [1, 2]}})
    with pytest.raises(DataConfigError, match="'lidar_sweeps' must be an integer"):
        load_data_config({"dataroot": "/x", "lidar_sweeps": "3"})
    with pytest.raises(ValueError, match="2 entries"):
        load_data_config({"dataroot": "/x", "image_aug": {"final_dim": [1, 2, 3]}})
    with pytest.raises(ValueError, match="prev_key_offsets"):
        load_data_config({"dataroot": "/x", "prev_key_offsets": [1]})
    with pytest.raises(ValueError, match="dataroot"):
        load_data_config({})
    with pytest.raises(ValueError, match="classes"):
        load_data_config({"dataroot": "/x", "classes": ["car", "tank"]})


def test_infos_cache_roundtrip(tiny_root, tiny_nusc, tmp_path):
    a = get_infos(str(tiny_root), "v1.0-synth", "synth_val", cache_dir=str(tmp_path), nusc=tiny_nusc)
    files = list(tmp_path.glob("*.pkl"))
    assert len(files) == 1
    b = get_infos(str(tiny_root), "v1.0-synth", "synth_val", cache_dir=str(tmp_path))  # from the cache
    assert [i["sample_token"] for i in a] == [i["sample_token"] for i in b]
    assert np.array_equal(a[0]["gt_boxes"], b[0]["gt_boxes"])


def test_pipeline_runs_unchanged_on_real_nuscenes(real_mini_root, real_sample_dir):
    """The same infos/Dataset code on a real key frame (1600x900, real LiDAR and calibration, cameras at their own
    timestamps): camera geometry reproduces the real boxes' camera-frame centres and the depth targets equal the
    projection through the real lidar2cam; GT scores AP = 1 per present class through the predefined mini split."""
    import json

    from labeldistill_training.data.infos import create_infos, load_nuscenes

    src = json.loads((real_sample_dir / "sample.json").read_text())
    nusc = load_nuscenes(str(real_mini_root), "v1.0-mini")
    infos = create_infos(nusc, "mini_train")
    assert len(infos) == 1 and len(infos[0]["gt_boxes"]) == 68  # 69 boxes, one 'ignored'
    cfg = preset("r50_256x704", str(real_mini_root), version="v1.0-mini", train_split="mini_train",
                 val_split="mini_val")
    ds = NuScenesDataset(cfg, infos, training=False)
    s = ds[0]
    assert s["imgs"].shape == (1, 6, 3, 256, 704) and s["depth"].shape == (6, 16, 44)
    assert np.isclose(s["ida"][0, 0, 0, 0].item(), 0.44)
    gt = infos[0]["gt_boxes"]
    pts = ds.load_lidar(infos[0]["lidar"]["path"])
    for c, ch in enumerate(cfg.cameras):
        cam2ego = s["cam2ego"][0, c].double().numpy()
        for inst in src["camera_instances"][ch]:
            centre = geo.transform_points(cam2ego, np.array(inst["box_camera_frame"][:3])[None])[0]
            assert np.min(np.linalg.norm(gt[:, :3] - centre, axis=1)) < 0.02, ch
        # Depth targets equal the real lidar2cam projection (which includes the ego motion between timestamps).
        L2C = np.array(src["cameras"][ch]["lidar2cam"])
        pc = geo.transform_points(L2C, pts[:, :3])
        uv = pc @ np.array(src["cameras"][ch]["cam2img"]).T
        uv = uv[:, :2] / np.where(np.abs(uv[:, 2:]) < 1e-9, 1e-9, uv[:, 2:])
        ida = s["ida"][0, c].double().numpy()
        uv = uv @ ida[:2, :2].T + ida[:2, 3]
        ref = np.zeros((16, 44))
        ok = (pc[:, 2] >= 0.5) & (pc[:, 2] <= 60) & (uv[:, 0] >= -0.5) & (uv[:, 0] < 703.5) & (uv[:, 1] >= -0.5) \
            & (uv[:, 1] < 255.5)
        for (u, v), d in sorted(zip(uv[ok].tolist(), pc[ok, 2].tolist()), key=lambda x: -x[1]):
            ref[int((v + 0.5) // 16), int((u + 0.5) // 16)] = d
        assert np.mean(np.isclose(s["depth"][c].numpy(), ref, atol=1e-3)) > 0.99, ch


def test_evaluation_on_real_nuscenes_predefined_split(real_mini_root, tmp_path):
    from nuscenes.eval.common.config import config_factory

    from labeldistill_training.data.infos import create_infos, load_nuscenes
    from labeldistill_training.eval.evaluate import evaluate_results
    from labeldistill_training.eval.results import detections_to_results, infos_to_detections

    nusc = load_nuscenes(str(real_mini_root), "v1.0-mini")
    infos = create_infos(nusc, "mini_train")
    cr = config_factory("detection_cvpr_2019").class_range
    dets = infos_to_detections(infos, class_range=cr)
    present = {geo.CLASS_NAMES[i] for i in dets[0].labels}
    r = evaluate_results(detections_to_results(dets), nusc, "mini_train", tmp_path)
    assert present and all(r.class_ap[c] == pytest.approx(1.0) for c in present)
    assert r.mAP == pytest.approx(len(present) / 10)  # absent classes count as AP 0 (nuScenes rule)
    assert all(r.class_tp[c]["trans_err"] == pytest.approx(0.0, abs=1e-6) for c in present)
