"""One trainer for the three LabelDistill stages: ``teacher``, ``label_encoder`` and ``student``.

Data flows config -> data -> model -> loss -> trainer:

* ``teacher``: LiDAR points -> :class:`~labeldistill_training.models.teacher.LidarTeacher` -> CenterPoint loss.
* ``label_encoder``: GT -> rasteriser -> :class:`~labeldistill_training.models.label_encoder.LabelEncoder`
  -> frozen teacher neck + head (eval mode, no parameter gradients; gradients flow through to the encoder)
  -> CenterPoint loss (methods.md §2.3).
* ``student``: images + calibration -> :class:`labeldistill_ros.model.student.StudentDetector` -> GT detection
  loss + BEVDepth depth loss + the distiller of ``distill.method`` against the frozen teacher and label encoder
  (eval mode, ``requires_grad=False``, forward under ``no_grad``).

Optimisation: AdamW, MultiStepLR stepped per epoch (lr scaled linearly with the total batch when the stage has a
``base_batch_size``), gradient clipping, fp16 autocast + GradScaler on CUDA, EMA (BEVDepth's ramped decay).

Outputs under ``<trainer.work_dir>/<stage>/``:

* ``last.pt``: full training state after the last completed epoch (model, EMA, optimizer, scaler, epoch, step,
  config, format version), written atomically (temp file + ``os.replace``) at the end of every epoch. A run
  that finds it resumes at the next epoch, so a kill loses at most the current epoch. Resuming needs only it.
* ``epoch_NNN.pt``: the weights after epoch NNN (EMA weights when EMA is on), also atomic; only the newest
  ``trainer.keep_checkpoints`` (3) are kept, older ones are deleted after each save.
* ``final.pt``: the deliverable weights (EMA when on) that later stages load: teacher or label encoder.
* Student stage: ``student.pt`` is the deliverable, written once by the runtime's own writer
  (:func:`labeldistill_ros.model.checkpoint.save_checkpoint`, what the ROS node loads) with the trainer's
  additions in its ``extra`` (``stage``, ``method``, ``epoch``, ``train_config``, ``distiller``: the adaptor
  weights). ``final.pt`` is a relative symlink to it (a copy where the file system has no symlinks), so
  ``<work_dir>/<stage>/final.pt`` names every stage's result and nothing is stored twice. The student's
  ``epoch_NNN.pt`` use the same format, so the node can load any kept epoch.
* ``log.csv`` (one row per ``log_interval`` steps and per epoch end) and ``loss_curves.png`` (plus TensorBoard
  scalars under ``tb/`` when the ``tensorboard`` package is importable).
* ``metrics.json``: DetectionEval (mAP, NDS, ...) on the val split after the last epoch.

Distributed: launched by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the trainer joins a process
group (NCCL on CUDA, gloo on CPU), wraps the trainable stage module in DDP and shards the data with a
``DistributedSampler``; rank 0 writes checkpoints, logs and metrics.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from labeldistill_training.config import STAGES, TrainConfig, config_to_dict, resolve_path
from labeldistill_training.csv_log import CsvLogger
from labeldistill_training.distributed import init_distributed
from labeldistill_training.ema import ModelEMA
from labeldistill_training.distill import build_distiller
from labeldistill_training.losses.depth import DepthLoss
from labeldistill_training.losses.detection import BevGrid, CenterPointLoss, CenterPointTargetAssigner
from labeldistill_training.models.label_encoder import LabelEncoder, rasterize_batch
from labeldistill_training.models.teacher import BevDownsampler, LidarTeacher, PillarEncoder, SECONDBackbone, SECONDFPN

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint dictionaries written here; bumped on incompatible changes."""

KILL_ENV = "LABELDISTILL_KILL_AT_STEP"
"""Test hook: when set to N, the process SIGKILLs itself right after global step N (resume tests)."""


# ================================================================================================================
# Small utilities
# ================================================================================================================
def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically: write a temp file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, expect_kind: Optional[str] = None) -> dict:
    """Load a checkpoint written here with ``weights_only=True``; check format version and kind.

    The student's weights files are the runtime's checkpoint format (no ``kind``; ``model_config``, ``extra``):
    they are checked against the runtime's format version and returned with ``kind: "student"``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupted / truncated / not a torch file
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e
    if isinstance(ckpt, dict) and "kind" not in ckpt and "model_config" in ckpt and "extra" in ckpt:
        from labeldistill_ros.model.checkpoint import FORMAT_VERSION

        if ckpt.get("format_version") != FORMAT_VERSION:
            raise RuntimeError(f"{path}: student checkpoint format {ckpt.get('format_version')!r}, the runtime "
                               f"reads format {FORMAT_VERSION}")
        ckpt = {**ckpt, "kind": "student"}
    elif not isinstance(ckpt, dict) or ckpt.get("format_version") != CHECKPOINT_FORMAT:
        got = ckpt.get("format_version") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RuntimeError(f"{path}: checkpoint format {got!r}, this trainer reads format {CHECKPOINT_FORMAT}")
    if expect_kind is not None and ckpt.get("kind") != expect_kind:
        raise RuntimeError(f"{path}: holds a {ckpt.get('kind')!r} checkpoint, expected {expect_kind!r}")
    return ckpt


def link_or_copy(target: Path, link: Path) -> None:
    """``link`` -> ``target`` as a relative symlink (same folder), replacing whatever ``link`` was; a copy where
    symlinks are not available."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.lnk")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(target, link.parent), tmp)
    except (OSError, NotImplementedError):
        import shutil

        shutil.copyfile(target, tmp)
    os.replace(tmp, link)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


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


# ================================================================================================================
# Builders (config -> modules)
# ================================================================================================================
def task_class_ids(model_cfg) -> list[tuple[int, ...]]:
    """Global class ids of each head task group (indices into ``model_cfg.class_names``)."""
    return [tuple(model_cfg.class_names.index(c) for c in g) for g in model_cfg.head.task_groups]


def bev_grid(model_cfg) -> BevGrid:
    g = model_cfg.bev_grid
    return BevGrid(x_min=g.x[0], y_min=g.y[0], cell=g.x[2], H=g.ny, W=g.nx)


def build_teacher(cfg: TrainConfig, model_cfg) -> LidarTeacher:
    """LiDAR teacher on the student's grid with the student's :class:`CenterHead` class."""
    from labeldistill_ros.model.head import CenterHead

    t = cfg.teacher
    grid = bev_grid(model_cfg)
    if abs(t.pillar_size[0] - t.pillar_size[1]) > 1e-9:
        raise ValueError("teacher.pillar_size must be square")
    stride = grid.cell / t.pillar_size[0]
    if abs(stride - round(stride)) > 1e-6:
        raise ValueError(f"teacher.pillar_size {t.pillar_size[0]} must divide the BEV cell {grid.cell}")
    pr = list(t.point_range)
    pr[0], pr[1], pr[3], pr[4] = grid.x_min, grid.y_min, grid.x_min + grid.W * grid.cell, grid.y_min + grid.H * grid.cell
    enc = PillarEncoder(pr, t.pillar_size, t.point_features, t.pillar_channels, t.encoder, t.z_bins)
    down = BevDownsampler(t.pillar_channels, t.encoder_channels, int(round(stride)), t.downsample_channels)
    backbone = SECONDBackbone(t.encoder_channels, t.backbone_channels, t.backbone_layers, (1, 2))
    neck = SECONDFPN(t.backbone_channels, t.neck_channels, (1, 2))
    head = CenterHead(neck.out_channels, t.head_share_channels, t.head_conv_channels, model_cfg.head.task_groups,
                      model_cfg.head.heatmap_init_bias)
    return LidarTeacher(enc, down, backbone, neck, head)


def build_label_encoder(cfg: TrainConfig, model_cfg) -> LabelEncoder:
    grid = bev_grid(model_cfg)
    return LabelEncoder(cfg.teacher.backbone_channels, (1, 2), (grid.H, grid.W), cfg.label_encoder.hidden, 9,
                        len(model_cfg.class_names))


def build_student(model_cfg):
    from labeldistill_ros.model.student import StudentDetector

    return StudentDetector.from_config(model_cfg)


def distiller_for(cfg: TrainConfig, model_cfg, student: nn.Module) -> nn.Module:
    """The distiller of ``cfg.distill.method`` sized for ``student`` (a built :class:`StudentDetector`)."""
    d = cfg.distill
    return build_distiller(d.method, (model_cfg.bev_channels, model_cfg.bev_trunk.base_channels),
                           cfg.teacher.encoder_channels, cfg.teacher.backbone_channels, bev_grid(model_cfg),
                           d.labeldistill, d.unidistill, d.cmkd, d.stereodistill,
                           feature_channels=student.bev_encoder.out_channels,
                           num_tasks=len(model_cfg.head.task_groups), head_channels=model_cfg.head.head_conv_channels)


def weights_checkpoint(kind: str, state_dict: dict, cfg: TrainConfig, model_cfg, epoch: int, **extra) -> dict:
    from labeldistill_ros.model.config import model_config_to_dict

    return {"format_version": CHECKPOINT_FORMAT, "kind": kind, "epoch": epoch, "state_dict": state_dict,
            "train_config": config_to_dict(cfg), "model_config": model_config_to_dict(model_cfg),
            "class_names": list(model_cfg.class_names), **extra}


def save_student_weights(path: Path, trainable: nn.Module, cfg: TrainConfig, epoch: int) -> None:
    """The student stage's weights file, written by the runtime's own writer
    (:func:`labeldistill_ros.model.checkpoint.save_checkpoint`: what the node loads) with the trainer's
    additions in its ``extra``: ``stage``, ``method``, ``epoch`` (1-based, epochs completed), ``train_config`` and
    ``distiller`` (the distiller's trainable weights, e.g. LabelDistill's adaptors).

    ``trainable``: the stage's ``{"student": StudentDetector, "distiller": ...}`` ModuleDict (or its EMA copy)."""
    from labeldistill_ros.model.checkpoint import save_checkpoint

    distiller = {k: v.detach().cpu() for k, v in trainable["distiller"].state_dict().items()}
    save_checkpoint(path, trainable["student"], extra={
        "stage": "student", "method": cfg.distill.method, "epoch": epoch + 1, "train_config": config_to_dict(cfg),
        "distiller": distiller})


def trainable_state_from_checkpoint(ckpt: dict) -> dict:
    """Keys of the student stage's trainable ModuleDict (``student.*``, ``distiller.*``) from a student weights
    file (:func:`save_student_weights`, any runtime ``student.pt``) or an older trainer file (prefixed keys, or the
    distiller under a top-level ``distiller``)."""
    sd = ckpt["state_dict"]
    if any(k.startswith(("student.", "distiller.")) for k in sd):
        return dict(sd)
    out = {f"student.{k}": v for k, v in sd.items()}
    distiller = ckpt.get("distiller") or (ckpt.get("extra") or {}).get("distiller") or {}
    out.update({f"distiller.{k}": v for k, v in distiller.items()})
    return out


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


# ================================================================================================================
# Batch access (the one place that knows the data pipeline's batch keys)
# ================================================================================================================
def batch_to(batch: dict, device: torch.device) -> dict:
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, (list, tuple)) and v and all(torch.is_tensor(x) for x in v):
            out[k] = [x.to(device, non_blocking=True) for x in v]
        else:
            out[k] = v
    return out


def gt_lists(batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-sample GT ``(N_b, 9)`` boxes (key ego, after BEV augmentation) and ``(N_b,)`` class ids."""
    return list(batch["gt_boxes"]), [l.long() for l in batch["gt_labels"]]


def padded_points(batch: dict) -> torch.Tensor:
    """``points``: a ``(B, P, 5)`` tensor, or the pipeline's list of ``(P_b, 5)`` padded with -999 rows (outside
    every range, so the voxeliser drops them)."""
    pts = batch["points"]
    if torch.is_tensor(pts):
        return pts
    n = max(1, max(int(p.shape[0]) for p in pts))
    out = pts[0].new_full((len(pts), n, pts[0].shape[1]), -999.0)
    for i, p in enumerate(pts):
        out[i, : p.shape[0]] = p
    return out


def student_inputs(batch: dict) -> dict:
    """Student forward arguments from a pipeline batch (``imgs (B, F, N, 3, H, W)``, frame 0 = current).

    The node's path: each previous frame ``t`` is lifted in its *own* key ego frame (``prev_cam2ego = cam2ego[:,
    1:] (B, T, N, 4, 4)``, camera -> that frame's key ego), without gradients, and warped into the current key
    ego with the batch's ``prev2curr (B, T, 4, 4)`` (previous key ego -> current key ego; identity for a frame
    clamped to the current one at the start of a scene), exactly as the node warps the BEV feature it kept.
    Also accepts ``images (B, N, 3, H, W)`` with per-frame-free calibration (tests)."""
    if "images" in batch:
        kw = {k: batch[k] for k in ("images", "K", "cam2ego", "ida", "bda")}
        return kw
    imgs = batch["imgs"]
    kw = {"images": imgs[:, 0], "K": batch["K"][:, 0], "cam2ego": batch["cam2ego"][:, 0],
          "ida": batch["ida"][:, 0], "bda": batch["bda"]}
    if imgs.shape[1] > 1:
        T = imgs.shape[1] - 1
        p2c = batch.get("prev2curr")
        if p2c is None or tuple(p2c.shape[1:]) != (T, 4, 4):
            raise ValueError(f"a batch with {T} previous frames needs 'prev2curr' of shape (B, {T}, 4, 4) (previous "
                             f"key ego -> current key ego, from the data pipeline), got "
                             f"{None if p2c is None else tuple(p2c.shape)}")
        kw["prev_images"] = imgs[:, 1:]
        kw["prev_cam2ego"] = batch["cam2ego"][:, 1:]
        kw["prev2curr"] = p2c
    return kw


def is_unlabeled(sample_token: str, fraction: float) -> bool:
    """Deterministic label withholding for CMKD's unlabeled-data mode: a sample is treated as unlabeled when the
    hash of its token falls below ``fraction`` (the same samples in every epoch, on every rank)."""
    import hashlib

    h = int(hashlib.sha1(str(sample_token).encode()).hexdigest()[:8], 16) / 2 ** 32
    return h < fraction


# ================================================================================================================
# Stage modules: forward(batch) -> (loss, parts)
# ================================================================================================================
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
                 loss: CenterPointLoss, grid: BevGrid, num_classes: int, footprint_scale: float) -> None:
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
    labels are withheld (CMKD unlabeled mode): their GT detection loss is dropped.
    """

    def __init__(self, student: nn.Module, distiller: nn.Module, frozen_teacher: Optional[Frozen],
                 frozen_label_encoder: Optional[Frozen], assigner: CenterPointTargetAssigner, det_loss: CenterPointLoss,
                 depth_loss: DepthLoss, grid: BevGrid, num_classes: int, footprint_scale: float,
                 unlabeled_fraction: float = 0.0) -> None:
        super().__init__()
        self.unlabeled_fraction = unlabeled_fraction
        self.student = student
        self.distiller = distiller
        self.frozen_teacher = frozen_teacher
        self.frozen_label_encoder = frozen_label_encoder
        self.assigner, self.det_loss, self.depth_loss = assigner, det_loss, depth_loss
        self.grid, self.num_classes, self.footprint_scale = grid, num_classes, footprint_scale
        self._trainable = nn.ModuleDict({"student": student, "distiller": distiller})

    def trainable(self) -> nn.Module:
        return self._trainable

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
        if sample_mask is not None:
            parts["labeled_fraction"] = sample_mask.float().mean()
        return total + kd, parts

    @torch.no_grad()
    def predict(self, batch: dict):
        return self.student(**student_inputs(batch)).head_outputs


# ================================================================================================================
# The trainer
# ================================================================================================================
class Trainer:
    """Trains one stage of a :class:`~labeldistill_training.config.TrainConfig`.

    Args:
        cfg: the validated config.
        stage: ``teacher`` | ``label_encoder`` | ``student``.
        dataset_factory: ``f(cfg, model_cfg, split: "train"|"val", stage) -> torch Dataset`` yielding samples the
            ``collate_fn`` batches (default: the project's nuScenes pipeline, :func:`default_datasets`).
        collate_fn: batch collation (default: the pipeline's collate).
        device: default CUDA (``LOCAL_RANK``) when available, else CPU.
    Entry point: :meth:`fit` (train, resume if ``last.pt`` exists, write ``final.pt``, evaluate) -> summary dict.
    """

    def __init__(self, cfg: TrainConfig, stage: str, dataset_factory: Optional[Callable] = None,
                 collate_fn: Optional[Callable] = None, device: Optional[torch.device] = None) -> None:
        from labeldistill_ros.model.config import load_model_config

        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
        self.cfg, self.stage = cfg, stage
        self.scfg = cfg.stage(stage)
        self.dist = init_distributed()
        if device is None:
            device = torch.device(f"cuda:{self.dist.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        self.device = device
        mpath = resolve_path(cfg, cfg.model_config)
        self.model_cfg = with_data_prev_offsets(cfg, with_data_image_transform(cfg, load_model_config(mpath)))
        self.grid = bev_grid(self.model_cfg)
        self.out_dir = Path(resolve_path(cfg, cfg.trainer.work_dir)) / stage
        if dataset_factory is None or collate_fn is None:
            df, cf = default_datasets()
            dataset_factory = dataset_factory or df
            collate_fn = collate_fn or cf
        self.dataset_factory, self.collate_fn = dataset_factory, collate_fn
        self.use_amp = bool(self.scfg.amp and self.device.type == "cuda")

    # ------------------------------------------------------------------------------------------------ building
    def _stage_checkpoint(self, which: str) -> Path:
        explicit = {"teacher": self.scfg.teacher_checkpoint,
                    "label_encoder": self.scfg.label_encoder_checkpoint}[which]
        if explicit:
            return Path(resolve_path(self.cfg, explicit))
        return Path(resolve_path(self.cfg, self.cfg.trainer.work_dir)) / which / "final.pt"

    def _load_frozen_teacher(self) -> LidarTeacher:
        teacher = build_teacher(self.cfg, self.model_cfg)
        ckpt = load_checkpoint(self._stage_checkpoint("teacher"), "teacher")
        teacher.load_state_dict(ckpt["state_dict"])
        return teacher

    def build_stage(self) -> nn.Module:
        cfg, mcfg = self.cfg, self.model_cfg
        assigner = CenterPointTargetAssigner(self.grid, task_class_ids(mcfg))
        ncls = len(mcfg.class_names)
        bn = cfg.trainer.frozen_bn
        if self.stage == "teacher":
            return TeacherStage(build_teacher(cfg, mcfg), assigner, CenterPointLoss(cfg.teacher.code_weights))
        if self.stage == "label_encoder":
            teacher = Frozen(self._load_frozen_teacher(), bn)
            return LabelEncoderStage(build_label_encoder(cfg, mcfg), teacher, assigner,
                                     CenterPointLoss(cfg.label_encoder.code_weights), self.grid, ncls,
                                     cfg.label_encoder.footprint_scale)
        student = build_student(mcfg)
        load_pretrained_backbone(student, cfg, self._print)  # before init_checkpoint / resume, which win
        d = cfg.distill
        distiller = distiller_for(cfg, mcfg, student)
        teacher = Frozen(self._load_frozen_teacher(), bn) if distiller.needs_teacher else None
        label_encoder = None
        if distiller.needs_label_encoder:
            le = build_label_encoder(cfg, mcfg)
            ckpt = load_checkpoint(self._stage_checkpoint("label_encoder"), "label_encoder")
            le.load_state_dict(ckpt["state_dict"])
            label_encoder = Frozen(le, bn)
        dn = mcfg.depth_net
        depth = DepthLoss(dn.depth_bound[0], dn.depth_bound[2], dn.num_bins, mcfg.feature_stride,
                          cfg.student.depth_loss_weight) if cfg.student.depth_loss_weight > 0 else None
        return StudentStage(student, distiller, teacher, label_encoder, assigner,
                            CenterPointLoss(cfg.student.code_weights), depth, self.grid, ncls,
                            cfg.label_encoder.footprint_scale,
                            d.cmkd.unlabeled_fraction if d.method == "cmkd" else 0.0)

    def build_optimizer(self, trainable: nn.Module) -> torch.optim.Optimizer:
        lr = self.base_lr()
        if self.stage == "student":
            lss = ("student.backbone.", "student.image_neck.", "student.depth_net.", "student.view_transform.")
            slow = [p for n, p in trainable.named_parameters() if p.requires_grad and n.startswith(lss)]
            fast = [p for n, p in trainable.named_parameters() if p.requires_grad and not n.startswith(lss)]
            groups = [{"params": fast, "lr_mult": 1.0},
                      {"params": slow, "lr_mult": self.cfg.student.backbone_lr_mult}]
        else:
            groups = [{"params": [p for p in trainable.parameters() if p.requires_grad], "lr_mult": 1.0}]
        for g in groups:
            g["lr"] = lr * g["lr_mult"]
        return torch.optim.AdamW(groups, lr=lr, weight_decay=self.scfg.weight_decay)

    def base_lr(self) -> float:
        s = self.scfg
        if s.base_batch_size:
            return s.lr * self.cfg.loader.batch_size * self.dist.world / s.base_batch_size
        return s.lr

    def grad_clip(self) -> Optional[float]:
        """Max gradient norm of this stage: ``stages.<stage>.grad_clip``, replaced for the UniDistill student by
        ``distill.unidistill.grad_clip`` when that is set (reference 0.1)."""
        if self.stage == "student" and self.cfg.distill.method == "unidistill" \
                and self.cfg.distill.unidistill.grad_clip is not None:
            return self.cfg.distill.unidistill.grad_clip
        return self.scfg.grad_clip

    def describe_lr(self) -> str:
        """One line: the effective lr and where it comes from (printed at the start of each stage)."""
        s = self.scfg
        total = self.cfg.loader.batch_size * self.dist.world
        lr = self.base_lr()
        if s.base_batch_size:
            src = (f"stages.{self.stage}.lr {s.lr:g} at base batch {s.base_batch_size}, scaled x{total}/"
                   f"{s.base_batch_size} to the total batch {total} ({self.cfg.loader.batch_size} x "
                   f"{self.dist.world} process{'es' if self.dist.world > 1 else ''})")
        else:
            src = f"stages.{self.stage}.lr {s.lr:g} as given (no base_batch_size: not scaled; total batch {total})"
        msg = f"[{self.stage}] lr {lr:.4g} = {src}; {lr / total:.3g} per sample"
        if self.stage == "student":
            msg += f"; image backbone/neck/depth net x{self.cfg.student.backbone_lr_mult:g} = " \
                   f"{lr * self.cfg.student.backbone_lr_mult:.4g}"
        clip = self.grad_clip()
        msg += f"; grad clip {clip:g}" if clip else "; no grad clip"
        return msg

    def lr_at_epoch(self, epoch: int) -> float:
        """MultiStepLR: ``lr * gamma ** #(milestones <= epoch)`` with 0-based epochs (reference semantics)."""
        return self.base_lr() * self.scfg.gamma ** sum(1 for m in self.scfg.milestones if epoch >= m)

    def loader(self, split: str, epoch: int) -> torch.utils.data.DataLoader:
        ds = self.dataset_factory(self.cfg, self.model_cfg, split, self.stage)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        train = split == "train"
        cap = self.cfg.loader.max_train_samples if train else self.cfg.loader.max_val_samples
        if cap is not None and len(ds) > cap:
            ds = torch.utils.data.Subset(ds, list(range(cap)))
        g = torch.Generator().manual_seed(self.cfg.trainer.seed * 100003 + epoch)
        if self.dist.world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(
                ds, num_replicas=self.dist.world, rank=self.dist.rank, shuffle=train, seed=self.cfg.trainer.seed,
                drop_last=train)
            sampler.set_epoch(epoch)
        elif train:
            sampler = torch.utils.data.RandomSampler(ds, generator=g)
        else:
            sampler = torch.utils.data.SequentialSampler(ds)
        nw = self.cfg.loader.num_workers
        return torch.utils.data.DataLoader(ds, batch_size=self.cfg.loader.batch_size, sampler=sampler,
                                           num_workers=nw, collate_fn=self.collate_fn,
                                           drop_last=train and len(ds) >= self.cfg.loader.batch_size,
                                           generator=g, persistent_workers=False,
                                           worker_init_fn=_worker_init if nw else None,
                                           pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------------------------------------ training
    def fit(self) -> dict:
        cfg, scfg, dev = self.cfg, self.scfg, self.device
        seed_everything(cfg.trainer.seed)
        if cfg.trainer.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        stage = self.build_stage().to(dev)
        trainable = stage.trainable()
        if scfg.init_checkpoint:
            ck = load_checkpoint(Path(resolve_path(cfg, scfg.init_checkpoint)))
            sd = trainable_state_from_checkpoint(ck) if self.stage == "student" else ck["state_dict"]
            missing, unexpected = trainable.load_state_dict(sd, strict=False)
            self._print(f"init from {scfg.init_checkpoint}: {len(missing)} missing, {len(unexpected)} unexpected keys")
        self._print(self.describe_lr())
        opt = self.build_optimizer(trainable)
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        ema = ModelEMA(trainable, cfg.trainer.ema_decay, cfg.trainer.ema_ramp) if scfg.ema else None
        start_epoch, step = 0, 0
        last = self.out_dir / "last.pt"
        if last.is_file():
            ck = load_checkpoint(last, f"{self.stage}_state")
            trainable.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if ema is not None and ck.get("ema") is not None:
                ema.load_state_dict(ck["ema"])
            if ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            start_epoch, step = int(ck["epoch"]) + 1, int(ck["global_step"])
            self._print(f"[{self.stage}] resuming from {last} after epoch {start_epoch} (step {step})")
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        logger = CsvLogger(self.out_dir / "log.csv", resume_step=step if start_epoch else None) \
            if self.dist.is_main else None
        tb = _tensorboard(self.out_dir / "tb") if self.dist.is_main else None
        model = stage
        if self.dist.world > 1:
            model = nn.parallel.DistributedDataParallel(
                stage, device_ids=[dev.index] if dev.type == "cuda" else None,
                find_unused_parameters=self.stage == "student")
        kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
        grad_clip = self.grad_clip()
        step_times: list[float] = []
        for epoch in range(start_epoch, scfg.epochs):
            seed_everything(cfg.trainer.seed * 1000003 + epoch * 1009 + self.dist.rank)
            lr = self.lr_at_epoch(epoch)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_mult", 1.0)
            stage.train()
            loader = self.loader("train", epoch)
            n_iter = len(loader) if scfg.max_iters_per_epoch is None else min(len(loader), scfg.max_iters_per_epoch)
            bar = _progress(self.dist.is_main and cfg.trainer.progress, n_iter,
                            f"{self.stage} {epoch + 1}/{scfg.epochs}")
            sums: dict[str, float] = {}
            for it, batch in enumerate(loader):
                if it >= n_iter:
                    break
                t0 = time.perf_counter()
                batch = batch_to(batch, dev)
                with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=self.use_amp):
                    loss, parts = model(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"[{self.stage}] non-finite loss at epoch {epoch} step {step}: "
                                             f"{ {k: float(v) for k, v in parts.items()} }")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                gnorm = float("nan")
                if grad_clip:
                    scaler.unscale_(opt)
                    gnorm = float(torch.nn.utils.clip_grad_norm_(trainable.parameters(), grad_clip))
                scaler.step(opt)
                scaler.update()
                if ema is not None:
                    ema.update(trainable)
                step += 1
                dt = time.perf_counter() - t0
                step_times.append(dt)
                vals = {"loss": float(loss.detach())}
                vals.update({f"loss_{k}": float(v.detach() if torch.is_tensor(v) else v) for k, v in parts.items()})
                for k, v in vals.items():
                    sums[k] = sums.get(k, 0.0) + v
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{vals['loss']:.3f}")
                if logger is not None and (step % cfg.trainer.log_interval == 0 or it == n_iter - 1):
                    logger.log({"kind": "train", "epoch": epoch, "step": step, "lr": lr, "grad_norm": gnorm,
                                "step_ms": dt * 1000, **vals})
                    if tb is not None:
                        for k, v in vals.items():
                            tb.add_scalar(f"train/{k}", v, step)
                        tb.add_scalar("train/lr", lr, step)
                if kill_at and step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            if bar is not None:
                bar.close()
            if self.dist.is_main:
                self._save_epoch(trainable, opt, scaler, ema, epoch, step)
                if logger is not None:
                    logger.log({"kind": "epoch", "epoch": epoch, "step": step, "lr": lr,
                                **{k: v / max(1, n_iter) for k, v in sums.items()}})
                    logger.plot(self.out_dir / "loss_curves.png")
            if self.dist.world > 1:
                dist.barrier()
        final_module = ema.ema if ema is not None else trainable
        summary = {"stage": self.stage, "epochs": scfg.epochs, "global_step": step,
                   "step_ms": 1000 * float(np.median(step_times)) if step_times else None}
        if self.dist.is_main:
            self._save_final(final_module, scfg.epochs - 1)
        if cfg.trainer.eval_at_end and self.dist.is_main:
            eval_stage = stage
            if ema is not None:
                trainable.load_state_dict(ema.ema.state_dict())
            summary["metrics"] = self.evaluate(eval_stage)
        if self.dist.is_main:
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if self.dist.world > 1:
            dist.barrier()
        return summary

    def _save_weights(self, module: nn.Module, epoch: int, path: Path) -> None:
        if self.stage == "student":
            save_student_weights(path, module, self.cfg, epoch)
        else:
            atomic_save(weights_checkpoint(self.stage, module.state_dict(), self.cfg, self.model_cfg, epoch), path)

    def _save_epoch(self, trainable, opt, scaler, ema, epoch: int, step: int) -> None:
        keep = self.cfg.trainer.keep_checkpoints
        if keep > 0:
            self._save_weights(ema.ema if ema is not None else trainable, epoch,
                               self.out_dir / f"epoch_{epoch + 1:03d}.pt")
        state = {"format_version": CHECKPOINT_FORMAT, "kind": f"{self.stage}_state", "epoch": epoch,
                 "global_step": step, "model": trainable.state_dict(), "optimizer": opt.state_dict(),
                 "ema": ema.state_dict() if ema is not None else None,
                 "scaler": scaler.state_dict() if self.use_amp else None,
                 "train_config": config_to_dict(self.cfg)}
        atomic_save(state, self.out_dir / "last.pt")
        self._prune_epochs(keep)

    def _prune_epochs(self, keep: int) -> None:
        """Delete all but the newest ``keep`` ``epoch_NNN.pt`` (after the new one and ``last.pt`` are on disk)."""
        epochs = sorted(p for p in self.out_dir.glob("epoch_*.pt") if p.stem[len("epoch_"):].isdigit())
        for p in epochs[: max(0, len(epochs) - keep)]:
            p.unlink(missing_ok=True)

    def _save_final(self, module: nn.Module, epoch: int) -> None:
        if self.stage != "student":
            self._save_weights(module, epoch, self.out_dir / "final.pt")
            return
        # one file: the node's student.pt, which is also what later tools read as <work_dir>/student/final.pt
        self._save_weights(module, epoch, self.out_dir / "student.pt")
        link_or_copy(self.out_dir / "student.pt", self.out_dir / "final.pt")

    # ---------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, stage: nn.Module, split: str = "val") -> list[dict]:
        """Decoded detections for every sample of ``split``: ``[{"sample_token", "boxes", "scores", "labels"}]``
        (boxes in the ego frame of the sample, BEV augmentation off for val)."""
        from labeldistill_ros.model.decode import decode_detections

        stage.eval()
        mc = self.model_cfg
        results = []
        loader = self.loader(split, 0)
        n = self.cfg.loader.max_val_samples
        for batch in loader:
            batch = batch_to(batch, self.device)
            head_out = stage.predict(batch)
            dets = decode_detections(head_out, mc.head.task_groups, mc.class_names, mc.bev_grid, mc.decode)
            for i, d in enumerate(dets):
                results.append({"sample_token": batch["sample_token"][i], "boxes": d.boxes.float().cpu(),
                                "scores": d.scores.float().cpu(), "labels": d.labels.cpu(),
                                "ego2global": batch["ego2global"][i].double().cpu().numpy()
                                if "ego2global" in batch else None})
            if n is not None and len(results) >= n:
                break
        return results

    def evaluate(self, stage: nn.Module) -> dict:
        """DetectionEval (nuscenes-devkit) on the val split; writes ``metrics.json`` and returns the metrics."""
        preds = self.predict(stage, "val")
        metrics = run_detection_eval(self.cfg, self.model_cfg, preds, self.out_dir / "eval")
        (self.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        self._print(f"[{self.stage}] val mAP {metrics.get('mAP', float('nan')):.4f} "
                    f"NDS {metrics.get('NDS', float('nan')):.4f}")
        return metrics

    def _print(self, msg: str) -> None:
        if self.dist.is_main:
            print(msg, flush=True)


def _worker_init(worker_id: int) -> None:
    # One torch thread per loader worker. OpenCV's pool is not touched here: the dataset already set it to one
    # thread in the parent before the fork (a forked worker that reconfigures it can deadlock).
    torch.set_num_threads(1)
    s = torch.initial_seed() % (2 ** 32)
    np.random.seed(s)
    random.seed(s)


def _tensorboard(log_dir: Path):
    """A TensorBoard ``SummaryWriter`` when the ``tensorboard`` package is installed, else ``None`` (CSV + PNG
    logging always happens)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed
        return None
    return SummaryWriter(str(log_dir))


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, dynamic_ncols=True, mininterval=1.0, leave=False)


# ================================================================================================================
# Data + evaluation glue (project pipeline)
# ================================================================================================================
def data_config_for_stage(cfg: TrainConfig, model_cfg, stage: str, method: str = "none"):
    """The pipeline's DataConfig for a stage: points only where a LiDAR teacher runs, depth targets only for
    the student's depth loss; the network input size and depth stride must match the model."""
    from labeldistill_training.data.config import load_data_config

    data = dict(cfg.data)
    if "dataroot" in data:
        data["dataroot"] = str(resolve_path(cfg, data["dataroot"]))
    dc = load_data_config(data)
    needs_points = stage == "teacher" or (stage == "student" and method != "none")
    needs_depth = stage == "student" and cfg.student.depth_loss_weight > 0
    dc = dc.replace(load_points=needs_points, depth=_replace(dc.depth, enabled=needs_depth))
    if tuple(dc.image_aug.final_dim) != tuple(model_cfg.input_size):
        raise ValueError(f"data.image_aug.final_dim {list(dc.image_aug.final_dim)} != the model's input_size "
                         f"{list(model_cfg.input_size)}")
    if needs_depth and dc.depth.stride != model_cfg.feature_stride:
        raise ValueError(f"data.depth.stride {dc.depth.stride} != the model's feature stride {model_cfg.feature_stride}")
    if len(dc.prev_key_offsets) != model_cfg.temporal.num_prev_frames:
        raise ValueError(f"data.prev_key_offsets has {len(dc.prev_key_offsets)} frames, the model uses "
                         f"temporal.num_prev_frames = {model_cfg.temporal.num_prev_frames}")
    _check_prev_offsets(key_offsets_to_seconds(dc.prev_key_offsets), model_cfg)
    return dc


def key_offsets_to_seconds(prev_key_offsets) -> tuple[float, ...]:
    """The data's ``prev_key_offsets`` (negative key-frame offsets, e.g. ``(-2, -4)``) -> seconds before the current
    frame, the model's ``temporal.prev_offsets_s`` (e.g. ``(1.0, 2.0)``): nuScenes key frames are
    ``KEY_FRAME_INTERVAL_S`` = 0.5 s apart, so offset k is ``-k * 0.5`` s."""
    from labeldistill_ros.model.config import KEY_FRAME_INTERVAL_S

    return tuple(-int(k) * KEY_FRAME_INTERVAL_S for k in prev_key_offsets)


def _check_prev_offsets(data_s: tuple[float, ...], model_cfg) -> None:
    stated = tuple(model_cfg.temporal.prev_offsets_s)
    if stated and (len(stated) != len(data_s) or any(abs(a - b) > 1e-6 for a, b in zip(stated, data_s))):
        raise ValueError(f"the model config's temporal.prev_offsets_s {list(stated)} s differ from the data's "
                         f"prev_key_offsets, which give {list(data_s)} s (key offset k -> -k * 0.5 s): make them "
                         f"agree, or remove temporal.prev_offsets_s from the model YAML (the trainer writes them "
                         f"from the data config)")


def with_data_prev_offsets(cfg: TrainConfig, model_cfg):
    """``model_cfg`` with ``temporal.prev_offsets_s`` written from the data config's ``prev_key_offsets`` (so the
    student, its checkpoints and the node's frame buffer know how far back each previous frame lies). A model
    YAML that states other offsets, or a different number of previous frames, is an error. Unchanged when the
    training config has no ``data`` section (custom dataset factories)."""
    from labeldistill_ros.model.config import model_config_from_dict, model_config_to_dict
    from labeldistill_training.data.config import load_data_config

    if not cfg.data:
        return model_cfg
    keys = load_data_config({"dataroot": ".", **cfg.data}).prev_key_offsets
    T = model_cfg.temporal.num_prev_frames
    if len(keys) != T:
        raise ValueError(f"data.prev_key_offsets has {len(keys)} frames ({list(keys)}), the model uses "
                         f"temporal.num_prev_frames = {T}: make them agree")
    offsets = key_offsets_to_seconds(keys)
    _check_prev_offsets(offsets, model_cfg)
    if any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"data.prev_key_offsets {list(keys)} must go back in time, most recent first "
                         f"(e.g. {sorted(keys, reverse=True)}): the model's previous frames are ordered that way")
    new = _replace(model_cfg, temporal=_replace(model_cfg.temporal, prev_offsets_s=offsets))
    return model_config_from_dict(model_config_to_dict(new), source="model config with the data's prev offsets")


def with_data_image_transform(cfg: TrainConfig, model_cfg):
    """``model_cfg`` with its image transform set to the data config's evaluation transform (test resize, the
    mean of ``bot_pct_lim``, normalisation): what every checkpoint then carries to the node, which runs exactly
    that transform. A model YAML that states another non-default transform is an error."""
    from labeldistill_ros.model.image_transform import ImageTransformConfig
    from labeldistill_training.data.config import load_data_config

    if not cfg.data:
        return model_cfg
    tc = load_data_config({"dataroot": ".", **cfg.data}).image_transform_config()
    if model_cfg.image not in (ImageTransformConfig(), tc):
        raise ValueError(f"the model config's image transform {model_cfg.image} differs from the data config's "
                         f"evaluation transform {tc}: remove 'image' from the model YAML (the trainer sets it "
                         f"from data.image_aug)")
    return _replace(model_cfg, image=tc)


def _replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


_DATASETS: dict = {}


def pipeline_dataset(cfg: TrainConfig, model_cfg, split: str, stage: str):
    """:class:`labeldistill_training.data.dataset.NuScenesDataset` of ``split`` for ``stage`` (cached)."""
    from labeldistill_training.data.dataset import NuScenesDataset

    dc = data_config_for_stage(cfg, model_cfg, stage, cfg.distill.method)
    key = (repr(dc), split, cfg.trainer.seed)
    if key not in _DATASETS:
        _DATASETS[key] = NuScenesDataset.from_config(dc, split, seed=cfg.trainer.seed)
    return _DATASETS[key]


def default_datasets():
    """``(dataset_factory, collate_fn)`` backed by :mod:`labeldistill_training.data`."""
    from labeldistill_training.data.collate import collate_batch

    return pipeline_dataset, collate_batch


def run_detection_eval(cfg: TrainConfig, model_cfg, preds: list[dict], out_dir: Path) -> dict:
    """Detections (key ego frame) -> nuScenes results (global) -> nuscenes-devkit DetectionEval on the val split."""
    from labeldistill_training.data.config import load_data_config
    from labeldistill_training.data.infos import load_nuscenes
    from labeldistill_training.eval.evaluate import evaluate_results
    from labeldistill_training.eval.results import detections_to_results

    data = dict(cfg.data)
    data["dataroot"] = str(resolve_path(cfg, data["dataroot"]))
    dc = load_data_config(data)
    dets = [{"sample_token": p["sample_token"], "boxes": p["boxes"].numpy(), "scores": p["scores"].numpy(),
             "labels": p["labels"].numpy(), "ego2global": p["ego2global"]} for p in preds]
    results = detections_to_results(dets, classes=model_cfg.class_names)
    nusc = load_nuscenes(dc.dataroot, dc.version)
    res = evaluate_results(results, nusc, dc.val_split, out_dir, validate=True)
    return {"mAP": res.mAP, "NDS": res.NDS, **{k: v for k, v in res.tp_errors.items()},
            "class_ap": res.class_ap, "num_samples": res.num_samples,
            "num_samples_without_results": res.num_samples_without_results,
            "per_class_max_recall": per_class_max_recall(Path(out_dir) / "metrics_details.json")}


MIN_RECALL = 0.1
"""nuScenes' AP ignores the PR curve below 10 % recall (``detection_cvpr_2019``: ``min_recall`` 0.1): a class
whose detections never reach it scores AP 0 whatever their precision."""


def per_class_max_recall(metrics_details: Path, dist_th: float = 2.0) -> dict:
    """Per class, the highest recall its PR curve reaches at the ``dist_th`` metre matching threshold, from the
    devkit's ``metrics_details.json`` (``DetectionMetricData``: recall on a 101-point grid, confidence 0 past the
    last detection, the devkit's own ``max_recall``). Empty when the file is missing."""
    try:
        details = json.loads(Path(metrics_details).read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for key, md in details.items():
        cls, _, th = key.rpartition(":")
        if abs(float(th) - dist_th) > 1e-9:
            continue
        conf = np.asarray(md["confidence"], dtype=float)
        nz = np.nonzero(conf)[0]
        out[cls] = float(md["recall"][int(nz[-1])]) if len(nz) else 0.0
    return out
