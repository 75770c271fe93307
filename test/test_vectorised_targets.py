"""The vectorised target assigner, UniDistill Gaussian mask, label rasteriser and StereoDistill 3D IoU against the
per-box Python implementations they replaced (kept here, verbatim up to the grid type, as slow references), on random boxes
including overlapping, out-of-range, degenerate and over-capacity ones."""
from __future__ import annotations

import math
import time

import pytest
import torch

from labeldistill_ros.model.config import BEVGridConfig
from labeldistill_training.losses import stereodistill, unidistill
from labeldistill_training.losses.detection import CenterPointTargetAssigner, splat_gaussians
from labeldistill_training.models.label_encoder import rasterize_batch


# ------------------------------------------------------------------------------------- references (previous code)
def ref_gaussian_radius(height: float, width: float, min_overlap: float = 0.5) -> float:
    a1 = 1.0
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(max(b1 ** 2 - 4 * a1 * c1, 0.0))) / 2
    a2 = 4.0
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(max(b2 ** 2 - 4 * a2 * c2, 0.0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(max(b3 ** 2 - 4 * a3 * c3, 0.0))) / 2
    return min(r1, r2, r3)


def ref_gaussian_2d(radius: int) -> torch.Tensor:
    d = 2 * radius + 1
    sigma = d / 6.0
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma * sigma))
    g[g < torch.finfo(torch.float32).eps * g.max()] = 0
    return g


def ref_draw(heatmap: torch.Tensor, center: tuple[int, int], radius: int) -> None:
    g = ref_gaussian_2d(radius)
    x, y = int(center[0]), int(center[1])
    H, W = heatmap.shape
    left, right = min(x, radius), min(W - x, radius + 1)
    top, bottom = min(y, radius), min(H - y, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return
    hm = heatmap[y - top:y + bottom, x - left:x + right]
    gg = g[radius - top:radius + bottom, radius - left:radius + right]
    torch.maximum(hm, gg, out=hm)


def ref_assign(grid: BEVGridConfig, task_classes, gt_boxes, gt_labels, min_overlap=0.1, min_radius=2, max_objs=500):
    """The previous ``CenterPointTargetAssigner.__call__`` (a Python loop per box, ``float(tensor)`` per value)."""
    cell, x_min, y_min, H, W = grid.cell, grid.x_min, grid.y_min, grid.ny, grid.nx
    B = len(gt_boxes)
    out = []
    for classes in task_classes:
        hm = torch.zeros(B, len(classes), H, W)
        box = torch.zeros(B, max_objs, 10)
        ind = torch.zeros(B, max_objs, dtype=torch.long)
        mask = torch.zeros(B, max_objs, dtype=torch.bool)
        gidx = torch.full((B, max_objs), -1, dtype=torch.long)
        for b in range(B):
            boxes = gt_boxes[b].float()
            labels = gt_labels[b].long()
            k = 0
            for local, cls in enumerate(classes):
                for j in torch.nonzero(labels == cls).flatten().tolist():
                    if k >= max_objs:
                        break
                    bx = boxes[j]
                    l_cells, w_cells = float(bx[3]) / cell, float(bx[4]) / cell
                    if l_cells <= 0 or w_cells <= 0:
                        continue
                    radius = max(min_radius, int(ref_gaussian_radius(w_cells, l_cells, min_overlap)))
                    cx, cy = (float(bx[0]) - x_min) / cell, (float(bx[1]) - y_min) / cell
                    ix, iy = int(cx), int(cy)
                    if not (0 <= cx < W and 0 <= cy < H):
                        continue
                    ref_draw(hm[b, local], (ix, iy), radius)
                    ind[b, k] = iy * W + ix
                    mask[b, k] = True
                    gidx[b, k] = j
                    box[b, k] = torch.stack([
                        bx.new_tensor(cx - ix), bx.new_tensor(cy - iy), bx[2],
                        torch.log(bx[3].clamp(min=1e-3)), torch.log(bx[4].clamp(min=1e-3)),
                        torch.log(bx[5].clamp(min=1e-3)),
                        torch.sin(bx[6]), torch.cos(bx[6]), bx[7], bx[8]])
                    k += 1
        out.append((hm, box, ind, mask, gidx))
    return out


def ref_gaussian_box_mask(gt_boxes, grid: BEVGridConfig, min_overlap=0.7):
    """The previous ``unidistill.gaussian_box_mask(..., return_index=True)``."""
    G = torch.zeros(len(gt_boxes), grid.ny, grid.nx)
    idx = torch.full((len(gt_boxes), grid.ny, grid.nx), -1, dtype=torch.long)
    for b, boxes in enumerate(gt_boxes):
        for j, bx in enumerate(boxes.tolist()):
            cx, cy = (bx[0] - grid.x_min) / grid.cell, (bx[1] - grid.y_min) / grid.cell
            if not (0 <= cx < grid.nx and 0 <= cy < grid.ny):
                continue
            r = max(0, int(ref_gaussian_radius(bx[3] / grid.cell, bx[4] / grid.cell, min_overlap)))
            before = G[b].clone()
            ref_draw(G[b], (int(cx), int(cy)), r)
            idx[b][G[b] > before] = j
    return G, idx


def _ref_cells_in_polygon(poly, cols, rows):
    """Per cell, in plain Python: on an edge (boundary counts inside) or inside by the even-odd ray rule."""
    vs = [(float(c), float(r)) for c, r in poly.tolist()]
    out = []
    for px, py in zip(cols.tolist(), rows.tolist()):
        hit = on = False
        for (ax, ay), (bx, by) in zip(vs, vs[-1:] + vs[:-1]):
            if (bx - ax) * (py - ay) == (by - ay) * (px - ax) and min(ax, bx) <= px <= max(ax, bx) \
                    and min(ay, by) <= py <= max(ay, by):
                on = True
            if (ay <= py < by or by <= py < ay) and px < (bx - ax) * (py - ay) / (by - ay) + ax:
                hit = not hit
        out.append(hit or on)
    return torch.tensor(out, dtype=torch.bool)


def ref_rasterize_labels(boxes, labels, grid: BEVGridConfig, num_classes=10, footprint_scale=0.5):
    """The previous ``label_encoder.rasterize_labels`` (a Python loop per box)."""
    H, W = grid.ny, grid.nx
    box_map, label_map, mask = torch.zeros(9, H, W), torch.zeros(num_classes, H, W), torch.zeros(H, W)
    boxes = torch.nan_to_num(boxes[:, :9].float())
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]])
    for j in range(boxes.shape[0]):
        bx = boxes[j]
        cx = (bx[0] - grid.x_min) / grid.cell
        cy = (bx[1] - grid.y_min) / grid.cell
        half_l = bx[3] / grid.cell * footprint_scale / 2
        half_w = bx[4] / grid.cell * footprint_scale / 2
        c, s = torch.cos(bx[6]), torch.sin(bx[6])
        a = signs[:, 0] * half_l
        b = signs[:, 1] * half_w
        poly = torch.stack([cx + a * c - b * s, cy + a * s + b * c], dim=1).trunc().long()
        c0, c1 = int(poly[:, 0].min()), int(poly[:, 0].max())
        r0, r1 = int(poly[:, 1].min()), int(poly[:, 1].max())
        rr, cc = torch.meshgrid(torch.arange(r0, r1 + 1), torch.arange(c0, c1 + 1), indexing="ij")
        rr, cc = rr.flatten(), cc.flatten()
        keep = _ref_cells_in_polygon(poly, cc, rr)
        rr = rr[keep].clamp(0, H - 1)
        cc = cc[keep].clamp(0, W - 1)
        if rr.numel() == 0:
            continue
        mask[rr, cc] = 1.0
        label_map[:, rr, cc] = 0.0
        label_map[int(labels[j]), rr, cc] = 1.0
        box_map[:, rr, cc] = bx[:, None]
    return box_map, label_map, mask


def _rect(cx, cy, l, w, yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    return [(cx + a * c - b * s, cy + a * s + b * c)
            for a, b in ((l / 2, w / 2), (-l / 2, w / 2), (-l / 2, -w / 2), (l / 2, -w / 2))]


def _poly_area(p):
    return 0.5 * abs(sum(p[i][0] * p[i - 1][1] - p[i - 1][0] * p[i][1] for i in range(len(p))))


def _clip(subject, clip):
    """Sutherland-Hodgman clipping of a polygon by a convex counter-clockwise polygon."""
    out = subject
    for i in range(len(clip)):
        a, b = clip[i - 1], clip[i]
        inp, out = out, []
        if not inp:
            break

        def inside(p, a=a, b=b):
            return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]) >= 0

        def inter(p, q, a=a, b=b):
            x1, y1, x2, y2 = a[0], a[1], b[0], b[1]
            x3, y3, x4, y4 = p[0], p[1], q[0], q[1]
            den = (x1 - x2) * (y3 - y4) - (y1 - y2) * (x3 - x4)
            if abs(den) < 1e-12:
                return q
            t = ((x1 - x3) * (y3 - y4) - (y1 - y3) * (x3 - x4)) / den
            return (x1 + t * (x2 - x1), y1 + t * (y2 - y1))

        for j in range(len(inp)):
            p, q = inp[j - 1], inp[j]
            if inside(q):
                if not inside(p):
                    out.append(inter(p, q))
                out.append(q)
            elif inside(p):
                out.append(inter(p, q))
    return out


def ref_iou3d(a, b) -> float:
    """The previous pure-Python ``stereodistill.iou3d``."""
    pa, pb = _rect(a[0], a[1], a[3], a[4], a[6]), _rect(b[0], b[1], b[3], b[4], b[6])
    inter_bev = _poly_area(_clip(pa, pb)) if len(pa) else 0.0
    dz = max(0.0, min(a[2] + a[5] / 2, b[2] + b[5] / 2) - max(a[2] - a[5] / 2, b[2] - b[5] / 2))
    inter = inter_bev * dz
    va, vb = a[3] * a[4] * a[5], b[3] * b[4] * b[5]
    return inter / max(va + vb - inter, 1e-9)


# --------------------------------------------------------------------------------------------------- data
GRID = BEVGridConfig(x=(-20.0, 20.0, 0.8), y=(-16.0, 16.0, 0.8))  # 50 x 40 cells (rows != columns)
TASKS = [(0,), (1, 2), (3, 4), (5,), (6, 7), (8, 9)]


def random_gt(n: int, gen: torch.Generator, span: float = 24.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes over +-span m (some off the grid), clusters of overlapping ones, a few zero/negative sizes, NaN
    velocities and labels outside every task."""
    u = torch.rand(n, 9, generator=gen)
    boxes = torch.stack([(u[:, 0] * 2 - 1) * span, (u[:, 1] * 2 - 1) * span, u[:, 2] * 2 - 1,
                         0.2 + u[:, 3] * 12, 0.2 + u[:, 4] * 3, 0.5 + u[:, 5] * 3,
                         (u[:, 6] * 2 - 1) * math.pi, (u[:, 7] * 2 - 1) * 5, (u[:, 8] * 2 - 1) * 5], 1)
    k = n // 4  # overlapping copies, jittered by under a cell
    boxes[:k, :2] = boxes[k:2 * k, :2] + (torch.rand(k, 2, generator=gen) - 0.5) * 0.6
    if n >= 8:
        boxes[2 * k:2 * k + 2, 3] = 0.0
        boxes[2 * k + 2, 4] = -1.0
        boxes[2 * k + 3, 7:] = float("nan")
    labels = torch.randint(0, 11, (n,), generator=gen)  # 10: no task
    return boxes, labels


def _assert_targets_match(got, ref):
    for t, (hm, box, ind, mask, gidx) in zip(got, ref):
        torch.testing.assert_close(t.heatmap, hm, atol=1e-6, rtol=0)
        assert torch.equal(t.heatmap == 1, hm == 1)  # the focal loss's positives exactly
        assert torch.equal(t.mask, mask) and torch.equal(t.ind, ind) and torch.equal(t.gt_index, gidx)
        torch.testing.assert_close(t.box, box, atol=1e-6, rtol=0, equal_nan=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assigner_matches_the_per_box_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    gts = [random_gt(n, gen) for n in (0, 37, 120)]
    boxes, labels = [g[0] for g in gts], [g[1] for g in gts]
    for max_objs in (500, 5):  # 5: objects past the slots dropped, heatmap included
        got = CenterPointTargetAssigner(GRID, TASKS, max_objs=max_objs)(boxes, labels)
        _assert_targets_match(got, ref_assign(GRID, TASKS, boxes, labels, max_objs=max_objs))


def test_assigner_min_radius_and_empty_batch():
    gen = torch.Generator().manual_seed(5)
    boxes, labels = random_gt(60, gen)
    got = CenterPointTargetAssigner(GRID, TASKS, min_overlap=0.5, min_radius=0)([boxes], [labels])
    _assert_targets_match(got, ref_assign(GRID, TASKS, [boxes], [labels], min_overlap=0.5, min_radius=0))
    empty = CenterPointTargetAssigner(GRID, TASKS)([], [])
    assert len(empty) == 6 and empty[1].heatmap.shape == (0, 2, 40, 50)
    with pytest.raises(ValueError, match="one task only"):
        CenterPointTargetAssigner(GRID, [(0, 1), (1,)])


def test_splat_gaussians_radius_beyond_the_map():
    """A radius larger than the map: the window is cut to the map, sigma still from the full radius."""
    hm = torch.zeros(8, 10)
    ref_draw(hm, (3, 2), 40)
    got = splat_gaussians(1, 8, 10, torch.tensor([0]), torch.tensor([[3, 2]]), torch.tensor([40]), torch.tensor([True]))
    assert torch.equal(got[0], hm)

def test_gaussian_box_mask_matches_the_per_box_reference():
    gen = torch.Generator().manual_seed(3)
    gts = [random_gt(n, gen)[0] for n in (50, 0, 9)]
    G, idx = unidistill.gaussian_box_mask(gts, GRID, return_index=True)
    G_ref, idx_ref = ref_gaussian_box_mask(gts, GRID)
    torch.testing.assert_close(G, G_ref, atol=1e-6, rtol=0)
    assert torch.equal(idx, idx_ref)
    assert torch.equal(unidistill.gaussian_box_mask(gts, GRID), G)


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_rasterize_batch_matches_the_per_box_reference(scale):
    gen = torch.Generator().manual_seed(7)
    gts = [random_gt(n, gen) for n in (45, 0, 12)]
    boxes = [g[0] for g in gts]
    labels = [g[1].clamp(max=9) for g in gts]
    got = rasterize_batch(boxes, labels, GRID, footprint_scale=scale)
    ref = [ref_rasterize_labels(b, lb, GRID, footprint_scale=scale) for b, lb in zip(boxes, labels)]
    for g, r in zip(got, zip(*ref)):
        assert torch.equal(g, torch.stack(r))


def random_pairs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs from disjoint to nearly identical: b is a jittered a (centre, size, yaw each perturbed or not)."""
    u = torch.rand(n, 7, generator=gen)
    a = torch.stack([(u[:, 0] * 2 - 1) * 40, (u[:, 1] * 2 - 1) * 40, u[:, 2] - 0.5, 0.5 + u[:, 3] * 10,
                     0.5 + u[:, 4] * 3, 0.5 + u[:, 5] * 3, (u[:, 6] * 2 - 1) * math.pi], 1)
    scale = torch.tensor([3.0, 3.0, 1.0, 1.0, 0.5, 0.5, 1.0])
    on = torch.rand(n, 7, generator=gen) < 0.5
    b = a + torch.where(on, (torch.rand(n, 7, generator=gen) - 0.5) * scale, torch.zeros(n, 7))
    b[:, 3:6] = torch.where(on[:, 3:6], b[:, 3:6].abs() + 0.05, b[:, 3:6])
    b[: n // 10] = a[: n // 10]  # identical
    return a, b


def test_iou3d_matches_the_python_reference_on_random_boxes():
    a, b = random_pairs(3000, torch.Generator().manual_seed(4))
    got = stereodistill.box_iou_3d(a.double(), b.double())
    ref = torch.tensor([ref_iou3d(x, y) for x, y in zip(a.double().tolist(), b.double().tolist())],
                       dtype=torch.float64)
    assert float((got - ref).abs().max()) < 1e-9
    assert float(ref.min()) == 0.0 and float(ref.max()) == pytest.approx(1.0)  # the set spans disjoint to near-identical
    # symmetric, and float32 inputs give float32 within float tolerance
    assert float((stereodistill.box_iou_3d(b.double(), a.double()) - got).abs().max()) < 1e-9
    assert float((stereodistill.box_iou_3d(a, b).double() - ref).abs().max()) < 1e-5


def test_iou3d_hand_cases():
    def iou(x, y):
        return float(stereodistill.box_iou_3d(torch.tensor(x, dtype=torch.float64),
                                              torch.tensor(y, dtype=torch.float64)))

    for yaw in (0.0, 0.7, -2.5, math.pi / 2):
        box = [12.0, -30.0, 0.4, 4.2, 1.9, 1.6, yaw]
        assert iou(box, box) == pytest.approx(1.0, abs=1e-12)  # identical (shared edges counted once)
    a = [0.0, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0]
    assert iou(a, [1.0, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0]) == pytest.approx(6 / 10)  # 3 x 2 overlap along l
    assert iou(a, [2.0, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0]) == pytest.approx(1 / 3)  # axis-aligned half overlap
    assert iou(a, [0.0, 1.0, 0.0, 4.0, 2.0, 1.0, 0.0]) == pytest.approx(1 / 3)  # half across the width
    assert iou(a, [0.0, 0.0, 0.5, 4.0, 2.0, 1.0, 0.0]) == pytest.approx(1 / 3)  # half the height
    assert iou(a, [0.0, 0.0, 0.0, 4.0, 2.0, 1.0, math.pi]) == pytest.approx(1.0)  # reversed heading
    assert iou(a, [4.0, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0]) == 0.0  # touching along an edge
    assert iou(a, [10.0, 3.0, 0.0, 4.0, 2.0, 1.0, 0.3]) == 0.0  # disjoint
    assert iou(a, [0.0, 0.0, 2.0, 4.0, 2.0, 1.0, 0.0]) == 0.0  # above
    assert iou(a, [0.0, 0.0, 0.0, 2.0, 1.0, 0.5, 0.0]) == pytest.approx(1 / 8)  # contained
    assert iou(a, [0.0, 0.0, 0.0, 0.0, 2.0, 1.0, 0.0]) == 0.0  # degenerate
    sq = [0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0]
    octagon = 8 * (math.sqrt(2) - 1)
    assert iou(sq, sq[:6] + [math.pi / 4]) == pytest.approx(octagon / (8 - octagon), rel=1e-9)
    batch = stereodistill.box_iou_3d(torch.tensor([a, sq]).view(2, 1, 7), torch.tensor([a, sq]).view(1, 2, 7))
    assert batch.shape == (2, 2) and float(batch[0, 0]) == pytest.approx(1.0)


def test_speed_vs_the_references(capsys):
    """Not a benchmark: prints the old/new times of one typical batch (4 samples x 40 boxes, 128 x 128 cells;
    300 IoU pairs)."""
    gen = torch.Generator().manual_seed(6)
    grid = BEVGridConfig()
    gts = [random_gt(40, gen, span=50.0) for _ in range(4)]
    boxes, labels = [g[0] for g in gts], [g[1] for g in gts]
    assigner = CenterPointTargetAssigner(grid, TASKS)
    a, b = random_pairs(300, gen)

    def clock(fn):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    new_a = min(clock(lambda: assigner(boxes, labels)) for _ in range(3))
    old_a = clock(lambda: ref_assign(grid, TASKS, boxes, labels))
    new_i = min(clock(lambda: stereodistill.box_iou_3d(a, b)) for _ in range(3))
    old_i = clock(lambda: [ref_iou3d(x, y) for x, y in zip(a.tolist(), b.tolist())])
    new_r = min(clock(lambda: rasterize_batch(boxes, [lb.clamp(max=9) for lb in labels], grid)) for _ in range(3))
    old_r = clock(lambda: [ref_rasterize_labels(b, lb.clamp(max=9), grid) for b, lb in zip(boxes, labels)])
    with capsys.disabled():
        print(f"\nassigner {old_a:.1f} -> {new_a:.1f} ms; iou3d x300 {old_i:.1f} -> {new_i:.1f} ms; "
              f"rasterise {old_r:.1f} -> {new_r:.1f} ms")
