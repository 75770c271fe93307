"""The three training stages as modules, ``forward(batch) -> (loss, parts)``, ``predict(batch) -> head outputs``
and ``trainable()`` (what the optimizer, EMA and checkpoints see), plus :class:`Frozen` for their fixed inputs.

* :class:`TeacherStage`: LiDAR points -> teacher -> CenterPoint loss.
* :class:`LabelEncoderStage`: GT -> rasteriser -> label encoder -> frozen teacher neck + head -> CenterPoint loss
  (methods.md §2.3; gradients flow through the frozen head to the encoder).
* :class:`StudentStage`: images + calibration -> student -> GT detection + depth losses + the distiller against
  the frozen teacher and label encoder.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from labeldistill_ros.model.config import BEVGridConfig
from labeldistill_training.batch import gt_lists, is_unlabeled, padded_points, student_inputs
from labeldistill_training.losses.depth import DepthLoss
from labeldistill_training.losses.detection import CenterPointLoss, CenterPointTargetAssigner
from labeldistill_training.models.label_encoder import LabelEncoder, rasterize_batch
from labeldistill_training.models.teacher import LidarTeacher


class Frozen(nn.Module):
    """A frozen sub-module: parameters ``requires_grad=False`` and held in eval mode whatever ``.train()`` says.

    Args:
        module: the wrapped network.
        bn_mode: ``"eval"`` (running statistics, recommended) or ``"train"`` (BatchNorm uses batch statistics
            as the reference most likely did; running stats still never change because momentum is zeroed).
    Call the wrapped module through ``frozen.module`` (gradients still flow through activations, e.g. the label
    encoder's loss through the frozen teacher head) or ``frozen(...)`` (under ``torch.no_grad()``).
    """

    def __init__(self, module: nn.Module, bn_mode: str = "eval") -> None:
        super().__init__()
        self.module = module
        self.bn_mode = bn_mode
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "Frozen":  # noqa: ARG002 - always frozen
        super().train(False)
        self.module.eval()
        if self.bn_mode == "train":
            for m in self.module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
                    m.momentum = 0.0
        return self

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.module(*args, **kwargs)


class TeacherStage(nn.Module):
    """Stage 1: LiDAR teacher trained with the GT CenterPoint loss on the student's targets."""

    def __init__(self, teacher: LidarTeacher, assigner: CenterPointTargetAssigner, loss: CenterPointLoss) -> None:
        super().__init__()
        self.teacher = teacher
        self.assigner, self.det_loss = assigner, loss

    def trainable(self) -> nn.Module:
        return self.teacher

    def forward(self, batch: dict):
        out = self.teacher(padded_points(batch))
        boxes, labels = gt_lists(batch)
        loss, parts = self.det_loss(out["head_outputs"], self.assigner(boxes, labels))
        return loss, parts

    @torch.no_grad()
    def predict(self, batch: dict):
        return self.teacher(padded_points(batch))["head_outputs"]


class LabelEncoderStage(nn.Module):
    """Stage 2: label encoder trained through the frozen teacher neck + head (eval mode, frozen parameters)."""

    def __init__(self, label_encoder: LabelEncoder, teacher: Frozen, assigner: CenterPointTargetAssigner,
                 loss: CenterPointLoss, grid: BEVGridConfig, num_classes: int, footprint_scale: float) -> None:
        super().__init__()
        self.label_encoder = label_encoder
        self.frozen_teacher = teacher
        self.assigner, self.det_loss = assigner, loss
        self.grid, self.num_classes, self.footprint_scale = grid, num_classes, footprint_scale

    def trainable(self) -> nn.Module:
        return self.label_encoder

    def head_outputs(self, batch: dict):
        boxes, labels = gt_lists(batch)
        bm, lm, _ = rasterize_batch(boxes, labels, self.grid, self.num_classes, self.footprint_scale)
        feats = self.label_encoder(bm, lm)
        _, head_out = self.frozen_teacher.module.forward_neck_head(feats)  # gradients flow to the encoder
        return head_out

    def forward(self, batch: dict):
        boxes, labels = gt_lists(batch)
        return self.det_loss(self.head_outputs(batch), self.assigner(boxes, labels))

    @torch.no_grad()
    def predict(self, batch: dict):
        return self.head_outputs(batch)


class StudentStage(nn.Module):
    """Stage 3: camera student with GT detection + depth losses and the selected distiller.

    ``frozen_teacher`` / ``frozen_label_encoder`` are :class:`Frozen` (or ``None`` when the method needs none);
    their forwards run under ``no_grad``. ``batch["has_labels"]`` (bool ``(B,)``, optional) marks samples whose
    labels are withheld (CMKD unlabeled mode): their GT detection loss is dropped. ``kd_warmup_steps`` > 0 scales
    the distiller's loss by ``min(1, (step + 1) / kd_warmup_steps)``, ``step`` being the optimizer steps done
    (the trainer calls :meth:`set_step` before each one; logged as ``warmup_weight``).
    """

    def __init__(self, student: nn.Module, distiller: nn.Module, frozen_teacher: Optional[Frozen],
                 frozen_label_encoder: Optional[Frozen], assigner: CenterPointTargetAssigner, det_loss: CenterPointLoss,
                 depth_loss: DepthLoss, grid: BEVGridConfig, num_classes: int, footprint_scale: float,
                 unlabeled_fraction: float = 0.0, kd_warmup_steps: int = 0) -> None:
        super().__init__()
        self.unlabeled_fraction = unlabeled_fraction
        self.kd_warmup_steps, self.step = int(kd_warmup_steps), 0
        self.student = student
        self.distiller = distiller
        self.frozen_teacher = frozen_teacher
        self.frozen_label_encoder = frozen_label_encoder
        self.assigner, self.det_loss, self.depth_loss = assigner, det_loss, depth_loss
        self.grid, self.num_classes, self.footprint_scale = grid, num_classes, footprint_scale
        self._trainable = nn.ModuleDict({"student": student, "distiller": distiller})

    def trainable(self) -> nn.Module:
        return self._trainable

    def set_step(self, step: int) -> None:
        """Optimizer steps done so far in the stage (drives the KD warm-up; restored on resume by the trainer)."""
        self.step = int(step)

    def kd_weight(self) -> float:
        """The distillation terms' weight at the current step: 1 without a warm-up."""
        if self.kd_warmup_steps <= 0:
            return 1.0
        return min(1.0, (self.step + 1) / self.kd_warmup_steps)

    def forward(self, batch: dict):
        out = self.student(**student_inputs(batch))
        boxes, labels = gt_lists(batch)
        targets = self.assigner(boxes, labels)
        sample_mask = batch.get("has_labels")
        if sample_mask is None and self.unlabeled_fraction > 0 and "sample_token" in batch:
            sample_mask = torch.tensor([not is_unlabeled(t, self.unlabeled_fraction) for t in batch["sample_token"]],
                                       device=out.bev_input.device)
        det, parts = self.det_loss(out.head_outputs, targets, sample_mask=sample_mask)
        parts = {"det_" + k: v for k, v in parts.items()}
        total = det
        if self.depth_loss is not None and batch.get("depth") is not None:
            parts["depth"] = self.depth_loss(out.depth, batch["depth"])
            total = total + parts["depth"]
        teacher_out = self.frozen_teacher(padded_points(batch)) if self.frozen_teacher is not None else None
        label_feats = None
        if self.frozen_label_encoder is not None:
            bm, lm, _ = rasterize_batch(boxes, labels, self.grid, self.num_classes, self.footprint_scale)
            label_feats = self.frozen_label_encoder(bm, lm)
        kd, kd_parts = self.distiller(out, teacher_out, label_feats, targets, boxes)
        parts.update({"kd_" + k: v for k, v in kd_parts.items()})
        if self.kd_warmup_steps > 0:
            parts["warmup_weight"] = self.kd_weight()
            kd = kd * parts["warmup_weight"]
        if sample_mask is not None:
            parts["labeled_fraction"] = sample_mask.float().mean()
        return total + kd, parts

    @torch.no_grad()
    def predict(self, batch: dict):
        return self.student(**student_inputs(batch)).head_outputs
