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
unidistill     ``bev_input`` (1x1 adapted, switch) vs teacher ``encoder`` at 9 keypoints/box; ``bev_feature`` vs
               teacher ``neck`` relations; Gaussian-masked responses incl. the IoU channel (switch) (§3.4)
cmkd           ``bev_input`` (1x1 adapted) vs teacher ``encoder`` dense MSE; soft QFL / teacher-weighted reg (§4.3)
stereodistill  component-gated regression KD, cross-class logit KD, foreground feature imitation (§5, reconstructed)
============== =========================================================================================
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from labeldistill_ros.model.config import BEVGridConfig
from labeldistill_training.config import (CMKDConfig, LabelDistillConfig, StereoDistillConfig, UniDistillConfig)
from labeldistill_training.losses.cmkd import CMKDLoss
from labeldistill_training.losses.detection import heatmap_union
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


class IouAwareBranch(nn.Module):
    """The student's IoU-aware channel for UniDistill (the reference's CenterHeadIouAware ``iou`` branch; the
    runtime head has none): a shared conv3x3-BN-ReLU on the head input, then per task conv3x3-BN-ReLU ->
    conv3x3 -> 1 channel. ``forward((B, C, H, W)) -> [(B, 1, H, W)] * num_tasks``. Training-only: it lives in the
    distiller, the deployed student is unchanged."""

    def __init__(self, in_channels: int, num_tasks: int, share_channels: int = 64, head_channels: int = 64):
        super().__init__()

        def cbr(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.shared = cbr(in_channels, share_channels)
        self.tasks = nn.ModuleList(nn.Sequential(cbr(share_channels, head_channels),
                                                 nn.Conv2d(head_channels, 1, 3, padding=1))
                                   for _ in range(num_tasks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.shared(x)
        return [t(x) for t in self.tasks]


class UniDistillDistiller(nn.Module):
    """UniDistill (methods.md §3). Switches (``UniDistillConfig``): ``adaptor`` (1x1 conv student BEV input ->
    teacher encoder channels; reference: none, channels equal), ``iou_channel`` (the IoU-aware channel in the
    response loss, reference on: needs ``feature_channels`` = the student's head-input channels and
    ``num_tasks``), ``transpose_bug``."""

    needs_teacher = True
    needs_label_encoder = False

    def __init__(self, student_channels: int, teacher_channels: int, grid: BEVGridConfig, cfg: UniDistillConfig,
                 feature_channels: Optional[int] = None, num_tasks: Optional[int] = None,
                 head_channels: int = 64):
        super().__init__()
        if cfg.adaptor:
            self.adaptor = nn.Conv2d(student_channels, teacher_channels, 1)
        elif student_channels != teacher_channels:
            raise ValueError(f"distill.unidistill.adaptor is false, so the student's BEV input channels "
                             f"({student_channels}, model bev_channels) must equal the teacher's encoder channels "
                             f"({teacher_channels}, teacher.encoder_channels) for the feature loss; make them equal "
                             f"or set distill.unidistill.adaptor: true")
        else:
            self.adaptor = nn.Identity()
        self.iou_branch = None
        if cfg.iou_channel:
            if not feature_channels or not num_tasks:
                raise ValueError("distill.unidistill.iou_channel needs the student's head-input channels and "
                                 "number of task groups (build_distiller(..., feature_channels=, num_tasks=))")
            self.iou_branch = IouAwareBranch(feature_channels, num_tasks, head_channels, head_channels)
        self.loss = UniDistillLoss(grid, cfg.feature_weight, cfg.relation_weight, cfg.response_weight,
                                   cfg.teacher_temperature, cfg.transpose_bug, iou_aware_weight=cfg.iou_aware_weight)

    def forward(self, student_out, teacher_out, label_feats, targets, gt_boxes):
        student_iou = self.iou_branch(student_out.bev_feature) if self.iou_branch is not None else None
        return self.loss(self.adaptor(student_out.bev_input), teacher_out["encoder"], student_out.bev_feature,
                         teacher_out["neck"], student_out.head_outputs, teacher_out["head_outputs"], gt_boxes,
                         student_iou=student_iou, targets=targets)


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

    def __init__(self, student_channels: int, teacher_channels: int, grid: BEVGridConfig, cfg: StereoDistillConfig):
        super().__init__()
        self.adaptor = nn.Conv2d(student_channels, teacher_channels, 1)
        self.loss = StereoDistillLoss(grid, cfg.xgd_weight, cfg.cld_weight, cfg.feature_weight, cfg.iou_thresh,
                                      cfg.vel_thresh, cfg.temperature)

    def forward(self, student_out, teacher_out, label_feats, targets, gt_boxes):
        return self.loss(self.adaptor(student_out.bev_input), teacher_out["encoder"], student_out.head_outputs,
                         teacher_out["head_outputs"], targets)


def build_distiller(method: str, student_channels: Sequence[int], teacher_encoder_channels: int,
                    teacher_backbone_channels: Sequence[int], grid: BEVGridConfig, labeldistill: LabelDistillConfig,
                    unidistill: UniDistillConfig, cmkd: CMKDConfig, stereodistill: StereoDistillConfig,
                    feature_channels: Optional[int] = None, num_tasks: Optional[int] = None,
                    head_channels: int = 64) -> nn.Module:
    """The distiller of ``method`` (one of ``none | labeldistill | unidistill | cmkd | stereodistill``).

    ``student_channels``: ``(C_bev_input, C_trunk_first)``; teacher channel counts from its config.
    ``feature_channels`` (the student's head input, ``bev_feature``), ``num_tasks`` (head task groups) and
    ``head_channels`` size UniDistill's IoU-aware branch (``distill.unidistill.iou_channel``).
    """
    if method == "none":
        return NoDistill()
    if method == "labeldistill":
        return LabelDistillDistiller(student_channels, teacher_backbone_channels, labeldistill)
    if method == "unidistill":
        return UniDistillDistiller(student_channels[0], teacher_encoder_channels, grid, unidistill, feature_channels,
                                   num_tasks, head_channels)
    if method == "cmkd":
        return CMKDDistiller(student_channels[0], teacher_encoder_channels, cmkd)
    if method == "stereodistill":
        return StereoDistillDistiller(student_channels[0], teacher_encoder_channels, grid, stereodistill)
    raise ValueError(f"distill.method {method!r} is not one of none, labeldistill, unidistill, cmkd, stereodistill")
