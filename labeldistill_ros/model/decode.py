"""Box coding on the BEV grid, CenterPoint decoding and per-class circle NMS (plain torch).

Box code (10 values per object, the regression target of the head at the object's centre cell)::

    [dx, dy, z, log l, log w, log h, sin yaw, cos yaw, vx, vy]

with the centre cell ``(ix, iy) = floor((x - x_min) / cell_x), floor((y - y_min) / cell_y)`` and
``(dx, dy)`` the centre's offset inside that cell in cells, in [0, 1). Decoding inverts it:
``x = (ix + dx) * cell_x + x_min`` (BEVDepth/CenterPoint ``CenterPointBBoxCoder``).
Boxes are ``(x, y, z, l, w, h, yaw, vx, vy)`` in the (BEV-augmented) ego frame of the input calibration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .config import BEVGridConfig, DecodeConfig
from .head import REG_BRANCHES


@dataclass
class Detections:
    """Decoded boxes of one sample: ``boxes (N, 9)`` ego, ``scores (N,)`` in [0, 1], ``labels (N,)`` int64
    indices into the model's class names; sorted by descending score."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def encode_boxes(boxes: torch.Tensor, grid: BEVGridConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``boxes (N, 9)`` -> (centre cells ``(N, 2)`` int64 as (ix, iy), codes ``(N, 10)``). Cells may fall
    outside the grid; callers drop those."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    cx = (boxes[:, 0] - grid.x[0]) / grid.x[2]
    cy = (boxes[:, 1] - grid.y[0]) / grid.y[2]
    ix, iy = torch.floor(cx), torch.floor(cy)
    code = torch.stack(
        [cx - ix, cy - iy, boxes[:, 2], *torch.log(boxes[:, 3:6]).unbind(1),
         torch.sin(boxes[:, 6]), torch.cos(boxes[:, 6]), boxes[:, 7], boxes[:, 8]],
        dim=1,
    )
    return torch.stack([ix, iy], dim=1).long(), code


def decode_code(code: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor, grid: BEVGridConfig) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: ``code (..., 10)``, cells ``(...)`` -> boxes ``(..., 9)``."""
    code = code.float()
    x = (ix.float() + code[..., 0]) * grid.x[2] + grid.x[0]
    y = (iy.float() + code[..., 1]) * grid.y[2] + grid.y[0]
    dims = torch.exp(code[..., 3:6])
    yaw = torch.atan2(code[..., 6], code[..., 7])
    return torch.cat([x[..., None], y[..., None], code[..., 2:3], dims, yaw[..., None], code[..., 8:10]], dim=-1)


def task_candidates(
    task_out: dict[str, torch.Tensor], grid: BEVGridConfig, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k (class, cell) peaks of one task's sigmoid heatmap (static shapes).

    ``task_out``: one task's head outputs (``heatmap (B, n_cls, H, W)`` logits and the regression branches).
    Returns ``boxes (B, k', 9)``, ``scores (B, k')``, ``labels (B, k')`` (class index within the task), with
    ``k' = min(k, n_cls * H * W)``.
    """
    heat = torch.sigmoid(task_out["heatmap"].float())
    B, n_cls, H, W = heat.shape
    scores, idx = heat.reshape(B, -1).topk(min(k, n_cls * H * W), dim=1)
    labels = idx // (H * W)
    pix = idx % (H * W)
    code = torch.cat([task_out[name].float() for name, _ in REG_BRANCHES], dim=1).reshape(B, 10, H * W)
    code = torch.gather(code, 2, pix.unsqueeze(1).expand(B, 10, pix.shape[1])).transpose(1, 2)  # (B, k', 10)
    return decode_code(code, pix % W, pix // W, grid), scores, labels


def circle_nms(xy: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Greedy per-class circle NMS: going down the scores, a box is dropped when a kept, higher-scored box of the
    same label lies closer than ``radius[label]`` metres (centre distance in xy; radius 0 disables).

    ``xy (N, 2)``, ``scores (N,)``, ``labels (N,)`` int64, ``radius (n_labels,)`` -> kept indices into the
    inputs, by descending score. Vectorised: the greedy rule ``keep_i = not any(keep_j and near_ij, j before
    i)`` is iterated to its (unique) fixed point instead of looping over boxes.
    """
    order = torch.argsort(scores, descending=True)
    xy, lab = xy[order].float(), labels[order]
    n = xy.shape[0]
    r = radius.to(xy)[lab]
    near = (torch.cdist(xy, xy) < r[:, None]) & (lab[:, None] == lab[None, :])
    near &= torch.ones(n, n, dtype=torch.bool, device=xy.device).tril(-1)  # only earlier (higher) boxes suppress
    keep = torch.ones(n, dtype=torch.bool, device=xy.device)
    for _ in range(n):
        new = ~(near & keep[None, :]).any(dim=1)
        if torch.equal(new, keep):
            break
        keep = new
    return order[keep]


def decode_detections(
    head_outputs: Sequence[dict[str, torch.Tensor]],
    task_groups: Sequence[Sequence[str]],
    class_names: Sequence[str],
    grid: BEVGridConfig,
    cfg: DecodeConfig,
) -> list[Detections]:
    """Head outputs -> boxes per sample: per task top-k, score threshold, post-centre range, per-class circle
    NMS, then the ``cfg.max_detections`` best. Labels index ``class_names``."""
    radius = torch.tensor(cfg.nms_radius, dtype=torch.float32)
    lo = torch.tensor(cfg.post_center_range[:3])
    hi = torch.tensor(cfg.post_center_range[3:])
    per_task = []
    for task_out, group in zip(head_outputs, task_groups):
        boxes, scores, labels = task_candidates(task_out, grid, cfg.max_candidates_per_task)
        to_global = torch.tensor([class_names.index(c) for c in group], device=labels.device)
        per_task.append((boxes, scores, to_global[labels]))
    results = []
    for b in range(per_task[0][0].shape[0]):
        kept_boxes, kept_scores, kept_labels = [], [], []
        for boxes, scores, labels in per_task:
            bx, sc, lb = boxes[b], scores[b], labels[b]
            centre = bx[:, :3]
            mask = (sc > cfg.score_threshold) & (centre >= lo.to(centre)).all(1) & (centre <= hi.to(centre)).all(1)
            bx, sc, lb = bx[mask], sc[mask], lb[mask]
            keep = circle_nms(bx[:, :2], sc, lb, radius.to(bx.device))
            kept_boxes.append(bx[keep])
            kept_scores.append(sc[keep])
            kept_labels.append(lb[keep])
        boxes, scores, labels = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
        order = torch.argsort(scores, descending=True)[: cfg.max_detections]
        results.append(Detections(boxes[order], scores[order], labels[order]))
    return results
