"""CenterPoint decoding and per-class circle NMS.

Boxes are decoded from the head's 10-value code by the one :class:`~labeldistill_ros.model.box_coder.BoxCoder`
(its docstring holds the encoding, frames, units and the size clamp); boxes are ``(x, y, z, l, w, h, yaw, vx,
vy)`` in the (BEV-augmented) ego frame of the input calibration.

Decoding runs in two halves. On the model's device, one top-k over every task's heatmap and a gather of the
regression code at the peaks (:func:`gather_candidates`: a few dozen tensor ops, static shapes, nothing waits for
the device). On the host, after one transfer of the ``tasks x k`` candidates: the finiteness check, the score
threshold, the post-centre range, greedy per-class circle NMS stopping at ``max_detections`` and the final order
(:func:`select_detections`, numpy). Non-finite values are only looked at on the candidates: a candidate whose peak
logit or code is NaN/inf is dropped and counted, never decoded into a box.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .box_coder import BoxCoder
from .config import BEVGridConfig, DecodeConfig
from .head import REG_BRANCHES


@dataclass
class Detections:
    """Decoded boxes of one sample: ``boxes (N, 9)`` ego, ``scores (N,)`` in [0, 1], ``labels (N,)`` int64
    indices into the model's class names; sorted by descending score."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def gather_candidates(
    head_outputs: Sequence[dict[str, torch.Tensor]],
    task_groups: Sequence[Sequence[str]],
    class_names: Sequence[str],
    grid: BEVGridConfig,
    k: int,
) -> torch.Tensor:
    """Top-k (class, cell) peaks of every task at once, decoded, on the heads' device (static shapes, no host
    synchronisation).

    ``head_outputs``: one dict per task (``heatmap (B, n_cls, H, W)`` logits and the regression branches).
    Returns ``(B, M, 12)`` float32 with ``M = tasks x k'`` (``k' = min(k, n_max * H * W)``, ``n_max`` the largest
    class count of a task; each task's own top-k, padded where a task has fewer cells than ``k'``) and columns
    :data:`CANDIDATE_COLUMNS`: the box ``(9)``, the score (sigmoid of the peak), the label (index into
    ``class_names``; -1 for padding) and ``finite``
    (1 when the peak's logit and its 10 code values are all finite). Non-finite candidates are returned (flagged),
    not filtered: counting and dropping them is the host's job (:func:`select_detections`).
    """
    heats = [t["heatmap"] for t in head_outputs]
    B, _, H, W = heats[0].shape
    n_max = max(h.shape[1] for h in heats)
    k = min(k, n_max * H * W)
    table = _label_table(tuple(map(tuple, task_groups)), tuple(class_names), n_max, heats[0].device)
    logits, labels, pixels, codes = [], [], [], []
    for t, task in enumerate(head_outputs):  # top-k of each task in place (no copy of the heatmaps)
        heat = task["heatmap"]
        lg, idx = heat.reshape(B, -1).topk(min(k, heat.shape[1] * H * W), dim=1)
        if lg.shape[1] < k:  # a task with fewer class cells than k: pad (label -1, never selected)
            pad = k - lg.shape[1]
            lg = torch.cat([lg, lg.new_full((B, pad), float("-inf"))], dim=1)
            idx = torch.cat([idx, idx.new_full((B, pad), n_max * H * W)], dim=1)
        pix = idx % (H * W)
        labels.append(table[t][idx // (H * W)])
        # the 10 code channels side by side (a small copy; one gather instead of one per branch: few ops, which
        # matters on a CPU shared with the node's other threads)
        code = torch.cat([task[name] for name, _ in REG_BRANCHES], dim=1).reshape(B, 10, H * W)
        codes.append(code.gather(2, pix.unsqueeze(1).expand(B, 10, k)))
        logits.append(lg.float())
        pixels.append(pix)
    logits, labels, pix = torch.stack(logits, 1), torch.stack(labels, 1), torch.stack(pixels, 1)  # (B, T, k)
    code = torch.stack(codes, dim=1).transpose(2, 3).float()  # (B, T, k, 10)
    finite = torch.isfinite(code).all(dim=-1) & torch.isfinite(logits)
    boxes = BoxCoder(grid).decode(code, pix % W, pix // W)  # (B, T, k, 9)
    out = torch.cat([boxes, torch.sigmoid(logits)[..., None], labels[..., None].float(), finite[..., None].float()],
                    dim=-1)
    return out.reshape(B, -1, len(CANDIDATE_COLUMNS))


_LABEL_TABLES: dict = {}


def _label_table(task_groups: tuple, class_names: tuple, n_max: int, device: torch.device) -> torch.Tensor:
    """``(tasks, n_max + 1)`` global label of each task's class (-1: padding), kept on ``device`` (built once: a
    copy to a GPU per set would wait for the stream)."""
    key = (task_groups, class_names, n_max, str(device))
    table = _LABEL_TABLES.get(key)
    if table is None:
        table = torch.full((len(task_groups), n_max + 1), -1, dtype=torch.long)  # column n_max: padding
        for t, group in enumerate(task_groups):
            table[t, : len(group)] = torch.tensor([class_names.index(c) for c in group])
        table = _LABEL_TABLES[key] = table.to(device)
    return table


CANDIDATE_COLUMNS: tuple[str, ...] = ("x", "y", "z", "l", "w", "h", "yaw", "vx", "vy", "score", "label", "finite")


def circle_nms_np(xy: np.ndarray, scores: np.ndarray, labels: np.ndarray, radius: np.ndarray,
                  max_keep: int | None = None, chunk: int = 128) -> np.ndarray:
    """Greedy per-class circle NMS (numpy): going down the scores (stable order), a box is dropped when a kept,
    higher-scored box of the same label lies closer than ``radius[label]`` metres (centre distance in xy; radius
    0 disables). Stops once ``max_keep`` boxes are kept (the greedy result is a prefix, so this is exact).

    ``xy (N, 2)``, ``scores (N,)``, ``labels (N,)`` int, ``radius (n_labels,)`` -> kept indices into the inputs,
    by descending score. Chunks of ``chunk`` boxes: a chunk is first checked against every box kept before it
    (vectorised), then the greedy rule ``keep_i = alive_i and not any(keep_j and near_ij, j before i)`` runs in
    score order over the boxes of the chunk that have a same-label neighbour within the radius.
    """
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    n = order.size
    limit = n if max_keep is None else min(n, int(max_keep))
    if n == 0 or limit <= 0:
        return order[:0]
    xy = np.asarray(xy, dtype=np.float64)[order]
    lab = np.asarray(labels).astype(np.int64)[order]
    r2 = np.asarray(radius, dtype=np.float64)[lab] ** 2
    kept: list[np.ndarray] = []
    kept_xy, kept_lab = np.empty((0, 2)), np.empty(0, dtype=np.int64)
    count = 0
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        cxy, clab, cr2 = xy[start:end], lab[start:end], r2[start:end]
        alive = np.ones(end - start, dtype=bool)
        if kept_lab.size:
            alive = ~((_sq_dist(cxy, kept_xy) < cr2[:, None]) & (clab[:, None] == kept_lab[None, :])).any(axis=1)
        m = end - start
        near = (_sq_dist(cxy, cxy) < cr2[:, None]) & (clab[:, None] == clab[None, :]) & np.tri(m, m, -1, dtype=bool)
        near &= alive[None, :]
        keep = alive.copy()
        for i in np.flatnonzero(alive & near.any(axis=1)):  # in score order: keep[j < i] is final
            if (near[i] & keep).any():
                keep[i] = False
        idx = np.flatnonzero(keep)
        if idx.size:
            kept.append(idx + start)
            kept_xy = np.concatenate([kept_xy, cxy[idx]])
            kept_lab = np.concatenate([kept_lab, clab[idx]])
            count += idx.size
        if count >= limit:
            break
    sel = np.concatenate(kept) if kept else np.empty(0, dtype=np.int64)
    return order[sel[:limit]]


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared xy distances ``(len(a), len(b))`` (float64)."""
    dx = a[:, 0, None] - b[None, :, 0]
    dy = a[:, 1, None] - b[None, :, 1]
    return dx * dx + dy * dy


def circle_nms(xy: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """:func:`circle_nms_np` on tensors (any device): kept indices (int64, on ``xy``'s device)."""
    keep = circle_nms_np(xy.detach().cpu().double().numpy(), scores.detach().cpu().double().numpy(),
                         labels.detach().cpu().numpy(), radius.detach().cpu().double().numpy())
    return torch.as_tensor(keep, dtype=torch.long, device=xy.device)


@dataclass
class HostDetections:
    """Decoded boxes of one sample on the host (numpy): ``boxes (N, 9)`` float32, ``scores (N,)`` float32,
    ``labels (N,)`` int64, by descending score; ``nonfinite``: candidates dropped for NaN/inf values."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    nonfinite: int = 0


def select_detections(candidates: np.ndarray, cfg: DecodeConfig) -> HostDetections:
    """Host side of decoding for one sample: ``candidates (M, 12)`` (:func:`gather_candidates`, moved to the host)
    -> finite candidates above ``cfg.score_threshold`` inside ``cfg.post_center_range``, per-class circle NMS,
    the ``cfg.max_detections`` best."""
    c = np.asarray(candidates)
    real = c[:, 10] >= 0
    finite = c[:, 11] > 0.5
    nonfinite = int((real & ~finite).sum())
    lo, hi = np.asarray(cfg.post_center_range[:3]), np.asarray(cfg.post_center_range[3:])
    with np.errstate(invalid="ignore"):
        ok = real & finite & (c[:, 9] > cfg.score_threshold)
        ok &= (c[:, :3] >= lo).all(axis=1) & (c[:, :3] <= hi).all(axis=1)
    c = c[ok]
    labels = c[:, 10].astype(np.int64)
    keep = circle_nms_np(c[:, :2], c[:, 9], labels, np.asarray(cfg.nms_radius, dtype=np.float64),
                         max_keep=cfg.max_detections)
    return HostDetections(c[keep, :9].astype(np.float32), c[keep, 9].astype(np.float32), labels[keep], nonfinite)


def decode_detections(
    head_outputs: Sequence[dict[str, torch.Tensor]],
    task_groups: Sequence[Sequence[str]],
    class_names: Sequence[str],
    grid: BEVGridConfig,
    cfg: DecodeConfig,
) -> list[Detections]:
    """Head outputs -> boxes per sample: top-k per task (one batched top-k, :func:`gather_candidates`), then on the
    host (one transfer) the finite candidates above the score threshold inside the post-centre range, per-class
    circle NMS and the ``cfg.max_detections`` best (:func:`select_detections`). Labels index ``class_names``;
    tensors come back on the CPU."""
    cand = gather_candidates(head_outputs, task_groups, class_names, grid, cfg.max_candidates_per_task)
    cand = cand.detach().cpu().numpy()
    out = []
    for b in range(cand.shape[0]):
        d = select_detections(cand[b], cfg)
        out.append(Detections(torch.from_numpy(d.boxes), torch.from_numpy(d.scores), torch.from_numpy(d.labels)))
    return out
