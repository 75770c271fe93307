"""CMKD (nuScenes multi-view version, methods.md §4.3) on a CenterPoint head.

* BEV feature loss: ``weight * mean(M * (F_s - F_t)^2) / mean(M)`` between the (adapted) student BEV features
  and the teacher's pre-backbone BEV features (dense, ``mask="none"``, weight 50 as in CMKD-MV; KITTI uses 32).
  Options: ``"nonzero"`` (teacher-occupied cells 1, empty 0.05) and ``"gt"`` (binary GT-Gaussian support).
* Soft classification (QFL, beta 2): ``sum BCEwithLogits(z_s, t) * |sigma(z_s) - t|^2 / max(1, #(t >= 0.5))``,
  ``t = sigma(z_t)``, weight 0.2. The reference calls it with ``use_sigmoid=False`` so the modulating factor
  uses raw student logits (``qfl_raw_logit_quirk=True`` reproduces that; default off).
* Soft regression: ``sum_tasks sum_branches weight * mean(SmoothL1_{beta=1}(r_s, r_t) * w)``, weight 50, with
  ``w = sigma(sum_c z_t)`` (the reference: sigmoid of the *sum of teacher logits*, ``reg_weight_mode =
  "sigmoid_sum_logits"``) or ``w = sum_c sigma(z_t)`` (``"sum_probs"``).

Unlabeled-data mode: these losses use the teacher only, so a sample without labels trains from them (and the
depth loss) alone; the trainer drops its GT detection loss (``sample_mask``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from labeldistill_training.losses.detection import REG_KEYS


def bev_feature_loss(fs: torch.Tensor, ft: torch.Tensor, mask: str = "none", gt_mask: torch.Tensor | None = None,
                     empty_weight: float = 0.05) -> torch.Tensor:
    """Masked MSE ``sum M (F_s - F_t)^2 / (C * sum M)``; with ``mask="none"`` the plain mean. ``(B, C, H, W)``."""
    diff = (fs.float() - ft.float()).pow(2)
    if mask == "none":
        return diff.mean()
    if mask == "nonzero":
        occ = (ft.abs().sum(1, keepdim=True) > 0).float()
        M = occ + (1 - occ) * empty_weight
    elif mask == "gt":
        if gt_mask is None:
            raise ValueError("cmkd bev_mask 'gt' needs the GT mask")
        M = (gt_mask > 0).float()[:, None]
    else:
        raise ValueError(f"cmkd.bev_mask must be none|nonzero|gt, got {mask!r}")
    return (diff * M).sum() / (fs.shape[1] * M.sum()).clamp(min=1.0)


def qfl_soft_loss(zs: torch.Tensor, zt: torch.Tensor, beta: float = 2.0, raw_logit_quirk: bool = False,
                  pos_thresh: float = 0.5) -> torch.Tensor:
    """Quality focal loss of student logits against teacher probabilities, normalised by #(t >= pos_thresh)."""
    t = zt.detach().float().sigmoid()
    zs = zs.float()
    mod = zs if raw_logit_quirk else zs.sigmoid()
    loss = F.binary_cross_entropy_with_logits(zs, t, reduction="none") * (mod - t).abs().pow(beta)
    return loss.sum() / (t >= pos_thresh).float().sum().clamp(min=1.0)


def soft_regression_loss(student_head: dict, teacher_head: dict, mode: str = "sigmoid_sum_logits") -> torch.Tensor:
    """Teacher-confidence-weighted SmoothL1 over the regression branches of one task (sum of per-branch means)."""
    zt = teacher_head["heatmap"].detach().float()
    if mode == "sigmoid_sum_logits":
        w = zt.sum(1, keepdim=True).sigmoid()
    elif mode == "sum_probs":
        w = zt.sigmoid().sum(1, keepdim=True)
    else:
        raise ValueError(f"cmkd.reg_weight_mode must be sigmoid_sum_logits|sum_probs, got {mode!r}")
    total = 0.0
    for k in REG_KEYS:
        l1 = F.smooth_l1_loss(student_head[k].float(), teacher_head[k].detach().float(), reduction="none", beta=1.0)
        total = total + (l1 * w).mean()
    return total


class CMKDLoss:
    """CMKD-MV losses with the reference weights (BEV 50, soft cls 0.2, soft reg 50).

    ``__call__(student_bev, teacher_bev, student_heads, teacher_heads, gt_mask=None)`` -> ``(total, parts)``.
    """

    def __init__(self, bev_weight: float = 50.0, cls_weight: float = 0.2, reg_weight: float = 50.0,
                 bev_mask: str = "none", qfl_beta: float = 2.0, qfl_raw_logit_quirk: bool = False,
                 reg_weight_mode: str = "sigmoid_sum_logits") -> None:
        self.w_bev, self.w_cls, self.w_reg = bev_weight, cls_weight, reg_weight
        self.bev_mask = bev_mask
        self.beta, self.quirk = qfl_beta, qfl_raw_logit_quirk
        self.reg_mode = reg_weight_mode

    def __call__(self, student_bev, teacher_bev, student_heads: Sequence[dict], teacher_heads: Sequence[dict],
                 gt_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        parts = {"bev": self.w_bev * bev_feature_loss(student_bev, teacher_bev.detach(), self.bev_mask, gt_mask)}
        cls = 0.0
        reg = 0.0
        for s, t in zip(student_heads, teacher_heads):
            cls = cls + qfl_soft_loss(s["heatmap"], t["heatmap"], self.beta, self.quirk)
            reg = reg + soft_regression_loss(s, t, self.reg_mode)
        parts["soft_cls"] = self.w_cls * cls
        parts["soft_reg"] = self.w_reg * reg
        return sum(parts.values()), parts
