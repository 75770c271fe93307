"""The one image transform (labeldistill_ros.model.image_transform): BEVDepth's resize/crop rule, pixels that
agree with ``ida``, an independent float reference, and the same tensor from the training dataset and the node's
Detector on the real nuScenes key frame (the parameters travelling in the checkpoint)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labeldistill_ros import geometry as g
from labeldistill_ros.model.image_transform import ImageTransform, ImageTransformConfig, ida_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GREY = 1.0 / 57.12 + 1e-4  # one uint8 step over the smallest std


def _smooth(rng, hw):
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _reference(img: np.ndarray, ida: np.ndarray, out_hw, cfg: ImageTransformConfig | None = None) -> torch.Tensor:
    """Independent float implementation: antialiased resize of the WHOLE image to the output scale, then bilinear
    sampling at ida^-1 of every output pixel; black beyond one pixel outside; normalise."""
    cfg = cfg or ImageTransformConfig()
    H, W = img.shape[:2]
    h, w = out_hw
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    s = float(np.sqrt(abs(np.linalg.det(ida[:2, :2]))))
    Hs, Ws = (max(1, round(H * s)), max(1, round(W * s))) if s < 1 else (H, W)
    if s < 1:
        x = F.interpolate(x, size=(Hs, Ws), mode="bilinear", align_corners=False, antialias=True)
    inv = np.linalg.inv(ida)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    su = (inv[0, 0] * u + inv[0, 1] * v + inv[0, 3] + 0.5) * Ws / W - 0.5
    sv = (inv[1, 0] * u + inv[1, 1] * v + inv[1, 3] + 0.5) * Hs / H - 0.5
    grid = torch.as_tensor(np.stack([(2 * su + 1) / Ws - 1, (2 * sv + 1) / Hs - 1], -1), dtype=torch.float32)[None]
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    y = y * torch.as_tensor((su > -1) & (su < Ws) & (sv > -1) & (sv < Hs), dtype=torch.float32)
    return (y - torch.tensor(cfg.mean).view(3, 1, 1)) / torch.tensor(cfg.std).view(3, 1, 1)


def test_bevdepth_test_crop_of_a_nuscenes_camera():
    """1600x900 -> 256x704: resize 0.44 (704x396), crop rows 96..352 (bottom_crop 0.11 = mean of bot_pct_lim)."""
    t = ImageTransform((256, 704))
    np.testing.assert_allclose(t.ida(1600, 900), g.img_aug_matrix(0.44, (0, 96, 704, 352)), atol=1e-12)
    np.testing.assert_allclose(ImageTransform((128, 352)).ida(1600, 900), g.img_aug_matrix(0.22, (0, 48, 352, 176)),
                               atol=1e-12)
    # a 4:3 camera: the width decides the scale, the crop still keeps the bottom
    np.testing.assert_allclose(t.ida(1280, 960), g.img_aug_matrix(0.55, (0, 213, 704, 469)), atol=1e-12)
    cfg = ImageTransformConfig(resize_scale=1.1, bottom_crop=0.0)
    np.testing.assert_allclose(ImageTransform((256, 704), cfg).ida(1600, 900),
                               ida_for(1600, 900, (256, 704), 1.1, 0.0), atol=1e-12)


@pytest.mark.parametrize("hw", [(900, 1600), (225, 400), (720, 1280), (500, 600)])
def test_pixels_equal_an_independent_float_reference_within_one_grey_level(hw):
    rng = np.random.default_rng(0)
    img = _smooth(rng, hw)
    t = ImageTransform((128, 352))
    ida = t.ida(hw[1], hw[0])
    out = t(img)
    assert out.shape == (3, 128, 352) and out.dtype == torch.float32
    assert (out - _reference(img, ida, (128, 352))).abs().max().item() <= GREY


def test_augmented_warps_place_content_where_ida_says():
    img = np.zeros((900, 1600, 3), np.uint8)
    img[600:630, 400:430] = 255  # centred at (414.5, 614.5)
    t = ImageTransform((128, 352))
    for flip, rot in ((False, 0.0), (True, 5.0), (False, -4.0)):
        ida = ida_for(1600, 900, (128, 352), 1.14, 0.05, left=24, flip=flip, rotate_deg=rot)
        out = t(img, ida)
        u, v = (ida @ np.array([414.5, 614.5, 1, 1]))[:2]
        vv, uu = torch.nonzero(out[0] > 0, as_tuple=True)
        assert abs(uu.float().mean() - u) < 0.5 and abs(vv.float().mean() - v) < 0.5
        assert (out - _reference(img, ida, (128, 352))).abs().max().item() <= GREY
    # outside the image (corners uncovered by a rotation) is black, as BEVDepth's PIL fill
    out = t(img, ida_for(1600, 900, (128, 352), 1.0, 0.11, rotate_deg=20.0))
    black = (0 - 123.675) / 58.395
    assert abs(out[0, 0, 0].item() - black) < 1e-5
    with pytest.raises(ValueError, match="uint8"):
        t(img.astype(np.float32))


def test_prefiltering_only_the_rows_the_crop_keeps_equals_prefiltering_everything():
    rng = np.random.default_rng(1)
    img = _smooth(rng, (900, 1600))
    t = ImageTransform((256, 704))
    plan = t.plan((900, 1600), t.ida(1600, 900))
    assert 0 < plan.first_row and plan.last_row < 900, "the band fast path should apply to nuScenes images"
    assert plan.shift is not None, "a pure scale + crop takes the lerp specialisation"
    fast = t(img)
    rows_band, width = plan.prefilter_size
    rows_all = round(900 * width / 1600)
    r0 = plan.first_row * rows_all // 900
    band_general = dataclasses.replace(plan, shift=None)
    full_plan = dataclasses.replace(plan, prefilter_size=(rows_all, width), first_row=0, last_row=None, shift=None,
                                    grid=plan.grid.clone())
    full_plan.grid[..., 1] = ((plan.grid[..., 1] + 1) * rows_band / 2 + r0) * 2 / rows_all - 1
    key = next(reversed(t._plans))
    t._plans[key] = band_general
    general = t(img)
    t._plans[key] = full_plan
    full = t(img)
    # float rounding of the re-expressed grid / the lerp weights, far below a grey level
    assert (fast - general).abs().max().item() < 1e-4
    assert (general - full).abs().max().item() < 1e-4


@pytest.mark.parametrize("hw,size,scale,crop", [((900, 1600), (128, 352), 1.0, 0.11), ((900, 1600), (256, 704), 1.0, 0.11),
                                                ((225, 400), (128, 352), 1.0, 0.11), ((960, 1280), (256, 704), 1.0, 0.0),
                                                ((900, 1600), (256, 704), 1.1, 0.2), ((720, 1280), (128, 352), 0.9, 0.05)])
def test_scale_and_crop_specialisation_equals_the_general_path(hw, size, scale, crop):
    """Inference's ida (no rotation, no flip): the band + lerp path gives grid_sample's tensor, also at the image
    border (a sample less than a pixel outside clamps to the edge) and for upscaling, non-default resize and crop."""
    rng = np.random.default_rng(2)
    img = _smooth(rng, hw)
    t = ImageTransform(size, ImageTransformConfig(resize_scale=scale, bottom_crop=crop))
    ida = t.ida(hw[1], hw[0])
    plan = t.plan(hw, ida)
    band = torch.from_numpy(img[plan.first_row:plan.last_row])
    general = t.apply(band, dataclasses.replace(plan, shift=None))
    out = t(img)
    assert (out - general).abs().max().item() < 1e-4
    assert (out - _reference(img, ida, size, t.config)).abs().max().item() <= GREY
    if plan.prefilter_size is not None and abs(round(hw[1] * ida[0, 0]) / hw[1] - ida[0, 0]) < 1e-12 \
            and abs(round(hw[0] * ida[1, 1]) / hw[0] - ida[1, 1]) < 1e-12:
        assert plan.shift is not None


def test_the_dataset_and_the_node_give_the_same_tensor_on_the_real_key_frame(real_mini_root, tmp_path):  # noqa: F811
    """The real 1600x900 images through the training dataset's evaluation path and through the node's Detector
    (checkpoint written with the trainer's model config): same ida, same tensor within one grey level; also for a
    non-default transform (test_resize 1.1, bot_pct_lim (0, 0.3)), which the checkpoint carries."""
    from labeldistill_ros.inference import Detector
    from labeldistill_ros.model import StudentDetector, load_model_config, save_checkpoint
    from labeldistill_training.config import train_config_from_dict
    from labeldistill_training.data.config import preset
    from labeldistill_training.data.dataset import NuScenesDataset
    from labeldistill_training.stage_data import with_data_image_transform
    from node_support import CPU_CONFIG

    for aug in ({}, {"test_resize": 1.1, "bot_pct_lim": [0.0, 0.3]}):
        data = {"dataroot": str(real_mini_root), "version": "v1.0-mini", "train_split": "mini_train",
                "val_split": "mini_train", "load_points": False, "depth": {"enabled": False},
                "image_aug": {"final_dim": [128, 352], **aug}}
        cfg = train_config_from_dict({"model_config": str(CPU_CONFIG), "data": data})
        model_cfg = with_data_image_transform(cfg, load_model_config(CPU_CONFIG))
        ckpt = tmp_path / f"student{len(aug)}.pt"
        save_checkpoint(ckpt, StudentDetector(model_cfg))
        det = Detector(ckpt, device="cpu")
        dc = preset("small_128x352", str(real_mini_root), version="v1.0-mini", train_split="mini_train",
                    val_split="mini_train", load_points=False)
        dc = dc.replace(depth=dataclasses.replace(dc.depth, enabled=False),
                        image_aug=dataclasses.replace(dc.image_aug, **{k: tuple(v) if isinstance(v, list) else v
                                                                       for k, v in aug.items()}))
        assert det.transform.config == dc.image_transform_config()
        ds = NuScenesDataset.from_config(dc, "mini_train", training=False)
        sample = ds[0]
        info = ds.infos[0]
        images = [ds.load_image(info["cams"][ch]["path"]) for ch in dc.cameras]
        x, ida = det.preprocess(images)
        np.testing.assert_allclose(ida[0].numpy(), sample["ida"][0].numpy(), atol=1e-6)
        assert (x[0] - sample["imgs"][0]).abs().max().item() <= GREY
        if not aug:  # the default crop of a 1600x900 camera at 128x352 starts at row 48 of the resized image
            np.testing.assert_allclose(ida[0, 0].numpy(), g.img_aug_matrix(0.22, (0, 48, 352, 176)), atol=1e-6)
