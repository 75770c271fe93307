"""LabelDistill stage-3 distillation losses (methods.md §2.6).

Notation: ``M0 = sum_c H_gt[c]`` (the GT Gaussian heatmaps of all tasks summed, (B, H, W), may exceed 1);
``M1 = bilinear_resize(M0, (H/2, W/2), align_corners=True)``; binary ``B_k = 1[M_k > 0]``.

* LiDAR feature loss: ``sum_k sum_{b,i,j} M_k * sum_c (S_k - T_k)^2 / max(1, sum M_k)`` with T = teacher SECOND
  outputs, S = LiDAR-adaptor outputs (soft mask); weight 0.3.
* Label feature loss: the same with T = label-encoder outputs, S = label-adaptor outputs, binary mask; weight 0.3.
* Response loss per task: ``GaussianFocal(clip_sigmoid(z_s), clip_sigmoid(z_t) * H_gt) / max(1, #(H_gt == 1))
  + 0.25 * sum_o sum_j cw_j |r_s - r_t| / max(#objects, 1e-4)`` at the GT centre cells, elements whose GT code
  value is NaN masked out (the reference's ``mask *= isnotnan(target_box)``); weight 1.
  The focal positive term fires only where the target is exactly 1, which ``p_t * H_gt`` never is: this is
  the reference's literal behaviour (``response_hm_mode="literal"``). ``"teacher_pos"`` (a deviation) instead
  uses GT peaks as positives: target = ``H_gt`` where ``H_gt == 1`` else ``p_t * H_gt``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from labeldistill_training.losses.detection import (TaskTargets, clip_sigmoid, concat_regression, gather_feat,
                                                    gaussian_focal_loss, heatmap_union)


def gt_feature_masks(targets: Sequence[TaskTargets], num_levels: int = 2) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Soft masks ``M_k`` and binary masks ``B_k`` (each ``(B, H / 2^k, W / 2^k)``) from the GT heatmaps."""
    m0 = heatmap_union(targets)
    H, W = m0.shape[-2:]
    soft = [m0]
    for k in range(1, num_levels):
        size = ((H + 2 ** k - 1) // 2 ** k, (W + 2 ** k - 1) // 2 ** k)
        soft.append(F.interpolate(m0[:, None], size=size, mode="bilinear", align_corners=True)[:, 0])
    binary = [(m > 0).float() for m in soft]
    return soft, binary


def masked_feature_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                        masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_k [sum_{b,i,j} W_k * sum_c (S_k - T_k)^2] / max(1, sum W_k)`` (channel *sum*, not mean).

    student/teacher: lists of ``(B, C_k, H_k, W_k)``; masks: lists of ``(B, H_k, W_k)``.
    """
    total = 0.0
    for s, t, w in zip(student, teacher, masks):
        if s.shape != t.shape:
            raise ValueError(f"feature shapes differ: student {tuple(s.shape)} vs teacher {tuple(t.shape)}")
        per_cell = (s.float() - t.float()).pow(2).sum(dim=1)
        total = total + (per_cell * w).sum() / w.sum().clamp(min=1.0)
    return total


def response_loss(student_heads: Sequence[dict], teacher_heads: Sequence[dict], targets: Sequence[TaskTargets],
                  code_weights: Sequence[float] = (1.0,) * 10, reg_weight: float = 0.25,
                  hm_mode: str = "literal") -> torch.Tensor:
    """LiDAR response distillation (see the module docstring), summed over task groups."""
    if hm_mode not in ("literal", "teacher_pos"):
        raise ValueError(f"response_hm_mode must be 'literal' or 'teacher_pos', got {hm_mode!r}")
    total = 0.0
    for s, t, tgt in zip(student_heads, teacher_heads, targets):
        p_s = clip_sigmoid(s["heatmap"])
        p_t = clip_sigmoid(t["heatmap"]).detach()
        target = p_t * tgt.heatmap
        if hm_mode == "teacher_pos":
            target = torch.where(tgt.heatmap.eq(1), tgt.heatmap, target)
        n_pos = tgt.heatmap.eq(1).float().sum().clamp(min=1)
        total = total + gaussian_focal_loss(p_s, target) / n_pos
        r_s = gather_feat(concat_regression(s).float(), tgt.ind)
        r_t = gather_feat(concat_regression(t).float(), tgt.ind).detach()
        # the reference's ``mask *= isnotnan(GT)``: a GT code element that is NaN (e.g. an unknown velocity) drops
        # that element of the KD term too; the normaliser stays the object count
        m = tgt.mask.unsqueeze(-1) & ~torch.isnan(tgt.box)
        cw = torch.as_tensor(code_weights, dtype=r_s.dtype, device=r_s.device)
        diff = torch.where(m, torch.abs(r_s - r_t), torch.zeros_like(r_s))
        total = total + reg_weight * (diff * cw).sum() / tgt.mask.float().sum().clamp(min=1e-4)
    return total


class LabelDistillLoss:
    """Stage-3 LabelDistill losses with the reference weights (0.3, 0.3, 1).

    ``__call__(lidar_adapted, teacher_feats, label_adapted, label_feats, student_heads, teacher_heads, targets)``
    -> ``(total, parts)``; feature lists are per level (k = 0 at the BEV grid, k = 1 at half resolution).
    """

    def __init__(self, lidar_feat_weight: float = 0.3, label_feat_weight: float = 0.3, response_weight: float = 1.0,
                 response_code_weights: Sequence[float] = (1.0,) * 10, response_hm_mode: str = "literal") -> None:
        self.w_lidar, self.w_label, self.w_resp = lidar_feat_weight, label_feat_weight, response_weight
        self.code_weights = tuple(response_code_weights)
        self.hm_mode = response_hm_mode

    def __call__(self, lidar_adapted, teacher_feats, label_adapted, label_feats, student_heads, teacher_heads,
                 targets) -> tuple[torch.Tensor, dict]:
        soft, binary = gt_feature_masks(targets, num_levels=len(teacher_feats))
        parts = {}
        parts["lidar_feat"] = self.w_lidar * masked_feature_loss(lidar_adapted, teacher_feats, soft)
        parts["label_feat"] = self.w_label * masked_feature_loss(label_adapted, label_feats, binary)
        parts["response"] = self.w_resp * response_loss(student_heads, teacher_heads, targets, self.code_weights,
                                                        hm_mode=self.hm_mode)
        return sum(parts.values()), parts
