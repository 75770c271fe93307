"""The student network: shapes for every config, backbone key names, lift-splat geometry and pooling, temporal
warp (decoding and NMS: test_decode.py; preprocessing: test_image_transform.py)."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labeldistill_ros import geometry as g
from labeldistill_ros.model import StudentDetector, load_model_config
from model_support import TORCHVISION_PARAMS, torchvision_resnet_keys
from labeldistill_ros.model.backbone import ResNet
from labeldistill_ros.model.depthnet import DeformConv2d
from labeldistill_ros.model.export import example_inputs
from labeldistill_ros.model.temporal import warp_bev
from labeldistill_ros.model.view_transform import LSSViewTransform

REPO = Path(__file__).resolve().parents[1]
R50 = REPO / "config" / "model" / "r50_256x704.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def real_rig(sample_dir):
    """K (6, 3, 3) and cam2ego (6, 4, 4) of the real nuScenes key frame."""
    cams = json.loads((sample_dir / "sample.json").read_text())["cameras"]
    K = np.stack([np.array(c["cam2img"]) for c in cams.values()])
    cam2ego = np.stack([np.array(c["cam2ego"]) for c in cams.values()])
    return torch.tensor(K, dtype=torch.float32), torch.tensor(cam2ego, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ shapes
def test_configs_describe_the_published_student(small_cfg):
    r50 = load_model_config(R50)
    assert (r50.backbone.depth, r50.input_size, r50.feature_size) == (50, (256, 704), (16, 44))
    assert (r50.depth_net.context_channels, r50.depth_net.num_bins) == (150, 112)
    assert (r50.bev_grid.nx, r50.bev_grid.ny, r50.bev_grid.x[2]) == (128, 128, 0.8)
    assert (r50.temporal.num_prev_frames, r50.bev_channels, r50.bev_trunk.base_channels) == (4, 750, 300)
    assert (small_cfg.backbone.depth, small_cfg.input_size, small_cfg.bev_grid.nx) == (18, (128, 352), 64)
    assert small_cfg.temporal.num_prev_frames == 0


def test_small_forward_shapes(small_model, small_cfg):
    inputs = example_inputs(small_cfg, num_cameras=6)
    images = torch.randn_like(inputs[0])
    with torch.no_grad():
        out = small_model(images, *inputs[1:])
    c = small_cfg
    assert out.bev_input.shape == (1, c.bev_channels, 64, 64)
    assert out.trunk_first.shape == (1, c.bev_trunk.base_channels, 32, 32)
    assert out.bev_feature.shape == (1, 4 * c.bev_trunk.neck_channels, 64, 64)
    assert out.depth.shape == (6, 112, 8, 22)
    torch.testing.assert_close(out.depth.sum(1), torch.ones(6, 8, 22))
    assert len(out.head_outputs) == 6
    for task, group in zip(out.head_outputs, c.head.task_groups):
        expected = {"heatmap": len(group), "reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
        assert {k: v.shape for k, v in task.items()} == {k: (1, n, 64, 64) for k, n in expected.items()}
    assert (out.bev_input[0].abs().sum(0) > 0).float().mean() > 0.5  # six cameras cover most of the grid
    det = small_model.decode(out.head_outputs)[0]
    assert det.boxes.shape[1] == 9 and det.boxes.shape[0] == det.scores.shape[0] == det.labels.shape[0]
    assert det.boxes.shape[0] <= c.decode.max_detections
    assert torch.all(det.scores[:-1] >= det.scores[1:])


def test_r50_shapes():
    """The full R50 config (132 M parameters, ~1 TFLOP per 5-frame forward) is shape-checked on the meta device,
    and its view transform runs for real at 16x44 features."""
    cfg = load_model_config(R50)
    with torch.device("meta"):
        model = StudentDetector.from_config(cfg)
        feats = model.image_neck(model.backbone(torch.empty(6, 3, 256, 704)))
        depth, context = model.depth_net(feats, torch.empty(6, 27))
        feature, trunk = model.bev_encoder(torch.empty(1, 750, 128, 128))
        heads = model.head(feature)
    assert feats.shape == (6, 512, 16, 44)
    assert depth.shape == (6, 112, 16, 44) and context.shape == (6, 150, 16, 44)
    assert [tuple(t.shape) for t in trunk] == [(1, 750, 128, 128), (1, 300, 64, 64), (1, 600, 32, 32), (1, 1200, 16, 16)]
    assert feature.shape == (1, 256, 128, 128)
    assert [h["heatmap"].shape[1] for h in heads] == [1, 2, 2, 1, 2, 2]
    vt = LSSViewTransform(cfg.input_size, 16, cfg.depth_net.depth_bound, cfg.bev_grid)
    ida = torch.tensor(g.img_aug_matrix(0.44, (0, 140, 704, 396)), dtype=torch.float32).expand(1, 6, 4, 4)
    K = torch.tensor([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1.0]]).expand(1, 6, 3, 3)
    cam2ego = torch.eye(4).expand(1, 6, 4, 4).clone()
    cam2ego[..., :3, :3] = torch.tensor([[0, 0, 1.0], [-1, 0, 0], [0, -1, 0]])
    bev = vt(torch.rand(6, 112, 16, 44).softmax(1), torch.rand(6, 150, 16, 44), K, cam2ego, ida, torch.eye(4)[None])
    assert bev.shape == (1, 150, 128, 128)


# ------------------------------------------------------------------------------------------------ backbone
@pytest.mark.parametrize("depth", [18, 34, 50])
def test_backbone_loads_torchvision_state_dict(depth, tmp_path):
    layout = torchvision_resnet_keys(depth)
    fc = layout["fc.weight"][0] * layout["fc.weight"][1] + layout["fc.bias"][0]
    model = ResNet(depth)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: s for k, s in layout.items() if not k.startswith("fc.")
    }
    assert sum(p.numel() for p in model.parameters()) + fc == TORCHVISION_PARAMS[depth]
    if depth == 34:
        return  # same BasicBlock code as 18: the layout check above is enough
    sd = {k: (torch.randn(s) if s else torch.tensor(0)) for k, s in layout.items()}
    torch.save(sd, tmp_path / "resnet.pth")
    model.load_torchvision_state_dict(tmp_path / "resnet.pth")
    torch.testing.assert_close(model.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])
    outs = model.eval()(torch.randn(1, 3, 64, 96))
    assert [o.shape[1:] for o in outs] == [(c, 64 // s, 96 // s) for c, s in zip(model.out_channels, (4, 8, 16, 32))]


def test_deform_conv_with_zero_offsets_is_a_grouped_conv():
    torch.manual_seed(0)
    dcn = DeformConv2d(8, 12, groups=4)
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(dcn(x), torch.nn.functional.conv2d(x, dcn.weight, padding=1, groups=4))
    with torch.no_grad():  # a whole-pixel offset of every tap equals shifting the input
        dcn.conv_offset.bias.copy_(torch.tensor([0.0, 1.0] * 9))  # dy = 0, dx = +1
    # tap (ky, kx) now reads x[y + ky - 1, x + kx]: a convolution over x padded 0 left, 2 right, 1 top/bottom
    shifted = torch.nn.functional.pad(x, (0, 2, 1, 1))
    torch.testing.assert_close(dcn(x), torch.nn.functional.conv2d(shifted, dcn.weight, groups=4))


# ------------------------------------------------------------------------------------------------ lift-splat
def one_camera_case(cfg, bda_np):
    """One front camera with a rotated/flipped image augmentation; returns tensors and numpy calibration."""
    K = np.array([[800.0, 0, 800], [0, 800, 450], [0, 0, 1]])
    cam2ego = g.make_transform(g.quat_to_matrix(g.yaw_to_quat(0.3)) @ np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0.0]]),
                               [1.5, 0.2, 1.6])
    ida = g.img_aug_matrix(0.25, (24, 97, 376, 225), flip=True, rotate_deg=4.0)
    as_t = lambda a, shape: torch.tensor(a, dtype=torch.float32).reshape(shape)  # noqa: E731
    return (as_t(K, (1, 1, 3, 3)), as_t(cam2ego, (1, 1, 4, 4)), as_t(ida, (1, 1, 4, 4)), as_t(bda_np, (1, 4, 4))), \
        (K, cam2ego, ida)


@pytest.mark.parametrize("bda", [np.eye(4), g.bev_aug_matrix(0.4, 1.05, True, False)], ids=["plain", "bda"])
def test_feature_at_a_known_point_lands_in_its_cell(small_cfg, bda):
    """A single feature (one pixel cell, one depth bin) must arrive in the BEV cell that contains the 3D point
    computed independently with the numpy geometry."""
    cfg = small_cfg
    vt = LSSViewTransform(cfg.input_size, cfg.feature_stride, cfg.depth_net.depth_bound, cfg.bev_grid)
    (K, cam2ego, ida, bda_t), (K_np, cam2ego_np, ida_np) = one_camera_case(cfg, bda)
    D, (h, w) = cfg.depth_net.num_bins, cfg.feature_size
    s = cfg.feature_stride
    hits = 0
    cases = [(4, 11, 20), (6, 3, 60), (2, 18, 100), (7, 0, 5), (3, 5, 40), (5, 15, 10), (1, 8, 30)]
    for (i, j, k) in cases:
        depth = torch.zeros(1, D, h, w)
        depth[0, k, i, j] = 1.0
        context = torch.zeros(1, 3, h, w)
        context[0, :, i, j] = torch.tensor([1.0, 2.0, 3.0])
        # independent expectation: augmented pixel -> original pixel -> ego -> BEV augmentation -> cell
        uv_aug = np.array([(j + 0.5) * s - 0.5, (i + 0.5) * s - 0.5, 1.0, 1.0])
        uv = (np.linalg.inv(ida_np) @ uv_aug)[:2]
        d = cfg.depth_net.depth_bound[0] + k * cfg.depth_net.depth_bound[2]
        p = g.transform_points(bda, g.unproject_points(uv[None], [d], cam2ego_np, K_np))[0]
        ix = int(np.floor((p[0] - cfg.bev_grid.x[0]) / cfg.bev_grid.x[2]))
        iy = int(np.floor((p[1] - cfg.bev_grid.y[0]) / cfg.bev_grid.y[2]))
        inside = 0 <= ix < cfg.bev_grid.nx and 0 <= iy < cfg.bev_grid.ny and cfg.bev_grid.z[0] <= p[2] < cfg.bev_grid.z[1]
        for bev in (vt(depth, context, K, cam2ego, ida, bda_t), vt.pool_static(depth, context, K, cam2ego, ida, bda_t)):
            nz = torch.nonzero(bev[0].abs().sum(0))
            if inside:
                assert nz.tolist() == [[iy, ix]], (i, j, k, p)
                torch.testing.assert_close(bev[0, :, iy, ix], torch.tensor([1.0, 2.0, 3.0]))
            else:
                assert len(nz) == 0
        hits += inside
    assert 4 <= hits < len(cases)  # both kinds: points in the grid and points dropped (below z = -5 m)


def test_cached_pooling_matches_static_pooling_and_gradients(small_cfg, real_sample_dir):
    """The cached sparse pooling (eager/training path) equals the static index_add pooling (export path), in
    values and in gradients, with the real nuScenes rig and a BEV augmentation."""
    rig = real_rig(real_sample_dir)
    cfg = small_cfg
    vt = LSSViewTransform(cfg.input_size, cfg.feature_stride, cfg.depth_net.depth_bound, cfg.bev_grid)
    model_inputs = example_inputs(cfg, 6, batch=2)
    K, cam2ego, ida = model_inputs[1:4]
    K, cam2ego = rig[0].expand(2, 6, 3, 3), rig[1].expand(2, 6, 4, 4)
    bda = torch.tensor(np.stack([np.eye(4), g.bev_aug_matrix(-0.3, 0.95, False, True)]), dtype=torch.float32)
    torch.manual_seed(1)
    D, (h, w) = cfg.depth_net.num_bins, cfg.feature_size
    logits = torch.randn(12, D, h, w, requires_grad=True)
    context = torch.randn(12, 16, h, w, requires_grad=True)
    weight = torch.randn(2, 16, cfg.bev_grid.ny, cfg.bev_grid.nx)
    results = []
    for pool in (lambda *a: vt(*a), vt.pool_static):
        bev = pool(logits.softmax(1), context, K, cam2ego, ida, bda)
        (gl, gc) = torch.autograd.grad((bev * weight).sum(), (logits, context))
        results.append((bev.detach(), gl, gc))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # the BEV augmentation really moved the features: the two batch entries differ
    assert not torch.allclose(results[0][0][0], results[0][0][1])


def test_pool_index_cache(small_cfg):
    cfg = small_cfg
    vt = LSSViewTransform(cfg.input_size, cfg.feature_stride, cfg.depth_net.depth_bound, cfg.bev_grid, cache_size=2)
    K, cam2ego, ida, _ = one_camera_case(cfg, np.eye(4))[0]
    depth = torch.rand(1, cfg.depth_net.num_bins, *cfg.feature_size)
    ctx = torch.rand(1, 4, *cfg.feature_size)
    bdas = [torch.tensor(g.bev_aug_matrix(r), dtype=torch.float32)[None] for r in (0.0, 0.1, 0.2)]
    first = vt(depth, ctx, K, cam2ego, ida, bdas[0])
    index = next(iter(vt._cache.values()))
    torch.testing.assert_close(vt(depth, ctx, K, cam2ego, ida, bdas[0].clone()), first)
    assert len(vt._cache) == 1 and next(iter(vt._cache.values())) is index  # same values -> same entry
    vt(depth, ctx, K, cam2ego, ida, bdas[1])
    vt(depth, ctx, K, cam2ego, ida, bdas[2])
    assert len(vt._cache) == 2 and all(v is not index for v in vt._cache.values())  # LRU evicted the first calibration
    # an entry built under inference_mode (e.g. validation) still serves a training step with autograd
    vt._cache.clear()
    with torch.inference_mode():
        vt(depth, ctx, K, cam2ego, ida, bdas[0])
    ctx_grad = ctx.clone().requires_grad_()
    vt(depth, ctx_grad, K, cam2ego, ida, bdas[0]).sum().backward()
    assert len(vt._cache) == 1 and ctx_grad.grad.abs().sum() > 0
    nocache = LSSViewTransform(cfg.input_size, cfg.feature_stride, cfg.depth_net.depth_bound, cfg.bev_grid, cache_size=0)
    torch.testing.assert_close(nocache(depth, ctx, K, cam2ego, ida, bdas[0]), first)
    assert len(nocache._cache) == 0


def test_geometry_stays_fp32_under_autocast(small_cfg):
    """Mixed precision must not touch the metre-scale geometry: the same cells with and without autocast."""
    cfg = small_cfg
    vt = LSSViewTransform(cfg.input_size, cfg.feature_stride, cfg.depth_net.depth_bound, cfg.bev_grid)
    K, cam2ego, ida, _ = example_inputs(cfg, 6)[1:5]
    bda = torch.tensor(g.bev_aug_matrix(0.3, 1.02, True), dtype=torch.float32)[None]
    cells, valid = vt.cells(K, cam2ego, ida, bda)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cells_amp, valid_amp = vt.cells(K, cam2ego, ida, bda)
    assert torch.equal(cells, cells_amp) and torch.equal(valid, valid_amp)


# ------------------------------------------------------------------------------------------------ temporal
def test_warp_bev_follows_ego_motion(small_cfg):
    grid = small_cfg.bev_grid  # 1.6 m cells, 64 x 64
    prev = torch.zeros(1, 1, 64, 64)
    prev[0, 0, 40, 30] = 1.0  # a static object at cell (iy 40, ix 30) of the previous frame
    # the car drove 3.2 m forward: the previous origin is 3.2 m behind the current one
    prev2curr = torch.tensor(g.make_transform(np.eye(3), [-3.2, 0, 0]), dtype=torch.float32)[None]
    out = warp_bev(prev, torch.linalg.inv(prev2curr), grid)
    assert torch.nonzero(out[0, 0] > 0.99).tolist() == [[40, 28]]
    # prev2curr = a 90 deg rotation about the origin: (x, y) -> (-y, x); cell centres map onto cell centres
    turn = torch.tensor(g.make_transform(g.yaw_to_quat(np.pi / 2), [0, 0, 0]), dtype=torch.float32)[None]
    out = warp_bev(prev, torch.linalg.inv(turn), grid)
    x, y = -51.2 + 30.5 * 1.6, -51.2 + 40.5 * 1.6
    ix, iy = int((-y + 51.2) // 1.6), int((x + 51.2) // 1.6)
    assert torch.nonzero(out[0, 0] > 0.99).tolist() == [[iy, ix]]


def test_previous_frames_forward(small_cfg):
    cfg = dataclasses.replace(small_cfg, temporal=dataclasses.replace(small_cfg.temporal, num_prev_frames=1))
    torch.manual_seed(0)
    model = StudentDetector.from_config(cfg).eval()
    inputs = example_inputs(cfg, num_cameras=2)
    images = torch.randn_like(inputs[0])
    with torch.no_grad():
        with pytest.raises(ValueError, match="previous frames"):
            model(images, *inputs[1:5])
        first = model(images, *inputs[1:5], prev2curr=torch.eye(4)[None, None], prev_bev=torch.zeros(1, 1, 32, 64, 64))
        own = first.bev_input[:, :32]
        # standing still: the previous frame's own BEV comes back unchanged in channels 32..63
        still = model(images, *inputs[1:5], prev2curr=torch.eye(4)[None, None], prev_bev=own[:, None])
        torch.testing.assert_close(still.bev_input[:, 32:], own, atol=1e-5, rtol=1e-5)
        # lifting the previous images here gives the same as passing their kept BEV
        lifted = model(images, *inputs[1:5], prev2curr=torch.eye(4)[None, None], prev_images=images[:, None],
                       prev_cam2ego=inputs[2][:, None])
        torch.testing.assert_close(lifted.bev_input, still.bev_input, atol=1e-5, rtol=1e-5)
    assert first.bev_input.shape == (1, 64, 64, 64) and first.trunk_first.shape == (1, 32, 32, 32)
