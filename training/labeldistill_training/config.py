"""Typed training configuration (``config/train/*.yaml``), validated at load.

One YAML file describes all three stages (``teacher``, ``label_encoder``, ``student``) of one experiment; the
stage to run is chosen on the command line. Loading uses ``yaml.safe_load`` and checks every key: unknown keys
(with a did-you-mean), wrong types and out-of-range values raise :class:`TrainConfigError` naming the key path,
e.g. ``config/train/x.yaml: 'stages.student.lr' must be a number, got 'fast'``.

The ``data:`` section is the pipeline's typed :class:`~labeldistill_training.data.config.DataConfig`, checked
here like every other section (``'data.depth.stride' must be >= 1 ...``); whether it fits the model (input size,
depth stride, previous frames) is checked when the :class:`~labeldistill_training.trainer.Trainer` is created,
before any network is built or checkpoint read. No ``data:`` section (null) = a custom dataset factory.

Paths inside the file (``model_config``, ``data.dataroot``, ``trainer.work_dir``, checkpoints) are resolved
relative to the current directory when they exist there, otherwise relative to the YAML file's directory's
repository root (the parent of ``config/``).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from labeldistill_ros.typed_config import build, read_yaml, to_plain
from labeldistill_training.data.config import DataConfig, DataConfigError

METHODS = ("none", "labeldistill", "unidistill", "cmkd", "stereodistill")
STAGES = ("teacher", "label_encoder", "student")


class TrainConfigError(ValueError):
    """A training configuration is invalid; the message names the offending key."""


@dataclass
class LoaderConfig:
    """Batching. ``batch_size`` is per process (total = batch_size x world size). ``max_train_samples`` /
    ``max_val_samples`` cap the splits (tests, benchmarks); null = all."""

    batch_size: int = 4
    num_workers: int = 4
    max_train_samples: Optional[int] = None
    max_val_samples: Optional[int] = None


@dataclass
class TeacherConfig:
    """LiDAR teacher (methods.md §2.2). Deviation (switch ``encoder``): plain-torch dynamic ``pillar`` or
    ``voxel`` encoder + dense strided convs instead of the 0.1 m spconv SparseEncoder."""

    encoder: str = "pillar"
    point_range: tuple[float, ...] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    pillar_size: tuple[float, ...] = (0.2, 0.2)
    point_features: int = 5
    pillar_channels: int = 64
    z_bins: int = 8
    downsample_channels: tuple[int, ...] = ()
    encoder_channels: int = 256
    backbone_channels: tuple[int, ...] = (128, 256)
    backbone_layers: tuple[int, ...] = (5, 5)
    neck_channels: tuple[int, ...] = (256, 256)
    head_share_channels: int = 64
    head_conv_channels: int = 64
    code_weights: tuple[float, ...] = (1.0,) * 8 + (0.2, 0.2)


@dataclass
class LabelEncoderConfig:
    """LabelDistill label encoder (methods.md §2.3)."""

    hidden: int = 256
    footprint_scale: float = 0.5
    code_weights: tuple[float, ...] = (1.0,) * 8 + (0.5, 0.5)


@dataclass
class StudentConfig:
    """Camera student training losses. ``code_weights`` (4key: all 1.0; BEVDepth base: vel 0.5).

    ``backbone_lr_mult``: lr multiplier of the image backbone, image neck, depth net and view transform (the
    reference's parameters named ``backbone``: the whole LSS), 0.5.
    ``pretrained_backbone``: optional path to a torchvision ResNet ``state_dict`` file of the student's depth
    (``torch.save``; a plain state_dict or a dict holding it under ``state_dict``), loaded into the image backbone
    when the student stage builds the model; ``fc.*`` is ignored, every other key must match. ``stages.student.
    init_checkpoint`` and a resumed ``last.pt`` are loaded after it and win. The reference (LabelDistill / BEVDepth)
    starts the R50 from torchvision's ImageNet weights (``ResNet50_Weights.IMAGENET1K_V1``, file
    ``resnet50-0676ba61.pth``; V2 is ``resnet50-11ad3fa6.pth``); null = random init (the default; training a
    depth-50 student this way warns). Only the camera student is initialised: the LiDAR teacher has no image
    backbone."""

    code_weights: tuple[float, ...] = (1.0,) * 10
    depth_loss_weight: float = 3.0
    backbone_lr_mult: float = 0.5
    pretrained_backbone: Optional[str] = None


@dataclass
class LabelDistillConfig:
    """methods.md §2.5-2.6. ``partition``: channel shares of the label and LiDAR parts (thirds)."""

    lidar_feat_weight: float = 0.3
    label_feat_weight: float = 0.3
    response_weight: float = 1.0
    response_code_weights: tuple[float, ...] = (1.0,) * 10
    response_hm_mode: str = "literal"
    partition: tuple[float, ...] = (1 / 3, 1 / 3)


@dataclass
class UniDistillConfig:
    """methods.md §3.3-3.4 (LiDAR -> camera weights: feature 100, relation 40, response 10, teacher T = 2).

    Where this project deviates from the reference, a switch (reference value in brackets):

    * ``transpose_bug`` [reference: on, a bug]: sample the keypoints at the swapped grid_sample axes of the
      reference (its issue #7). Default off.
    * ``adaptor`` [reference: false]: a 1x1 conv adapts the student's BEV input channels to the teacher's encoder
      channels for the low-level feature loss. The reference has none (its camera and LiDAR encoders both output
      256 channels by construction); here the student's BEV input (e.g. 750 = 150 x 5 frames for the R50 student)
      rarely matches the teacher encoder (256), so the default is true. With false the channel counts must be
      equal, else building the distiller raises an error naming both.
    * ``grad_clip`` [reference: 0.1]: when set, replaces ``stages.student.grad_clip`` for this method. Default
      null = the student stage's clip (5.0 in the LabelDistill schedule) shared by every method, so that a
      method comparison differs only in the distillation losses; 0.1 belongs to UniDistill's own schedule (lr
      2e-4, 20 epochs, uncertainty-weighted IoU-aware head) and, with AdamW, clips nearly every step here.
    * ``iou_channel`` [reference: on]: the response loss's regression term includes the IoU-aware channel
      (reference: 6 tasks x [reg 2, height 1, dim 3, rot 2, vel 2, iou 1] = 66 channels averaged). Neither
      head here has an IoU branch, so the distiller carries one for the student (conv3x3-BN-ReLU-conv3x3 per
      task on the head input, the reference's SeparateHead ``iou`` branch), trained as the reference does with
      the IoU-aware L1 loss (target ``2 * (IoU_bev(decoded box, GT) - 0.5)`` at the GT centre cells; weight
      ``iou_aware_weight``, this project's choice: the reference weighs it with learned uncertainty weights);
      the teacher (a plain CenterPoint head) contributes its realised quality, ``2 * (IoU_bev(teacher box at the
      cell, the GT box of the cell) - 0.5)``, what a converged IoU-aware teacher branch predicts. Default on
      (reference); off = the 60 box channels only.
    """

    feature_weight: float = 100.0
    relation_weight: float = 40.0
    response_weight: float = 10.0
    teacher_temperature: float = 2.0
    transpose_bug: bool = False
    adaptor: bool = True
    grad_clip: Optional[float] = None
    iou_channel: bool = True
    iou_aware_weight: float = 1.0


@dataclass
class CMKDConfig:
    """methods.md §4.3 (CMKD-MV). ``unlabeled_fraction``: share of training samples whose labels are withheld
    (they train from the teacher alone). Deviation: a 1x1 conv adapts the student BEV input to the teacher's
    encoder channels; the reference QFL quirk (raw logits in the modulating factor) is off by default."""

    bev_weight: float = 50.0
    cls_weight: float = 0.2
    reg_weight: float = 50.0
    bev_mask: str = "none"
    qfl_raw_logit_quirk: bool = False
    reg_weight_mode: str = "sigmoid_sum_logits"
    unlabeled_fraction: float = 0.0


@dataclass
class StereoDistillConfig:
    """methods.md §5, reconstructed (no public code): all constants are this project's choices."""

    xgd_weight: float = 1.0
    cld_weight: float = 1.0
    feature_weight: float = 1.0
    iou_thresh: float = 0.7
    vel_thresh: float = 1.0
    temperature: float = 1.0


@dataclass
class DistillConfig:
    """``method``: none | labeldistill | unidistill | cmkd | stereodistill (the student stage only).
    ``kd_warmup_steps``: the weight of every distillation term ramps linearly from 1/N to 1 over the first N
    optimizer steps of the student stage (0 = off: the reference methods have no warm-up). A switch for short
    from-scratch budgets, where at initialisation the feature-imitation terms' gradients on the camera branch are
    larger than the detection loss's and nearly orthogonal to it (``bench/results/distill_probe.json``)."""

    method: str = "labeldistill"
    kd_warmup_steps: int = 0
    labeldistill: LabelDistillConfig = field(default_factory=LabelDistillConfig)
    unidistill: UniDistillConfig = field(default_factory=UniDistillConfig)
    cmkd: CMKDConfig = field(default_factory=CMKDConfig)
    stereodistill: StereoDistillConfig = field(default_factory=StereoDistillConfig)


@dataclass
class StageConfig:
    """Optimisation of one stage: AdamW(lr, weight_decay), MultiStepLR(milestones, gamma) stepped per epoch,
    ``lr`` applies at ``base_batch_size`` total batch and is scaled linearly with the real total batch
    (``lr * batch_size * world_size / base_batch_size``; null = no scaling, ``lr`` as given). The trainer prints
    the effective lr and the batch it was scaled from at the start of each stage. Reference student: AdamW 4e-4
    at 4 GPUs x batch 4 = 16, backbone x0.5 (``student.backbone_lr_mult``). ``grad_clip``: max grad norm
    (null = off). ``amp``: fp16 autocast (with a gradient scaler) on CUDA. ``cpu_amp``: bfloat16 autocast on the
    CPU (no scaler needed: bf16 has fp32's range; the weights, optimizer state and EMA stay fp32): ``true``,
    ``false`` or ``auto`` (on where the CPU has native bf16). It pays only on CPUs with native bf16 (AVX512-BF16
    or AMX: 2.0x on a ResNet-18 forward+backward, 1.4x on a whole student step on a Zen 4); elsewhere it is
    emulated and slower (a teacher step 9.0 s against 3.5 s in fp32 on an EPYC without AVX-512), so it is off by default
    and ``auto`` in the CPU configs.
    ``max_iters_per_epoch``: cap for tests and benchmarks (null = the whole split).
    ``init_checkpoint``: optional weights to start from; ``teacher_checkpoint`` / ``label_encoder_checkpoint``:
    the frozen inputs of later stages (default: the earlier stages' ``final.pt`` under ``trainer.work_dir``)."""

    epochs: int = 24
    lr: float = 2e-4
    weight_decay: float = 1e-7
    milestones: tuple[int, ...] = (19, 23)
    gamma: float = 0.1
    base_batch_size: Optional[int] = None
    grad_clip: Optional[float] = 5.0
    amp: bool = True
    cpu_amp: Union[bool, str] = False  # true | false | auto
    ema: bool = True
    max_iters_per_epoch: Optional[int] = None
    init_checkpoint: Optional[str] = None
    teacher_checkpoint: Optional[str] = None
    label_encoder_checkpoint: Optional[str] = None


def _default_stages() -> dict:
    return {
        "teacher": StageConfig(epochs=20, lr=1e-4, weight_decay=1e-2, milestones=(16, 19), grad_clip=35.0),
        "label_encoder": StageConfig(epochs=12, lr=1e-3, weight_decay=1e-7, milestones=(10, 11), grad_clip=None),
        "student": StageConfig(epochs=24, lr=4e-4, weight_decay=1e-2, milestones=(19, 23), grad_clip=5.0,
                               base_batch_size=16),
    }


@dataclass
class StagesConfig:
    teacher: StageConfig = field(default_factory=lambda: _default_stages()["teacher"])
    label_encoder: StageConfig = field(default_factory=lambda: _default_stages()["label_encoder"])
    student: StageConfig = field(default_factory=lambda: _default_stages()["student"])


@dataclass
class TrainerConfig:
    """``work_dir``: outputs (``<work_dir>/<stage>/``). ``ema_decay`` 0.999 with BEVDepth's ramp
    ``decay * (1 - exp(-updates / ema_ramp))``. ``frozen_bn``: ``eval`` (recommended, running statistics) or
    ``train`` (what the reference most likely did: batch statistics, no parameter updates). ``eval_at_end``:
    DetectionEval on the val split after the last epoch. ``progress``: tqdm bars. ``keep_checkpoints``: how many
    per-epoch weight files (``epoch_NNN.pt``) to keep, the newest (``last.pt`` and the final weights are always
    kept; 0 = none). ``max_steps``: stop cleanly after this many optimizer steps in all (counted from the start of
    the stage, across resumes), writing a resumable ``last.pt`` at that step; a later run with a larger or no
    ``max_steps`` continues from there, exactly as if never stopped (null = train all epochs)."""

    work_dir: str = "work_dirs/labeldistill"
    seed: int = 0
    ema_decay: float = 0.999
    ema_ramp: float = 2000.0
    frozen_bn: str = "eval"
    log_interval: int = 10
    eval_at_end: bool = True
    progress: bool = True
    deterministic: bool = False
    keep_checkpoints: int = 3
    max_steps: Optional[int] = None


@dataclass
class TrainConfig:
    model_config: str
    data: Optional[DataConfig] = None
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    label_encoder: LabelEncoderConfig = field(default_factory=LabelEncoderConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    source: str = "<dict>"  # set by the loader (not a YAML key)

    def stage(self, name: str) -> StageConfig:
        if name not in STAGES:
            raise TrainConfigError(f"unknown stage {name!r}; use one of {', '.join(STAGES)}")
        return getattr(self.stages, name)


# ------------------------------------------------------------------------------------------------------ loading
def load_train_config(path: str | Path, overrides: Optional[dict] = None) -> TrainConfig:
    """Read, merge ``overrides`` (nested dict, e.g. ``{"distill": {"method": "cmkd"}}``) and validate."""
    data = read_yaml(path, TrainConfigError, "training config")
    if overrides and isinstance(data, dict):
        data = merge(data, overrides)
    return train_config_from_dict(data, source=str(path))


def merge(base: dict, over: dict) -> dict:
    """Recursive dict merge (``over`` wins); returns a new dict."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train_config_from_dict(data: Any, source: str = "<dict>") -> TrainConfig:
    if not isinstance(data, dict):
        raise TrainConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k != "source"}
    stages = data.get("stages")
    if isinstance(stages, dict):  # a partial stage section overrides that stage's reference defaults
        defaults = _default_stages()
        data["stages"] = {k: (merge(dataclasses.asdict(defaults[k]), v) if k in defaults and isinstance(v, dict)
                              else v) for k, v in stages.items()}
    if data.get("data") == {}:  # an empty section (older checkpoints' train_config): no data pipeline
        data["data"] = None
    try:
        cfg = build(TrainConfig, data, source=source, error=TrainConfigError, skip=("source",))
    except DataConfigError as e:  # the data section's own range checks (DataConfig.__post_init__)
        if e.key is None:
            raise TrainConfigError(f"{source}: 'data' section: {e}") from e
        raise TrainConfigError(f"{source}: 'data.{e.key}' {e.problem}") from e
    cfg.source = source
    _validate(cfg, source)
    return cfg


def config_to_dict(cfg) -> dict:
    """Plain data (lists, dicts) that :func:`train_config_from_dict` reads back to an equal config."""
    return to_plain(cfg, drop=("source",))


def resolve_path(cfg: TrainConfig, p: str | None) -> Path | None:
    """Resolve a path from the config: as given if it exists (or is absolute), else relative to the repository
    root that holds the config file (``<root>/config/train/x.yaml``), else relative to the current directory."""
    if p is None:
        return None
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists():
        return path
    src = Path(cfg.source)
    if src.parent.name == "train" and src.parent.parent.name == "config":
        cand = src.parent.parent.parent / path
        if cand.exists():
            return cand
    return path


def _check(ok: bool, source: str, msg: str) -> None:
    if not ok:
        raise TrainConfigError(f"{source}: {msg}")


def _validate(cfg: TrainConfig, src: str) -> None:
    ld = cfg.loader
    _check(ld.batch_size >= 1, src, f"'loader.batch_size' must be >= 1, got {ld.batch_size}")
    _check(ld.num_workers >= 0, src, f"'loader.num_workers' must be >= 0, got {ld.num_workers}")
    for k in ("max_train_samples", "max_val_samples"):
        _check(getattr(ld, k) is None or getattr(ld, k) >= 1, src, f"'loader.{k}' must be >= 1 or null")
    t = cfg.teacher
    _check(t.encoder in ("pillar", "voxel"), src, f"'teacher.encoder' must be pillar or voxel, got {t.encoder!r}")
    _check(len(t.point_range) == 6 and all(t.point_range[i] < t.point_range[i + 3] for i in range(3)), src,
           f"'teacher.point_range' must be [xmin, ymin, zmin, xmax, ymax, zmax], got {list(t.point_range)}")
    _check(len(t.pillar_size) == 2 and min(t.pillar_size) > 0, src,
           f"'teacher.pillar_size' must be [dx, dy] > 0 metres, got {list(t.pillar_size)}")
    _check(len(t.backbone_channels) == 2 and len(t.backbone_layers) == 2 and len(t.neck_channels) == 2, src,
           "'teacher.backbone_channels', 'teacher.backbone_layers' and 'teacher.neck_channels' need 2 entries")
    for name in ("code_weights",):
        for sec, obj in (("teacher", t), ("label_encoder", cfg.label_encoder), ("student", cfg.student)):
            _check(len(getattr(obj, name)) == 10, src, f"'{sec}.{name}' needs 10 values, got {len(getattr(obj, name))}")
    _check(len(cfg.distill.labeldistill.response_code_weights) == 10, src,
           "'distill.labeldistill.response_code_weights' needs 10 values")
    _check(0 < cfg.label_encoder.footprint_scale <= 1, src, "'label_encoder.footprint_scale' must be in (0, 1]")
    m = cfg.distill.method
    close = difflib.get_close_matches(m, METHODS, n=1)
    _check(cfg.distill.kd_warmup_steps >= 0, src, "'distill.kd_warmup_steps' must be >= 0 (0 = no warm-up)")
    _check(m in METHODS, src, f"'distill.method' = {m!r} is not one of {', '.join(METHODS)}"
           + (f"; did you mean {close[0]!r}?" if close else ""))
    ld = cfg.distill.labeldistill
    _check(len(ld.partition) == 2 and all(0 < p < 1 for p in ld.partition) and sum(ld.partition) < 1, src,
           f"'distill.labeldistill.partition' must be two shares in (0, 1) summing below 1, got {list(ld.partition)}")
    _check(ld.response_hm_mode in ("literal", "teacher_pos"), src,
           "'distill.labeldistill.response_hm_mode' must be literal or teacher_pos")
    ck = cfg.distill.cmkd
    _check(ck.bev_mask in ("none", "nonzero", "gt"), src, "'distill.cmkd.bev_mask' must be none, nonzero or gt")
    _check(ck.reg_weight_mode in ("sigmoid_sum_logits", "sum_probs"), src,
           "'distill.cmkd.reg_weight_mode' must be sigmoid_sum_logits or sum_probs")
    _check(0.0 <= ck.unlabeled_fraction < 1.0, src, "'distill.cmkd.unlabeled_fraction' must be in [0, 1)")
    _check(ck.unlabeled_fraction == 0.0 or m == "cmkd", src,
           "'distill.cmkd.unlabeled_fraction' > 0 needs distill.method: cmkd (the other methods need labels)")
    for name in STAGES:
        s = cfg.stage(name)
        k = f"stages.{name}"
        _check(s.epochs >= 1, src, f"'{k}.epochs' must be >= 1, got {s.epochs}")
        _check(s.lr > 0, src, f"'{k}.lr' must be > 0, got {s.lr}")
        _check(s.weight_decay >= 0, src, f"'{k}.weight_decay' must be >= 0")
        _check(list(s.milestones) == sorted(s.milestones) and all(m >= 1 for m in s.milestones), src,
               f"'{k}.milestones' must be increasing epoch numbers >= 1, got {list(s.milestones)}")
        _check(s.grad_clip is None or s.grad_clip > 0, src, f"'{k}.grad_clip' must be > 0 or null")
        _check(s.max_iters_per_epoch is None or s.max_iters_per_epoch >= 1, src,
               f"'{k}.max_iters_per_epoch' must be >= 1 or null")
        _check(s.base_batch_size is None or s.base_batch_size >= 1, src, f"'{k}.base_batch_size' must be >= 1")
        _check(isinstance(s.cpu_amp, bool) or s.cpu_amp == "auto", src,
               f"'{k}.cpu_amp' must be true, false or auto, got {s.cpu_amp!r}")
    tr = cfg.trainer
    _check(0 <= tr.ema_decay < 1, src, f"'trainer.ema_decay' must be in [0, 1), got {tr.ema_decay}")
    _check(tr.ema_ramp >= 0, src, "'trainer.ema_ramp' must be >= 0")
    _check(tr.frozen_bn in ("eval", "train"), src, f"'trainer.frozen_bn' must be eval or train, got {tr.frozen_bn!r}")
    _check(tr.log_interval >= 1, src, "'trainer.log_interval' must be >= 1")
    _check(tr.keep_checkpoints >= 0, src, f"'trainer.keep_checkpoints' must be >= 0, got {tr.keep_checkpoints}")
    _check(tr.max_steps is None or tr.max_steps >= 1, src,
           f"'trainer.max_steps' must be >= 1 optimizer steps or null (train all epochs), got {tr.max_steps}")
    ud = cfg.distill.unidistill
    _check(ud.grad_clip is None or ud.grad_clip > 0, src, "'distill.unidistill.grad_clip' must be > 0 or null")
    _check(ud.iou_aware_weight >= 0, src, "'distill.unidistill.iou_aware_weight' must be >= 0")
    pb = cfg.student.pretrained_backbone
    _check(pb is None or (isinstance(pb, str) and pb.strip() != ""), src,
           "'student.pretrained_backbone' must be a path to a torchvision ResNet state_dict file or null")
