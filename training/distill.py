"""Distillation method selection for the student stage (``distill.method``), explicit and registry-free.

Each distiller is an ``nn.Module`` holding only its *trainable* extras (adaptors); the frozen teacher and label
encoder live in the stage module and their outputs are passed in. Common call::

    loss, parts = distiller(student_out, teacher_out, label_feats, targets, gt_boxes)

* ``student_out``: :class:`labeldistill_ros.model.student.StudentOutput` (``bev_input``, ``trunk_first``,
  ``bev_feature``, ``head_outputs``).
* ``teacher_out``: :class:`~labeldistill_training.models.teacher.LidarTeacher` output dict (``encoder``,
  ``backbone``, ``neck``, ``head_outputs``) computed under ``no_grad`` in eval mode (or ``None``).
* ``label_feats``: label-encoder outputs (list of 2) or ``None``; ``targets``: CenterPoint targets of the GT;
  ``gt_boxes``: per sample ``(N_b, 9)`` valid GT boxes.

Which features each method distils (student -> teacher):

============== =========================================================================================
labeldistill   thirds of ``bev_input`` / ``trunk_first`` -> label & LiDAR adaptors -> label-encoder outputs
               and teacher SECOND outputs; teacher head responses (methods.md §2.5-2.6)
unidistill     ``bev_input`` (1x1 adapted) vs teacher ``encoder`` at 9 keypoints/box; ``bev_feature`` vs teacher
               ``neck`` relations; Gaussian-masked responses (§3.4)
cmkd           ``bev_input`` (1x1 adapted) vs teacher ``encoder`` dense MSE; soft QFL / teacher-weighted reg (§4.3)
stereodistill  component-gated regression KD, cross-class logit KD, foreground feature imitation (§5, reconstructed)
============== =========================================================================================
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from labeldistill_training.config import (CMKDConfig, LabelDistillConfig, StereoDistillConfig, UniDistillConfig)
from labeldistill_training.losses.cmkd import CMKDLoss
from labeldistill_training.losses.detection import BevGrid, heatmap_union
from labeldistill_training.losses.labeldistill import LabelDistillLoss
from labeldistill_training.losses.stereodistill import StereoDistillLoss
from labeldistill_training.losses.unidistill import UniDistillLoss
from labeldistill_training.models.adaptors import MultiLevelAdaptor, partition_slices


class NoDistill(nn.Module):
    """Baseline: GT detection + depth losses only."""

    needs_teacher = False
    needs_label_encoder = False

    def forward(self, student_out, teacher_out, label_feats, targets, gt_boxes):
        return student_out.bev_input.new_zeros(()), {}


class LabelDistillDistiller(nn.Module):
    """LabelDistill partition + adaptors + losses.

    Args:
        student_channels: ``(C_bev_input, C_trunk_first)`` of the student.
        teacher_channels: channels of the teacher SECOND outputs ``(C0, C1)`` (= label-encoder outputs).
        cfg: loss weights and partition shares.
    """

    needs_teacher = True
    needs_label_encoder = True

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], cfg: LabelDistillConfig):
        super().__init__()
        self.slices = [partition_slices(c, cfg.partition) for c in student_channels]
        lab_in = [s[0].stop - s[0].start for s in self.slices]
        lid_in = [s[1].stop - s[1].start for s in self.slices]
        self.label_adaptor = MultiLevelAdaptor(lab_in, teacher_channels)
        self.lidar_adaptor = MultiLevelAdaptor(lid_in, teacher_channels)
        self.loss = LabelDistillLoss(cfg.lidar_feat_weight, cfg.label_feat_weight, cfg.response_weight,
                                     cfg.response_code_weights, cfg.response_hm_mode)

    def split(self, student_out) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(label parts, LiDAR parts)`` of ``[bev_input, trunk_first]``."""
        feats = [student_out.bev_input, student_out.trunk_first]
        return [f[:, s[0]] for f, s in zip(feats, self.slices)], [f[:, s[1]] for f, s in zip(feats, self.slices)]

    def forward(self, student_out, teacher_out, label_feats, targets, gt_boxes):
        lab, lid = self.split(student_out)
        return self.loss(self.lidar_adaptor(lid), teacher_out["backbone"], self.label_adaptor(lab), label_feats,
                         student_out.head_outputs, teacher_out["head_outputs"], targets)


class UniDistillDistiller(nn.Module):
    """UniDistill with a 1x1 conv adaptor for the low-level feature loss (deviation; see the config)."""

    needs_teacher = True
    needs_label_encoder = False

    def __init__(self, student_channels: int, teacher_channels: int, grid: BevGrid, cfg: UniDistillConfig):
        super().__init__()
        self.adaptor = nn.Conv2d(student_channels, teacher_channels, 1)
        self.loss = UniDistillLoss(grid, cfg.feature_weight, cfg.relation_weight, cfg.response_weight,
                                   cfg.teacher_temperature, cfg.transpose_bug)

    def forward(self, student_out, teacher_out, label_feats, targets, gt_boxes):
        return self.loss(self.adaptor(student_out.bev_input), teacher_out["encoder"], student_out.bev_feature,
                         teacher_out["neck"], student_out.head_outputs, teacher_out["head_outputs"], gt_boxes)


class CMKDDistiller(nn.Module):
    """CMKD-MV with a 1x1 conv adaptor from the student BEV input to the teacher's encoder channels."""

    needs_teacher = True
    needs_label_encoder = False

    def __init__(self, student_channels: int, teacher_channels: int, cfg: CMKDConfig):
        super().__init__()
        self.adaptor = nn.Conv2d(student_channels, teacher_channels, 1)
        self.loss = CMKDLoss(cfg.bev_weight, cfg.cls_weight, cfg.reg_weight, cfg.bev_mask, 2.0,
                             cfg.qfl_raw_logit_quirk, cfg.reg_weight_mode)

    def forward(self, student_out, teacher_out, label_feats, targets, gt_boxes):
        gt_mask = heatmap_union(targets) if targets is not None else None
        return self.loss(self.adaptor(student_out.bev_input), teacher_out["encoder"], student_out.head_outputs,
                         teacher_out["head_outputs"], gt_mask)


class StereoDistillDistiller(nn.Module):
    """Reconstructed StereoDistill (XGD + CLD + feature imitation) with a 1x1 conv feature adaptor."""

    needs_teacher = True
    needs_label_encoder = False

    def __init__(self, student_channels: int, teacher_channels: int, grid: BevGrid, cfg: StereoDistillConfig):
        super().__init__()
        self.adaptor = nn.Conv2d(student_channels, teacher_channels, 1)
        self.loss = StereoDistillLoss(grid, cfg.xgd_weight, cfg.cld_weight, cfg.feature_weight, cfg.iou_thresh,
                                      cfg.vel_thresh, cfg.temperature)

    def forward(self, student_out, teacher_out, label_feats, targets, gt_boxes):
        return self.loss(self.adaptor(student_out.bev_input), teacher_out["encoder"], student_out.head_outputs,
                         teacher_out["head_outputs"], targets)


def build_distiller(method: str, student_channels: Sequence[int], teacher_encoder_channels: int,
                    teacher_backbone_channels: Sequence[int], grid: BevGrid, labeldistill: LabelDistillConfig,
                    unidistill: UniDistillConfig, cmkd: CMKDConfig, stereodistill: StereoDistillConfig) -> nn.Module:
    """The distiller of ``method`` (one of ``none | labeldistill | unidistill | cmkd | stereodistill``).

    ``student_channels``: ``(C_bev_input, C_trunk_first)``; teacher channel counts from its config.
    """
    if method == "none":
        return NoDistill()
    if method == "labeldistill":
        return LabelDistillDistiller(student_channels, teacher_backbone_channels, labeldistill)
    if method == "unidistill":
        return UniDistillDistiller(student_channels[0], teacher_encoder_channels, grid, unidistill)
    if method == "cmkd":
        return CMKDDistiller(student_channels[0], teacher_encoder_channels, cmkd)
    if method == "stereodistill":
        return StereoDistillDistiller(student_channels[0], teacher_encoder_channels, grid, stereodistill)
    raise ValueError(f"distill.method {method!r} is not one of none, labeldistill, unidistill, cmkd, stereodistill")
