"""Builders: config -> networks (teacher, label encoder, student, distiller) and the stage module to train."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch.nn as nn

from labeldistill_ros.model.checkpoint import read_payload
from labeldistill_training.config import TrainConfig, resolve_path
from labeldistill_training.distill import build_distiller
from labeldistill_training.losses.depth import DepthLoss
from labeldistill_training.losses.detection import CenterPointLoss, CenterPointTargetAssigner
from labeldistill_training.models.label_encoder import LabelEncoder
from labeldistill_training.models.teacher import BevDownsampler, LidarTeacher, PillarEncoder, SECONDBackbone, SECONDFPN
from labeldistill_training.stages import Frozen, LabelEncoderStage, StudentStage, TeacherStage


def task_class_ids(model_cfg) -> list[tuple[int, ...]]:
    """Global class ids of each head task group (indices into ``model_cfg.class_names``)."""
    return [tuple(model_cfg.class_names.index(c) for c in g) for g in model_cfg.head.task_groups]


def build_teacher(cfg: TrainConfig, model_cfg) -> LidarTeacher:
    """LiDAR teacher on the student's grid with the student's :class:`CenterHead` class."""
    from labeldistill_ros.model.head import CenterHead

    t = cfg.teacher
    grid = model_cfg.bev_grid
    if abs(t.pillar_size[0] - t.pillar_size[1]) > 1e-9:
        raise ValueError("teacher.pillar_size must be square")
    stride = grid.cell / t.pillar_size[0]
    if abs(stride - round(stride)) > 1e-6:
        raise ValueError(f"teacher.pillar_size {t.pillar_size[0]} must divide the BEV cell {grid.cell}")
    pr = list(t.point_range)
    pr[0], pr[1], pr[3], pr[4] = grid.x_min, grid.y_min, grid.x_min + grid.nx * grid.cell, grid.y_min + grid.ny * grid.cell
    enc = PillarEncoder(pr, t.pillar_size, t.point_features, t.pillar_channels, t.encoder, t.z_bins)
    down = BevDownsampler(t.pillar_channels, t.encoder_channels, int(round(stride)), t.downsample_channels)
    backbone = SECONDBackbone(t.encoder_channels, t.backbone_channels, t.backbone_layers, (1, 2))
    neck = SECONDFPN(t.backbone_channels, t.neck_channels, (1, 2))
    head = CenterHead(neck.out_channels, t.head_share_channels, t.head_conv_channels, model_cfg.head.task_groups,
                      model_cfg.head.heatmap_init_bias)
    return LidarTeacher(enc, down, backbone, neck, head)


def build_label_encoder(cfg: TrainConfig, model_cfg) -> LabelEncoder:
    grid = model_cfg.bev_grid
    return LabelEncoder(cfg.teacher.backbone_channels, (1, 2), (grid.ny, grid.nx), cfg.label_encoder.hidden, 9,
                        len(model_cfg.class_names))


def build_student(model_cfg):
    from labeldistill_ros.model.student import StudentDetector

    return StudentDetector.from_config(model_cfg)


def distiller_for(cfg: TrainConfig, model_cfg, student: nn.Module) -> nn.Module:
    """The distiller of ``cfg.distill.method`` sized for ``student`` (a built :class:`StudentDetector`)."""
    d = cfg.distill
    return build_distiller(d.method, (model_cfg.bev_channels, model_cfg.bev_trunk.base_channels),
                           cfg.teacher.encoder_channels, cfg.teacher.backbone_channels, model_cfg.bev_grid,
                           d.labeldistill, d.unidistill, d.cmkd, d.stereodistill,
                           feature_channels=student.bev_encoder.out_channels,
                           num_tasks=len(model_cfg.head.task_groups), head_channels=model_cfg.head.head_conv_channels)


SCRATCH_R50_WARNING = (
    "training a ResNet-50 student from random initialisation: the reference (LabelDistill / BEVDepth) starts the "
    "image backbone from torchvision's ImageNet weights. Get torchvision's ResNet50_Weights.IMAGENET1K_V1 file "
    "(resnet50-0676ba61.pth, https://download.pytorch.org/models/resnet50-0676ba61.pth; IMAGENET1K_V2 is "
    "resnet50-11ad3fa6.pth) on a machine with internet access, e.g. `python -c \"import torchvision; "
    "torchvision.models.resnet50(weights='IMAGENET1K_V1')\"` (lands in ~/.cache/torch/hub/checkpoints/), copy "
    "it here and set student.pretrained_backbone: /path/resnet50-0676ba61.pth")


def load_pretrained_backbone(student: nn.Module, cfg: TrainConfig, log: Callable[[str], None] = print) -> bool:
    """ImageNet initialisation of the student's image backbone from ``student.pretrained_backbone`` (a torchvision
    ResNet state_dict file). Returns whether weights were loaded. Without a file, a depth-50 student that also has
    no ``stages.student.init_checkpoint`` triggers one warning (``warnings`` + ``log``): the reference starts from
    ImageNet weights. The LiDAR teacher and the label encoder have no image backbone: only the student is touched."""
    path = cfg.student.pretrained_backbone
    if path:
        resolved = Path(resolve_path(cfg, path))
        student.backbone.load_torchvision_state_dict(resolved, source=f"student.pretrained_backbone {resolved}")
        log(f"[student] image backbone initialised from {resolved} (torchvision ResNet-{student.backbone.depth})")
        return True
    if student.backbone.depth == 50 and not cfg.stages.student.init_checkpoint:
        warnings.warn(SCRATCH_R50_WARNING, UserWarning, stacklevel=2)
        log(f"[student] WARNING: {SCRATCH_R50_WARNING}")
    return False


def frozen_input_path(cfg: TrainConfig, stage: str, which: str) -> Path:
    """Weights file of a frozen input (``which``: ``teacher`` | ``label_encoder``) of ``stage``:
    ``stages.<stage>.<which>_checkpoint`` when set, else ``<trainer.work_dir>/<which>/final.pt``."""
    explicit = getattr(cfg.stage(stage), f"{which}_checkpoint")
    if explicit:
        return Path(resolve_path(cfg, explicit))
    return Path(resolve_path(cfg, cfg.trainer.work_dir)) / which / "final.pt"


def load_frozen(cfg: TrainConfig, stage: str, which: str, module: nn.Module) -> Frozen:
    """``module`` with the weights of :func:`frozen_input_path`, wrapped in :class:`Frozen`."""
    module.load_state_dict(read_payload(frozen_input_path(cfg, stage, which), which)["state_dict"])
    return Frozen(module, cfg.trainer.frozen_bn)


def build_stage(cfg: TrainConfig, model_cfg, stage: str, log: Callable[[str], None] = print) -> nn.Module:
    """The stage module of ``stage`` with its frozen inputs loaded (student: ImageNet backbone when configured)."""
    grid = model_cfg.bev_grid
    assigner = CenterPointTargetAssigner(grid, task_class_ids(model_cfg))
    ncls = len(model_cfg.class_names)
    if stage == "teacher":
        return TeacherStage(build_teacher(cfg, model_cfg), assigner, CenterPointLoss(cfg.teacher.code_weights))
    if stage == "label_encoder":
        teacher = load_frozen(cfg, stage, "teacher", build_teacher(cfg, model_cfg))
        return LabelEncoderStage(build_label_encoder(cfg, model_cfg), teacher, assigner,
                                 CenterPointLoss(cfg.label_encoder.code_weights), grid, ncls,
                                 cfg.label_encoder.footprint_scale)
    student = build_student(model_cfg)
    load_pretrained_backbone(student, cfg, log)  # before init_checkpoint / resume, which win
    d = cfg.distill
    distiller = distiller_for(cfg, model_cfg, student)
    teacher = load_frozen(cfg, stage, "teacher", build_teacher(cfg, model_cfg)) if distiller.needs_teacher else None
    label_encoder = load_frozen(cfg, stage, "label_encoder", build_label_encoder(cfg, model_cfg)) \
        if distiller.needs_label_encoder else None
    dn = model_cfg.depth_net
    depth = DepthLoss(dn.depth_bound[0], dn.depth_bound[2], dn.num_bins, model_cfg.feature_stride,
                      cfg.student.depth_loss_weight) if cfg.student.depth_loss_weight > 0 else None
    return StudentStage(student, distiller, teacher, label_encoder, assigner,
                        CenterPointLoss(cfg.student.code_weights), depth, grid, ncls,
                        cfg.label_encoder.footprint_scale,
                        d.cmkd.unlabeled_fraction if d.method == "cmkd" else 0.0, d.kd_warmup_steps)
