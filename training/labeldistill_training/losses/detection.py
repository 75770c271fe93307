"""CenterPoint detection targets and losses, shared by the LiDAR teacher, the label encoder and the camera student.

All three stages use the *same* target conventions (methods.md §1.1, §2.7), which is what makes response
distillation meaningful:

* BEV grid: the model config's :class:`~labeldistill_ros.model.config.BEVGridConfig` (ego frame, x forward, y
  left; maps ``(ny, nx)``, row = y, column = x). Reference: 128 x 128 cells of 0.8 m from (-51.2, -51.2).
* Boxes ``(N, 9)``: ``x, y, z, l, w, h, yaw, vx, vy`` in ego, z = geometric centre (metres, radians, m/s).
* Regression target per object: the 10-value code of the runtime's
  :class:`~labeldistill_ros.model.box_coder.BoxCoder` (``[dx, dy, z, log l, log w, log h, sin yaw, cos yaw, vx,
  vy]``, the head's branch order ``reg, height, dim, rot, vel``), at the centre cell ``(floor(cx), floor(cy))``.
* Heatmap: per task group, one channel per class; CornerNet ``gaussian_radius`` of the footprint in cells with
  ``min_overlap`` (0.1), radius ``max(min_radius, int(r))`` (min_radius 2), a Gaussian of sigma = diameter / 6
  (values below float32 eps zeroed) drawn at the integer centre cell, element-wise max over objects
  (CenterPoint ``draw_heatmap_gaussian``), all objects at once (:func:`splat_gaussians`).

Losses: Gaussian focal loss (alpha 2, gamma 4) on the clip-sigmoid heatmap normalised by max(1, #peaks) and L1 on
the regression gathered at the object cells, weighted by ``code_weights``, times 0.25, normalised by #objects.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from labeldistill_ros.model.box_coder import BoxCoder
from labeldistill_ros.model.config import BEVGridConfig
from labeldistill_ros.model.head import REG_BRANCHES

REG_KEYS: tuple[str, ...] = tuple(name for name, _ in REG_BRANCHES)
"""Regression branches of a CenterPoint task head, in the order their channels are concatenated (2+1+3+2+2)."""


# ----------------------------------------------------------------------------------------------------------------
# Gaussian heatmaps
# ----------------------------------------------------------------------------------------------------------------
def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.5) -> torch.Tensor:
    """CornerNet radius (the three-case form used by CenterPoint / mmdet3d), in cells, element-wise.

    ``height``, ``width``: the objects' extents in cells (tensors or numbers, broadcast; computed in float64).
    Returns the smallest of the three case radii, float64.
    """
    h = torch.as_tensor(height, dtype=torch.float64)
    w = torch.as_tensor(width, dtype=torch.float64, device=h.device)
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt((b1 ** 2 - 4 * c1).clamp(min=0.0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt((b2 ** 2 - 4 * 4.0 * c2).clamp(min=0.0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt((b3 ** 2 - 4 * a3 * c3).clamp(min=0.0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def splat_gaussians(num_maps: int, H: int, W: int, map_index: torch.Tensor, cells: torch.Tensor,
                    radius: torch.Tensor, keep: torch.Tensor, return_index: bool = False):
    """Draw every object's Gaussian at once, element-wise max over objects (CenterPoint ``draw_heatmap_gaussian``).

    Args:
        num_maps: maps drawn into (e.g. batch x classes). ``H, W``: cells per map (rows = y, columns = x).
        map_index: ``(N,)`` int64, the map of each object. cells: ``(N, 2)`` int64 centre cells ``(col, row)``.
        radius: ``(N,)`` int64 radii in cells (a ``(2r+1)^2`` window, sigma = ``(2r+1) / 6``, values below float32
            eps zeroed, clipped at the map border). keep: ``(N,)`` bool, the objects to draw.
        return_index: also return, per cell, the object whose Gaussian gives the cell its value (the lowest
            object index on ties), -1 where the map is 0.
    Returns:
        ``(num_maps, H, W)`` float32 (and ``(num_maps, H, W)`` int64 with ``return_index``). One host sync (the
        largest radius sizes the window); no Python loop over objects.
    """
    device = cells.device
    heat = torch.zeros(num_maps * H * W + 1, device=device)  # last slot: where dropped window cells go
    index = torch.full((num_maps * H * W + 1,), -1, dtype=torch.long, device=device) if return_index else None
    n = int(map_index.shape[0])
    R = int(torch.where(keep, radius + 1, torch.zeros_like(radius)).max()) - 1 if n else -1  # the one sync
    if R >= 0:  # some object is drawn
        R = min(R, max(H, W) - 1)  # window cells farther than the map's side from a centre are off the map
        off = torch.arange(-R, R + 1, device=device)
        dy, dx = off.view(1, -1, 1), off.view(1, 1, -1)  # window (2R+1, 2R+1) per object
        r = radius.view(-1, 1, 1)
        sigma = (2 * r + 1).double() / 6.0
        denom = (2 * sigma * sigma).float()
        g = torch.exp(-(dx * dx + dy * dy).float() / denom)  # (N, 2R+1, 2R+1)
        g = torch.where(g < torch.finfo(torch.float32).eps, torch.zeros_like(g), g)
        col = cells[:, 0].view(-1, 1, 1) + dx
        row = cells[:, 1].view(-1, 1, 1) + dy
        ok = keep.view(-1, 1, 1) & (dx.abs() <= r) & (dy.abs() <= r) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
        flat = (map_index.view(-1, 1, 1) * H + row) * W + col
        flat = torch.where(ok, flat, torch.full_like(flat, num_maps * H * W)).flatten()
        g = g.flatten()
        heat.scatter_reduce_(0, flat, g, "amax", include_self=True)
        if index is not None:
            obj = torch.arange(n, device=device).view(-1, 1, 1).expand_as(ok).flatten()
            wins = (g > 0) & (g == heat[flat])
            flat = torch.where(wins, flat, torch.full_like(flat, num_maps * H * W))
            index[:-1] = n
            index.scatter_reduce_(0, flat, obj, "amin", include_self=True)
            index = torch.where(index == n, torch.full_like(index, -1), index)
    heat = heat[:-1].view(num_maps, H, W)
    return (heat, index[:-1].view(num_maps, H, W)) if index is not None else heat


# ----------------------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TaskTargets:
    """Targets of one task group for a batch.

    heatmap: (B, n_cls, H, W) in [0, 1]; box: (B, M, 10) regression targets (the box coder's code); ind: (B, M)
    flattened cell index ``row * W + col``; mask: (B, M) bool (valid object slots); gt_index: (B, M) index of the
    box in the sample's GT list (-1 for empty slots).
    """

    heatmap: torch.Tensor
    box: torch.Tensor
    ind: torch.Tensor
    mask: torch.Tensor
    gt_index: torch.Tensor


class CenterPointTargetAssigner:
    """Builds per-task CenterPoint targets from GT boxes (methods.md §1.1 ``get_targets_single``).

    Args:
        grid: the BEV grid of the head output (the model config's ``bev_grid``).
        task_classes: per task group, the *global* class ids it predicts (e.g. ``((0,), (1, 2), ...)``); a class
            belongs to at most one group.
        min_overlap: CornerNet overlap for the Gaussian radius (0.1 in BEVDepth/LabelDistill).
        min_radius: lower bound of the radius in cells (2).
        max_objs: object slots per task and sample (500).

    An object gets a slot when its class is in the task, ``l, w > 0`` and its centre cell is on the map; slots
    are filled in (class order of the task, GT order) and objects past ``max_objs`` are dropped (heatmap
    included), as the reference's loop. Everything runs as batched tensor ops on the boxes' device with one
    host sync (:func:`splat_gaussians`).
    """

    def __init__(self, grid: BEVGridConfig, task_classes: Sequence[Sequence[int]], min_overlap: float = 0.1,
                 min_radius: int = 2, max_objs: int = 500) -> None:
        self.grid = grid
        self.coder = BoxCoder(grid)
        self.task_classes = [tuple(int(c) for c in t) for t in task_classes]
        flat = [c for t in self.task_classes for c in t]
        if len(flat) != len(set(flat)) or any(c < 0 for c in flat):
            raise ValueError(f"task_classes {self.task_classes}: each class id (>= 0) may be in one task only")
        self.min_overlap = min_overlap
        self.min_radius = min_radius
        self.max_objs = max_objs
        # class id -> (task, class within the task); the last entry is for ids of no task
        n = max(flat, default=-1) + 2
        task, local = torch.full((n,), -1, dtype=torch.long), torch.zeros(n, dtype=torch.long)
        for t, classes in enumerate(self.task_classes):
            for i, c in enumerate(classes):
                task[c], local[c] = t, i
        n_cls = torch.tensor([len(t) for t in self.task_classes], dtype=torch.long)
        first = torch.cumsum(n_cls, 0) - n_cls  # first class channel of each task
        self._tables = {"cpu": (task, local, first, n_cls)}

    def _tables_on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The class tables on ``device`` (copied once per device: a copy per call would wait for the GPU)."""
        key = str(device)
        if key not in self._tables:
            self._tables[key] = tuple(t.to(device) for t in self._tables["cpu"])
        return self._tables[key]

    @torch.no_grad()
    def __call__(self, gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor]) -> list[TaskTargets]:
        """gt_boxes: per sample ``(N_b, >=9)`` ego boxes; gt_labels: per sample ``(N_b,)`` global class ids."""
        c = self.coder
        H, W, M = c.ny, c.nx, self.max_objs
        B, T = len(gt_boxes), len(self.task_classes)
        device = gt_boxes[0].device if B else torch.device("cpu")
        n_cls = [len(t) for t in self.task_classes]
        counts = [int(b.shape[0]) for b in gt_boxes]
        task_of, local_of, first, n_task = self._tables_on(device)
        empty = torch.zeros(0, dtype=torch.long, device=device)
        boxes = torch.cat([b[:, :9].float() for b in gt_boxes]) if B else torch.zeros(0, 9)
        labels = torch.cat([lb.long().to(device) for lb in gt_labels]) if B else empty
        sample = torch.cat([torch.full((n,), b, dtype=torch.long, device=device) for b, n in enumerate(counts)]
                           + [empty])
        j = torch.cat([torch.arange(n, device=device) for n in counts] + [empty])

        no_task = task_of.numel() - 1
        cls = torch.where((labels >= 0) & (labels < no_task), labels, torch.full_like(labels, no_task))
        task, local = task_of[cls], local_of[cls]
        cells, code = c.encode(boxes)
        valid = (task >= 0) & (boxes[:, 3] > 0) & (boxes[:, 4] > 0) & c.inside(cells)

        # slot = rank among the valid objects of the same (task, sample), ordered by (class in task, GT index)
        n_max = max(counts, default=0) + 1
        group = torch.where(valid, task * B + sample, torch.full_like(task, T * B))
        key = (group * (max(n_cls, default=0) + 1) + local) * n_max + j
        order = torch.argsort(key)
        g_sorted = group[order]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=device) - torch.searchsorted(g_sorted, g_sorted)
        keep = valid & (rank < M)

        # regression slots: (T, B, M) in one buffer (+1 slot for the dropped objects)
        drop = T * B * M
        slot = torch.where(keep, group * M + rank, torch.full_like(rank, drop))
        box = torch.zeros(drop + 1, 10, device=device)
        ind = torch.zeros(drop + 1, dtype=torch.long, device=device)
        mask = torch.zeros(drop + 1, dtype=torch.bool, device=device)
        gidx = torch.full((drop + 1,), -1, dtype=torch.long, device=device)
        box[slot], ind[slot], mask[slot], gidx[slot] = code, c.flat_index(cells), keep, j

        # heatmaps: task t's (B, n_t, H, W) block after the blocks of the tasks before it
        t_ = task.clamp(min=0)
        map_index = B * first[t_] + sample * n_task[t_] + local if T else task
        l_cells = boxes[:, 3].double() / c.cell_x
        w_cells = boxes[:, 4].double() / c.cell_y
        r = gaussian_radius(w_cells, l_cells, self.min_overlap)
        radius = torch.where(keep, r.nan_to_num(0.0).trunc().long().clamp(min=self.min_radius),
                             torch.zeros_like(rank))
        heat = splat_gaussians(B * sum(n_cls), H, W, map_index, cells, radius, keep)

        out: list[TaskTargets] = []
        for t in range(T):
            sl = slice(t * B * M, (t + 1) * B * M)
            hm = heat[B * sum(n_cls[:t]):B * sum(n_cls[:t + 1])].view(B, n_cls[t], H, W)
            out.append(TaskTargets(hm, box[sl].view(B, M, 10), ind[sl].view(B, M), mask[sl].view(B, M),
                                   gidx[sl].view(B, M)))
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
