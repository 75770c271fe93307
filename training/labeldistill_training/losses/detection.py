"""CenterPoint detection targets and losses, shared by the LiDAR teacher, the label encoder and the camera student.

All three stages use the *same* target conventions (methods.md §1.1, §2.7), which is what makes response
distillation meaningful:

* BEV grid: ``H x W`` cells of ``cell_size`` metres starting at ``(x_min, y_min)`` in the ego frame (x forward,
  y left); row index = y, column index = x. Reference: 128 x 128 cells of 0.8 m from (-51.2, -51.2).
* Boxes ``(N, 9)``: ``x, y, z, l, w, h, yaw, vx, vy`` in ego, z = geometric centre (metres, radians, m/s).
* Regression target per object (10 values, the head's branch order ``reg, height, dim, rot, vel``)::

      [cx - int(cx), cy - int(cy), z, log l, log w, log h, sin yaw, cos yaw, vx, vy]

  with ``(cx, cy)`` the box centre in (fractional) cells.
* Heatmap: per task group, one channel per class; CornerNet ``gaussian_radius`` of the footprint in cells with
  ``min_overlap`` (0.1), radius ``max(min_radius, int(r))`` (min_radius 2), a Gaussian of sigma = diameter / 6
  drawn at the integer centre cell, element-wise max over objects.

Losses: Gaussian focal loss (alpha 2, gamma 4) on the clip-sigmoid heatmap normalised by max(1, #peaks) and L1 on
the regression gathered at the object cells, weighted by ``code_weights``, times 0.25, normalised by #objects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

REG_KEYS: tuple[str, ...] = ("reg", "height", "dim", "rot", "vel")
"""Regression branches of a CenterPoint task head, in the order their channels are concatenated (2+1+3+2+2)."""


@dataclass(frozen=True)
class BevGrid:
    """A square-cell BEV grid in the ego frame. Cells: row = y index, column = x index."""

    x_min: float = -51.2
    y_min: float = -51.2
    cell: float = 0.8
    H: int = 128
    W: int = 128

    def to_cells(self, xy: torch.Tensor) -> torch.Tensor:
        """Metres ``(..., 2)`` (x, y) -> fractional cell coordinates ``(..., 2)`` (column, row)."""
        origin = xy.new_tensor([self.x_min, self.y_min])
        return (xy - origin) / self.cell


# ----------------------------------------------------------------------------------------------------------------
# Gaussian heatmaps
# ----------------------------------------------------------------------------------------------------------------
def gaussian_radius(height: float, width: float, min_overlap: float = 0.5) -> float:
    """CornerNet radius (the three-case form used by CenterPoint / mmdet3d), in cells.

    ``height``, ``width``: the object's extent in cells. Returns the smallest of the three case radii.
    """
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


def gaussian_2d(radius: int, sigma: float | None = None, device=None) -> torch.Tensor:
    """``(2r+1, 2r+1)`` unnormalised Gaussian (peak 1), sigma = diameter / 6 unless given; tiny values zeroed."""
    d = 2 * radius + 1
    sigma = d / 6.0 if sigma is None else sigma
    r = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma * sigma))
    g[g < torch.finfo(torch.float32).eps * g.max()] = 0
    return g


def draw_heatmap_gaussian(heatmap: torch.Tensor, center: tuple[int, int], radius: int, k: float = 1.0) -> None:
    """In place: ``heatmap (H, W) = max(heatmap, k * gaussian)`` around ``center = (col, row)``."""
    g = gaussian_2d(radius, device=heatmap.device)
    x, y = int(center[0]), int(center[1])
    H, W = heatmap.shape
    left, right = min(x, radius), min(W - x, radius + 1)
    top, bottom = min(y, radius), min(H - y, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return
    hm = heatmap[y - top:y + bottom, x - left:x + right]
    gg = g[radius - top:radius + bottom, radius - left:radius + right]
    torch.maximum(hm, gg * k, out=hm)


# ----------------------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TaskTargets:
    """Targets of one task group for a batch.

    heatmap: (B, n_cls, H, W) in [0, 1]; box: (B, M, 10) regression targets; ind: (B, M) flattened cell index
    ``row * W + col``; mask: (B, M) bool (valid object slots); gt_index: (B, M) index of the box in the sample's
    GT list (-1 for empty slots).
    """

    heatmap: torch.Tensor
    box: torch.Tensor
    ind: torch.Tensor
    mask: torch.Tensor
    gt_index: torch.Tensor


class CenterPointTargetAssigner:
    """Builds per-task CenterPoint targets from GT boxes (methods.md §1.1 ``get_targets_single``).

    Args:
        grid: the BEV grid of the head output.
        task_classes: per task group, the *global* class ids it predicts (e.g. ``((0,), (1, 2), ...)``).
        min_overlap: CornerNet overlap for the Gaussian radius (0.1 in BEVDepth/LabelDistill).
        min_radius: lower bound of the radius in cells (2).
        max_objs: object slots per task and sample (500).
    """

    def __init__(self, grid: BevGrid, task_classes: Sequence[Sequence[int]], min_overlap: float = 0.1,
                 min_radius: int = 2, max_objs: int = 500) -> None:
        self.grid = grid
        self.task_classes = [tuple(int(c) for c in t) for t in task_classes]
        self.min_overlap = min_overlap
        self.min_radius = min_radius
        self.max_objs = max_objs

    @torch.no_grad()
    def __call__(self, gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor]) -> list[TaskTargets]:
        """gt_boxes: per sample ``(N_b, >=9)`` ego boxes; gt_labels: per sample ``(N_b,)`` global class ids."""
        g = self.grid
        B = len(gt_boxes)
        device = gt_boxes[0].device if B else torch.device("cpu")
        out: list[TaskTargets] = []
        for classes in self.task_classes:
            hm = torch.zeros(B, len(classes), g.H, g.W, device=device)
            box = torch.zeros(B, self.max_objs, 10, device=device)
            ind = torch.zeros(B, self.max_objs, dtype=torch.long, device=device)
            mask = torch.zeros(B, self.max_objs, dtype=torch.bool, device=device)
            gidx = torch.full((B, self.max_objs), -1, dtype=torch.long, device=device)
            for b in range(B):
                boxes = gt_boxes[b].float()
                labels = gt_labels[b].long()
                k = 0
                for local, cls in enumerate(classes):
                    for j in torch.nonzero(labels == cls).flatten().tolist():
                        if k >= self.max_objs:
                            break
                        bx = boxes[j]
                        l_cells, w_cells = float(bx[3]) / g.cell, float(bx[4]) / g.cell
                        if l_cells <= 0 or w_cells <= 0:
                            continue
                        radius = max(self.min_radius, int(gaussian_radius(w_cells, l_cells, self.min_overlap)))
                        cx, cy = (float(bx[0]) - g.x_min) / g.cell, (float(bx[1]) - g.y_min) / g.cell
                        ix, iy = int(cx), int(cy)  # truncation as in the reference (centres inside the grid)
                        if not (0 <= cx < g.W and 0 <= cy < g.H):
                            continue
                        draw_heatmap_gaussian(hm[b, local], (ix, iy), radius)
                        ind[b, k] = iy * g.W + ix
                        mask[b, k] = True
                        gidx[b, k] = j
                        box[b, k] = torch.stack([
                            bx.new_tensor(cx - ix), bx.new_tensor(cy - iy), bx[2],
                            torch.log(bx[3].clamp(min=1e-3)), torch.log(bx[4].clamp(min=1e-3)),
                            torch.log(bx[5].clamp(min=1e-3)),
                            torch.sin(bx[6]), torch.cos(bx[6]), bx[7], bx[8]])
                        k += 1
            out.append(TaskTargets(hm, box, ind, mask, gidx))
        return out


# ----------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------
def clip_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Sigmoid clamped to ``[eps, 1 - eps]`` (computed in fp32)."""
    return torch.clamp(x.float().sigmoid(), min=eps, max=1 - eps)


def gaussian_focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, gamma: float = 4.0,
                        weight: torch.Tensor | None = None) -> torch.Tensor:
    """Summed CenterNet focal loss (not normalised). ``pred`` probabilities, ``target`` Gaussian heatmap.

    Positive term only where ``target == 1`` exactly; negatives weighted by ``(1 - target)^gamma``.
    ``weight`` (broadcastable to pred) multiplies the element-wise loss (used to drop unlabeled samples).
    """
    eps = 1e-12
    pos_w = target.eq(1).float()
    neg_w = (1 - target).pow(gamma)
    pos = -(pred + eps).log() * (1 - pred).pow(alpha) * pos_w
    neg = -(1 - pred + eps).log() * pred.pow(alpha) * neg_w
    loss = pos + neg
    if weight is not None:
        loss = loss * weight
    return loss.sum()


def gather_feat(feat: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """``feat (B, C, H, W)``, ``ind (B, M)`` flattened cell indices -> ``(B, M, C)``."""
    B, C = feat.shape[:2]
    flat = feat.reshape(B, C, -1)
    return flat.gather(2, ind.unsqueeze(1).expand(B, C, ind.shape[1])).transpose(1, 2)


def concat_regression(task_out: dict) -> torch.Tensor:
    """Concatenate a task head's regression branches ``reg, height, dim, rot, vel`` -> ``(B, 10, H, W)``."""
    return torch.cat([task_out[k] for k in REG_KEYS], dim=1)


class CenterPointLoss:
    """GT detection loss of a CenterPoint head (GaussianFocal + 0.25 * weighted L1), summed over task groups.

    Args:
        code_weights: 10 weights for ``[dx, dy, z, log l, log w, log h, sin, cos, vx, vy]``.
        reg_weight: L1 loss weight (0.25). hm_weight: focal loss weight (1.0).
    ``__call__(head_outputs, targets, sample_mask=None)``: ``head_outputs`` per task a dict with ``heatmap``
    (logits, (B, n_cls, H, W)) and the regression branches; ``sample_mask (B,)`` bool excludes samples without
    labels (CMKD unlabeled mode). Returns ``(total, {"hm": ..., "reg": ...})``.
    """

    def __init__(self, code_weights: Sequence[float] = (1.0,) * 10, reg_weight: float = 0.25,
                 hm_weight: float = 1.0) -> None:
        if len(code_weights) != 10:
            raise ValueError(f"code_weights needs 10 values, got {len(code_weights)}")
        self.code_weights = torch.tensor([float(c) for c in code_weights])
        self.reg_weight = reg_weight
        self.hm_weight = hm_weight

    def __call__(self, head_outputs: Sequence[dict], targets: Sequence[TaskTargets],
                 sample_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        hm_total = 0.0
        reg_total = 0.0
        for out, tgt in zip(head_outputs, targets):
            pred = clip_sigmoid(out["heatmap"])
            w = None
            mask = tgt.mask
            hm_t = tgt.heatmap
            if sample_mask is not None:
                sm = sample_mask.to(pred.device).float()
                w = sm.view(-1, 1, 1, 1)
                mask = mask & sample_mask.to(mask.device).view(-1, 1)
                num_pos = (hm_t.eq(1).float() * w).sum()
            else:
                num_pos = hm_t.eq(1).float().sum()
            hm_total = hm_total + gaussian_focal_loss(pred, hm_t, weight=w) / num_pos.clamp(min=1)
            reg = gather_feat(concat_regression(out).float(), tgt.ind)
            target = tgt.box
            m = mask.unsqueeze(-1).float() * (~torch.isnan(target)).float()
            target = torch.nan_to_num(target)
            cw = self.code_weights.to(reg.device)
            num = mask.float().sum()
            reg_total = reg_total + (torch.abs(reg - target) * m * cw).sum() / (num + 1e-4)
        hm_total = self.hm_weight * hm_total
        reg_total = self.reg_weight * reg_total
        return hm_total + reg_total, {"hm": hm_total, "reg": reg_total}


def heatmap_union(targets: Sequence[TaskTargets]) -> torch.Tensor:
    """``M0 = sum over all classes of the GT Gaussian heatmaps`` -> ``(B, H, W)`` (methods.md §2.6; may exceed 1)."""
    return torch.cat([t.heatmap for t in targets], dim=1).sum(dim=1)
