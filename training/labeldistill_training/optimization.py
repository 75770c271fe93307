"""Optimisation of a stage: AdamW with the student's slower LSS group, the lr scaled with the total batch, and
``torch.optim.lr_scheduler.MultiStepLR`` stepped once per epoch.

Reference (BEVDepth / LabelDistill ``configure_optimizers``): ``AdamW(lr, weight_decay)`` and
``MultiStepLR(milestones, gamma 0.1)`` stepped per epoch, no warm-up, which is exactly what is built here (the
milestones count 0-based epochs: epoch ``e`` trains at ``lr * gamma ** #(milestones <= e)``). Deviations, each a
setting: ``stages.<stage>.base_batch_size`` scales ``lr`` linearly with the real total batch (the reference
states its lr for 4 GPUs x 4); ``distill.unidistill.grad_clip`` replaces the student's clip for UniDistill.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from labeldistill_training.config import TrainConfig

LSS_PREFIXES = ("student.backbone.", "student.image_neck.", "student.depth_net.", "student.view_transform.")
"""The student's parameters the reference names ``backbone`` (the whole LSS), trained at ``backbone_lr_mult``."""


def base_lr(cfg: TrainConfig, stage: str, world: int = 1) -> float:
    """``stages.<stage>.lr``, scaled by ``total batch / base_batch_size`` when ``base_batch_size`` is set."""
    s = cfg.stage(stage)
    if s.base_batch_size:
        return s.lr * cfg.loader.batch_size * world / s.base_batch_size
    return s.lr


def grad_clip(cfg: TrainConfig, stage: str) -> Optional[float]:
    """Max gradient norm of this stage: ``stages.<stage>.grad_clip``, replaced for the UniDistill student by
    ``distill.unidistill.grad_clip`` when that is set (reference 0.1)."""
    if stage == "student" and cfg.distill.method == "unidistill" and cfg.distill.unidistill.grad_clip is not None:
        return cfg.distill.unidistill.grad_clip
    return cfg.stage(stage).grad_clip


def describe_lr(cfg: TrainConfig, stage: str, world: int = 1) -> str:
    """One line: the effective lr and where it comes from (printed at the start of each stage)."""
    s = cfg.stage(stage)
    total = cfg.loader.batch_size * world
    lr = base_lr(cfg, stage, world)
    if s.base_batch_size:
        src = (f"stages.{stage}.lr {s.lr:g} at base batch {s.base_batch_size}, scaled x{total}/"
               f"{s.base_batch_size} to the total batch {total} ({cfg.loader.batch_size} x "
               f"{world} process{'es' if world > 1 else ''})")
    else:
        src = f"stages.{stage}.lr {s.lr:g} as given (no base_batch_size: not scaled; total batch {total})"
    msg = f"[{stage}] lr {lr:.4g} = {src}; {lr / total:.3g} per sample"
    if stage == "student":
        mult = cfg.student.backbone_lr_mult
        msg += f"; image backbone/neck/depth net x{mult:g} = {lr * mult:.4g}"
    clip = grad_clip(cfg, stage)
    msg += f"; grad clip {clip:g}" if clip else "; no grad clip"
    return msg


def build_optimizer(trainable: nn.Module, cfg: TrainConfig, stage: str, world: int = 1) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the student's LSS parameters in a second group at
    ``student.backbone_lr_mult`` (each group keeps its multiplier as ``lr_mult``)."""
    lr = base_lr(cfg, stage, world)
    params = [(n, p) for n, p in trainable.named_parameters() if p.requires_grad]
    if stage == "student":
        groups = [{"params": [p for n, p in params if not n.startswith(LSS_PREFIXES)], "lr_mult": 1.0},
                  {"params": [p for n, p in params if n.startswith(LSS_PREFIXES)],
                   "lr_mult": cfg.student.backbone_lr_mult}]
    else:
        groups = [{"params": [p for _, p in params], "lr_mult": 1.0}]
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.stage(stage).weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, stage: str) -> torch.optim.lr_scheduler.MultiStepLR:
    """The reference's ``MultiStepLR(milestones, gamma)``; call ``.step()`` once at the end of every epoch."""
    s = cfg.stage(stage)
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(s.milestones), gamma=s.gamma)


def restore_schedule(opt: torch.optim.Optimizer, sched, state: Optional[dict], epochs_done: int) -> None:
    """Resume the schedule after ``epochs_done`` epochs: its saved ``state_dict``, or for a ``last.pt`` written
    before the scheduler was saved, the closed form (``initial_lr * gamma ** #(milestones <= epochs_done)``)."""
    if state is not None:
        sched.load_state_dict(state)
        return
    sched.last_epoch = epochs_done
    decays = sum(1 for m in sched.milestones.elements() if m <= epochs_done)
    for g, lr0 in zip(opt.param_groups, sched.base_lrs):
        g["initial_lr"] = lr0
        g["lr"] = lr0 * sched.gamma ** decays
