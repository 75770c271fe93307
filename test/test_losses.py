"""Every training loss against a small hand-computed case (methods.md formulas)."""
from __future__ import annotations

import math

import pytest
import torch

from labeldistill_training.losses import cmkd, depth, detection, labeldistill, stereodistill, unidistill
from labeldistill_ros.model.box_coder import BoxCoder
from labeldistill_ros.model.config import BEVGridConfig
from labeldistill_training.losses.detection import CenterPointLoss, CenterPointTargetAssigner, TaskTargets


def _grid(n: int) -> BEVGridConfig:
    """``n x n`` cells of 1 m from the origin."""
    return BEVGridConfig(x=(0.0, float(n), 1.0), y=(0.0, float(n), 1.0))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_gaussian_radius_hand_value():
    # h = w = 10 cells, overlap 0.1: the third case wins, r3 = (-4 + sqrt(160)) / 2
    assert float(detection.gaussian_radius(10, 10, 0.1)) == pytest.approx((-4 + math.sqrt(160)) / 2, rel=1e-9)


def test_gaussian_focal_loss_hand_value():
    pred = torch.tensor([[0.5, 0.2]])
    target = torch.tensor([[1.0, 0.5]])
    pos = -math.log(0.5) * 0.5 ** 2
    neg = -math.log(0.8) * 0.2 ** 2 * 0.5 ** 4
    assert float(detection.gaussian_focal_loss(pred, target)) == pytest.approx(pos + neg, rel=1e-5)


def test_target_assigner_and_detection_loss_hand_case():
    grid = _grid(8)
    assigner = CenterPointTargetAssigner(grid, [(0,), (1, 2)], min_overlap=0.1, min_radius=2, max_objs=4)
    box = torch.tensor([[3.25, 5.5, 0.8, 4.0, 2.0, 1.5, 0.3, 1.0, -2.0]])
    tg = assigner([box], [torch.tensor([0])])
    t0 = tg[0]
    assert t0.heatmap.shape == (1, 1, 8, 8) and tg[1].heatmap.shape == (1, 2, 8, 8)
    assert float(t0.heatmap[0, 0, 5, 3]) == 1.0 and float(t0.heatmap.max()) == 1.0
    assert int(t0.ind[0, 0]) == 5 * 8 + 3 and bool(t0.mask[0, 0]) and not bool(t0.mask[0, 1])
    expect = [0.25, 0.5, 0.8, math.log(4), math.log(2), math.log(1.5), math.sin(0.3), math.cos(0.3), 1.0, -2.0]
    assert torch.allclose(t0.box[0, 0], torch.tensor(expect), atol=1e-6)
    assert float(tg[1].heatmap.sum()) == 0.0
    # radius 2 (max(2, int(r))), sigma = 5 / 6: neighbour one cell away = exp(-1 / (2 sigma^2))
    sigma = 5 / 6
    assert float(t0.heatmap[0, 0, 5, 4]) == pytest.approx(math.exp(-1 / (2 * sigma ** 2)), rel=1e-5)

    # head outputs: heatmap logit 0 everywhere (p = 0.5), regression = target + 0.1 on every channel
    def head(n_cls, reg_vals):
        out = {"heatmap": torch.zeros(1, n_cls, 8, 8)}
        chans = torch.tensor(reg_vals).view(1, 10, 1, 1).expand(1, 10, 8, 8)
        out.update(reg=chans[:, 0:2], height=chans[:, 2:3], dim=chans[:, 3:6], rot=chans[:, 6:8], vel=chans[:, 8:10])
        return out

    outs = [head(1, [e + 0.1 for e in expect]), head(2, [0.0] * 10)]
    cw = [1.0] * 8 + [0.5, 0.5]
    total, parts = CenterPointLoss(code_weights=cw)(outs, tg)
    hm = t0.heatmap[0, 0]
    neg = (-math.log(0.5) * 0.25 * (1 - hm) ** 4)
    neg = float(neg[hm < 1].sum())
    pos = -math.log(0.5) * 0.25
    hm1 = 2 * 64 * (-math.log(0.5) * 0.25)  # task 1: no peaks -> normaliser 1, all negatives with weight 1
    assert float(parts["hm"]) == pytest.approx(pos + neg + hm1, rel=1e-4)
    reg = 0.25 * 0.1 * sum(cw) / (1 + 1e-4)
    assert float(parts["reg"]) == pytest.approx(reg, rel=1e-4)
    # unlabeled samples contribute nothing
    total_u, parts_u = CenterPointLoss(code_weights=cw)(outs, tg, sample_mask=torch.tensor([False]))
    assert float(parts_u["reg"]) == 0.0 and float(parts_u["hm"]) == 0.0


def test_depth_loss_hand_case():
    img = torch.zeros(1, 1, 4, 4)
    img[0, 0, 0, 1] = 5.0
    img[0, 0, 1, 0] = 3.7  # patch (0, 0): min non-zero = 3.7
    assert float(depth.downsample_depth_min(img, 2)[0, 0, 0, 0]) == pytest.approx(3.7)
    assert float(depth.downsample_depth_min(img, 2)[0, 0, 1, 1]) == 0.0
    # 3 bins: d_min 2, step 1 -> 3.7 -> floor((3.7 - 1) / 1) = 2 -> class 2 -> bin index 1
    oh = depth.depth_one_hot(torch.tensor([3.7, 0.0, 10.0]), 2.0, 1.0, 3)
    assert oh.tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]
    prob = torch.tensor([0.5, 0.3, 0.2]).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    loss = depth.DepthLoss(2.0, 1.0, 3, stride=2, weight=3.0)(prob, img)
    bce = -math.log(0.5) - math.log(0.3) - math.log(0.8)
    assert float(loss) == pytest.approx(3.0 * bce, rel=1e-5)


def _targets_one_peak(H=8, W=8):
    hm = torch.zeros(1, 1, H, W)
    hm[0, 0, 4, 4] = 1.0
    hm[0, 0, 4, 5] = 0.5
    ind = torch.tensor([[4 * W + 4]])
    return [TaskTargets(hm, torch.zeros(1, 1, 10), ind, torch.tensor([[True]]), torch.tensor([[0]]))]


def test_labeldistill_masks_and_feature_loss():
    tg = _targets_one_peak()
    soft, binary = labeldistill.gt_feature_masks(tg, 2)
    assert soft[0].shape == (1, 8, 8) and soft[1].shape == (1, 4, 4)
    assert float(soft[0].sum()) == 1.5 and float(binary[0].sum()) == 2
    ref = torch.nn.functional.interpolate(soft[0][:, None], size=(4, 4), mode="bilinear", align_corners=True)[:, 0]
    assert torch.equal(soft[1], ref)
    S = [torch.ones(1, 2, 8, 8)]
    T = [torch.zeros(1, 2, 8, 8)]
    # sum_c (1 - 0)^2 = 2 per cell; weights sum 1.5 -> 2 * 1.5 / 1.5
    assert float(labeldistill.masked_feature_loss(S, T, [soft[0]])) == pytest.approx(2.0)
    half = [soft[0] * 0.2]  # sum W = 0.3 < 1 -> normaliser max(1, .) = 1
    assert float(labeldistill.masked_feature_loss(S, T, half)) == pytest.approx(2 * 0.3)


def test_labeldistill_response_literal_is_negative_term_only():
    tg = _targets_one_peak()
    zs = torch.zeros(1, 1, 8, 8)
    zt = torch.full((1, 1, 8, 8), 3.0)
    s = {"heatmap": zs, "reg": torch.zeros(1, 2, 8, 8), "height": torch.zeros(1, 1, 8, 8),
         "dim": torch.zeros(1, 3, 8, 8), "rot": torch.zeros(1, 2, 8, 8), "vel": torch.zeros(1, 2, 8, 8)}
    t = {k: v.clone() for k, v in s.items()}
    t["heatmap"] = zt
    t["dim"] = torch.full((1, 3, 8, 8), 0.4)
    loss = labeldistill.response_loss([s], [t], tg)
    pt = torch.sigmoid(torch.tensor(3.0))
    target = pt * tg[0].heatmap
    neg = (-math.log(0.5) * 0.25 * (1 - target) ** 4).sum()  # no positives: p_t * H < 1
    reg = 0.25 * 3 * 0.4 / 1.0
    assert float(loss) == pytest.approx(float(neg) + reg, rel=1e-5)


def test_unidistill_keypoints_and_axis_order():
    box = torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.0, 0.0, 0.0, 0.0]])
    kp = unidistill.box_keypoints(box)[0]
    assert kp.shape == (9, 2)
    assert torch.allclose(kp[4], torch.tensor([1.0, 2.0]))
    assert {tuple(p) for p in kp[:4].tolist()} == {(3.0, 3.0), (3.0, 1.0), (-1.0, 1.0), (-1.0, 3.0)}
    grid = _grid(8)
    feat = torch.zeros(1, 8, 8)
    feat[0, 2, 5] = 7.0  # row (y) 2, column (x) 5
    pt = torch.tensor([[[5.5, 2.5]]])  # x = 5.5 m, y = 2.5 m: centre of that cell
    assert float(unidistill.sample_keypoints(feat, pt, grid)[0, 0, 0]) == pytest.approx(7.0)
    assert float(unidistill.sample_keypoints(feat, pt, grid, transpose_bug=True)[0, 0, 0]) == 0.0
    feat_t = torch.zeros(1, 8, 8)
    feat_t[0, 5, 2] = 7.0
    assert float(unidistill.sample_keypoints(feat_t, pt, grid, transpose_bug=True)[0, 0, 0]) == pytest.approx(7.0)


def test_unidistill_feature_relation_response_hand():
    fs = torch.zeros(1, 9, 2)
    ft = torch.ones(1, 9, 2)
    assert float(unidistill.keypoint_feature_loss(fs, ft)) == pytest.approx(1.0)
    a = torch.tensor([[1.0, 0.0]]).repeat(9, 1)[None]
    b = a.clone()
    b[0, 0] = torch.tensor([0.0, 1.0])  # keypoint 0 orthogonal to the rest: 16 entries of R differ by 1
    assert float(unidistill.keypoint_relation_loss(a, b)) == pytest.approx(16 / 81, rel=1e-3)
    G = torch.zeros(1, 4, 4)
    G[0, 1, 1] = 1.0
    s = {"heatmap": torch.zeros(1, 1, 4, 4)}
    t = {"heatmap": torch.full((1, 1, 4, 4), 2 * _logit(0.8))}
    for k, c in zip(detection.REG_KEYS, (2, 1, 3, 2, 2)):
        s[k] = torch.zeros(1, c, 4, 4)
        t[k] = torch.full((1, c, 4, 4), 0.5)
    lc, lr = unidistill.unidistill_response_loss([s], [t], G, teacher_temperature=2.0)
    assert float(lc) == pytest.approx(abs(0.5 - 0.8) / (1 + 1e-4), rel=1e-4)
    assert float(lr) == pytest.approx(0.5 / (1 + 1e-4), rel=1e-4)


def test_cmkd_hand_cases():
    fs, ft = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    assert float(cmkd.bev_feature_loss(fs, ft)) == pytest.approx(1.0)
    zs = torch.zeros(1, 1, 1, 2)
    zt = torch.tensor([_logit(0.75), _logit(0.25)]).view(1, 1, 1, 2)
    # both cells: BCE(0.5 | t) = log 2, modulating |0.5 - t|^2 = 0.0625; one cell has t >= 0.5
    assert float(cmkd.qfl_soft_loss(zs, zt)) == pytest.approx(2 * math.log(2) * 0.0625, rel=1e-5)
    s = {"heatmap": torch.zeros(1, 1, 1, 1)}
    t = {"heatmap": torch.tensor([[[[0.0]]]])}
    for k, c in zip(detection.REG_KEYS, (2, 1, 3, 2, 2)):
        s[k] = torch.zeros(1, c, 1, 1)
        t[k] = torch.full((1, c, 1, 1), 0.5)
    # SmoothL1(0.5) = 0.5 * 0.25 = 0.125, weight sigmoid(0) = 0.5, five branches
    assert float(cmkd.soft_regression_loss(s, t)) == pytest.approx(5 * 0.125 * 0.5)


def test_stereodistill_iou_gates_and_cld():
    def iou(a, b):
        return float(stereodistill.box_iou_3d(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)))

    g = [0.0, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0]
    assert iou(g, g) == pytest.approx(1.0)
    assert iou(g, [1.0, 0, 0, 4, 2, 1, 0]) == pytest.approx(0.6)
    sq = [0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0]
    octagon = 8 * (math.sqrt(2) - 1)  # overlap of a 2 x 2 square and itself turned by 45 degrees
    assert iou(sq, sq[:6] + [math.pi / 4]) == pytest.approx(octagon / (8 - octagon), rel=1e-6)
    grid = _grid(8)
    gt = torch.tensor([[0.5, 0.5, 0.0, math.log(4), math.log(2), 0.0, 0.0, 1.0, 1.0, 0.0]])
    te = gt.clone()
    te[0, 0] += 1.0  # location off by 1 m along the heading -> IoU 0.6 < 0.7: dropped
    te[0, 3] = math.log(4.2)  # size close -> kept
    te[0, 8] = 3.0  # velocity off by 2 m/s -> dropped
    gates = stereodistill.component_gates(te, gt, torch.tensor([3 * 8 + 3]), BoxCoder(grid))
    assert gates["loc"].tolist() == [False] and gates["size"].tolist() == [True]
    assert gates["rot"].tolist() == [True] and gates["vel"].tolist() == [False]
    zs = {"heatmap": torch.zeros(1, 2, 1, 1)}
    zt = {"heatmap": torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)}
    fg = torch.ones(1, 1, 1)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(stereodistill.cld_loss([zs], [zt], fg)) == pytest.approx(kl, rel=1e-5)


def _heads(H=8, W=8, fill=0.0, requires_grad=False):
    h = {"heatmap": torch.zeros(1, 1, H, W)}
    for k, c in zip(detection.REG_KEYS, (2, 1, 3, 2, 2)):
        h[k] = torch.full((1, c, H, W), fill, requires_grad=requires_grad)
    return h


def test_labeldistill_response_regression_masks_nan_targets():
    """The reference's ``mask *= isnotnan(GT)``: a NaN GT code element drops that element of the KD regression
    term (finite loss), the normaliser stays the object count, and every other element's gradient is unchanged."""
    tg = _targets_one_peak()
    s = _heads(requires_grad=True)
    t = _heads(fill=0.4)
    loss_ok = labeldistill.response_loss([s], [t], tg)
    g_ok = torch.autograd.grad(loss_ok, [s["vel"], s["dim"]])
    tg_nan = [TaskTargets(tg[0].heatmap, tg[0].box.clone(), tg[0].ind, tg[0].mask, tg[0].gt_index)]
    tg_nan[0].box[0, 0, 9] = float("nan")  # vy unknown
    loss = labeldistill.response_loss([s], [t], tg_nan)
    assert torch.isfinite(loss)
    g_vel, g_dim = torch.autograd.grad(loss, [s["vel"], s["dim"]])
    assert torch.isfinite(g_vel).all() and torch.isfinite(g_dim).all()
    # 10 elements of |0 - 0.4| at weight 0.25 before, 9 after (one object: normaliser 1 either way)
    assert float((loss_ok - loss).detach()) == pytest.approx(0.25 * 0.4, rel=1e-5)
    assert float(g_vel[0, 1, 4, 4]) == 0.0 and float(g_ok[0][0, 1, 4, 4]) == pytest.approx(-0.25)
    assert float(g_vel[0, 0, 4, 4]) == pytest.approx(-0.25)  # vx untouched
    assert torch.equal(g_dim, g_ok[1])


def test_nearest_bev_iou_hand_values():
    a = torch.tensor([0.0, 0.0, 4.0, 2.0, 0.0])
    assert float(unidistill.nearest_bev_iou(a, a)) == pytest.approx(1.0)
    b = torch.tensor([1.0, 0.0, 4.0, 2.0, 0.0])  # shifted 1 m along the length: 3 x 2 overlap / (8 + 8 - 6)
    assert float(unidistill.nearest_bev_iou(a, b)) == pytest.approx(6 / 10)
    c = torch.tensor([0.0, 0.0, 4.0, 2.0, math.pi / 2 - 0.1])  # snapped to 2 (x) x 4 (y): 2 x 2 / (8 + 8 - 4)
    assert float(unidistill.nearest_bev_iou(a, c)) == pytest.approx(4 / 12)
    d = torch.tensor([0.0, 0.0, 4.0, 2.0, math.pi - 0.1])  # heading reversed: same footprint
    assert float(unidistill.nearest_bev_iou(a, d)) == pytest.approx(1.0)


def test_gaussian_box_mask_index_names_the_largest_gaussian():
    grid = _grid(16)
    boxes = torch.tensor([[3.5, 3.5, 0, 4.0, 4.0, 1, 0, 0, 0], [10.5, 10.5, 0, 6.0, 6.0, 1, 0, 0, 0]])
    G, idx = unidistill.gaussian_box_mask([boxes], grid, return_index=True)
    assert torch.equal(G, unidistill.gaussian_box_mask([boxes], grid))
    assert int(idx[0, 3, 3]) == 0 and int(idx[0, 10, 10]) == 1 and int(idx[0, 15, 0]) == -1
    assert torch.equal(idx[0] >= 0, G[0] > 0)


def test_unidistill_iou_channel_hand_case():
    """Teacher channel = 2 (IoU(teacher box, GT) - 0.5) over the mask; the response regression term averages the
    11 channels of a task; the IoU-aware loss pulls the student's channel to its own box's IoU."""
    grid = _grid(16)
    gt = torch.tensor([[8.5, 8.5, 0.5, 8.0, 4.0, 1.0, 0.0, 0.0, 0.0]])  # centre cell (8, 8), offset 0.5; radius 1
    G, idx = unidistill.gaussian_box_mask([gt], grid, return_index=True)
    assert float(G[0, 8, 9]) > 0
    t = _heads(16, 16)
    t["reg"][:] = 0.5
    t["dim"][:, :2] = torch.tensor([math.log(8.0), math.log(4.0)]).view(1, 2, 1, 1)
    t["rot"][:, 1] = 1.0  # sin 0, cos 1
    ch = unidistill.teacher_iou_channel([t], [gt], idx, grid)[0]
    assert ch.shape == (1, 1, 16, 16)
    assert float(ch[0, 0, 8, 8]) == pytest.approx(1.0)  # the teacher's box at the centre cell is the GT box
    assert float(ch[0, 0, 8, 9]) == pytest.approx(2 * (28 / 36 - 0.5))  # one cell right: 1 m off along x
    assert float(ch[0, 0, 0, 0]) == 0.0  # outside the mask
    s = _heads(16, 16)
    s_iou = [torch.zeros(1, 1, 16, 16)]
    lc, lr = unidistill.unidistill_response_loss([s], [t], G, 2.0, s_iou, [ch])
    _, lr10 = unidistill.unidistill_response_loss([s], [t], G, 2.0)
    d = (torch.cat([detection.concat_regression(t), ch], 1)).abs().mean(1)
    assert float(lr) == pytest.approx(float((G * d).sum() / (G.sum() + 1e-4)), rel=1e-5)
    assert float(lr) != pytest.approx(float(lr10))
    # IoU-aware loss at the centre cell: the student's box (offset 0, size e^0 = 1 x 1, yaw 0) vs the GT box
    tgt = CenterPointTargetAssigner(grid, [(0,)])([gt], [torch.tensor([0])])
    iou_map = torch.zeros(1, 1, 16, 16, requires_grad=True)
    loss = unidistill.iou_aware_loss([s], [iou_map], tgt, grid)
    s_box = torch.tensor([8.0, 8.0, 1.0, 1.0, 0.0])
    iou = float(unidistill.nearest_bev_iou(s_box, torch.tensor([8.5, 8.5, 8.0, 4.0, 0.0])))
    assert iou == pytest.approx(1 / 32)
    assert float(loss.detach()) == pytest.approx(abs(0 - 2 * (iou - 0.5)) / (1 + 1e-4), rel=1e-5)
    (g,) = torch.autograd.grad(loss, iou_map)
    assert float(g.abs().sum()) == pytest.approx(1 / (1 + 1e-4), rel=1e-5) and float(g[0, 0, 8, 8]) != 0


def test_a_teacher_without_velocity_would_cancel_the_students_velocity_loss():
    """The CPU teacher has not learned velocity (it predicts ~0 m/s at the GT centres of every class but car), and
    the response term is an L1 towards the teacher with the GT term's weight: between the teacher's 0 and the GT
    velocity the two gradients cancel (to the normalisers' 1e-4), so the student's velocity never leaves 0. The
    temporal CPU config therefore leaves the velocity out of the response (``response_code_weights`` 0 for vx, vy):
    the GT gradient is kept."""
    from pathlib import Path

    from labeldistill_training.config import load_train_config

    tg = _targets_one_peak()
    tg[0].box[0, 0, 8:10] = torch.tensor([6.0, -3.0])  # a moving car
    s = _heads(requires_grad=True)
    with torch.no_grad():
        s["vel"][0, :, 4, 4] = torch.tensor([2.0, -1.0])  # the student, between the teacher (0) and the GT
    teacher = _heads(fill=0.0)
    def gt_loss():
        return CenterPointLoss()([s], tg)[0]

    g_gt = torch.autograd.grad(gt_loss(), s["vel"])[0][0, :, 4, 4]
    assert g_gt.tolist() == pytest.approx([-0.25, 0.25], rel=1e-3)  # towards the GT (normaliser #objects + 1e-4)
    g_ref = torch.autograd.grad(gt_loss() + labeldistill.response_loss([s], [teacher], tg), s["vel"])[0][0, :, 4, 4]
    # the reference's all-ones weights: what is left of the velocity's gradient is the normalisers' 1e-4
    assert g_ref.abs().max() < 2e-4 * g_gt.abs().max()
    path = Path(__file__).resolve().parents[1] / "config" / "train" / "cpu_small_2key.yaml"
    cw = load_train_config(str(path)).distill.labeldistill.response_code_weights
    assert tuple(cw) == (1.0,) * 8 + (0.0, 0.0)
    kd = labeldistill.response_loss([s], [teacher], tg, code_weights=cw)
    g_cpu = torch.autograd.grad(gt_loss() + kd, s["vel"])[0][0, :, 4, 4]
    assert torch.equal(g_cpu, g_gt)
