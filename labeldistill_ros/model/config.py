"""Typed, validated model configuration (``config/model/*.yaml``).

A YAML file maps one-to-one onto :class:`ModelConfig` and its nested dataclasses. Loading checks every key
(unknown keys, wrong types, out-of-range values, inconsistent shapes) and raises :class:`ConfigError` with the
offending key path and how to fix it, before any network is built.

    cfg = load_model_config("config/model/r18_128x352_cpu.yaml")
    model = StudentDetector.from_config(cfg)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..geometry import CLASS_NAMES, TASK_GROUPS
from ..typed_config import build, read_yaml, to_plain
from .image_transform import ImageTransformConfig

RESNET_DEPTHS = (18, 34, 50)


class ConfigError(ValueError):
    """A model configuration is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class BackboneConfig:
    """Image backbone: torchvision-style ResNet, all four stages out (strides 4, 8, 16, 32)."""

    depth: int = 50


@dataclass(frozen=True)
class ImageNeckConfig:
    """SECONDFPN over the four backbone stages: level i is (de)convolved by ``upsample_strides[i]`` (< 1 means a
    strided convolution) to ``out_channels[i]``; all levels must land on one stride and are concatenated."""

    upsample_strides: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    out_channels: tuple[int, ...] = (128, 128, 128, 128)


@dataclass(frozen=True)
class DepthNetConfig:
    """Camera-aware DepthNet. ``depth_bound`` = (min, max, step) in metres of the bin centres' grid
    ``arange(min, max, step)``; ``num_bins`` must equal its length."""

    mid_channels: int = 512
    context_channels: int = 150
    depth_bound: tuple[float, float, float] = (2.0, 58.0, 0.5)
    num_bins: int = 112
    num_res_blocks: int = 3
    use_aspp: bool = True
    use_dcn: bool = True


@dataclass(frozen=True)
class BEVGridConfig:
    """The BEV grid, the one description of it used by the student, the box coder, the decoder, the training
    targets and losses, the teacher and the label encoder.

    ``x``, ``y``, ``z``: (min, max, step) in metres per axis of the ego frame (base_link: x forward, y left,
    z up); z must be a single bin. Cell ``(ix, iy)`` covers ``[x_min + ix * step_x, x_min + (ix + 1) * step_x)``
    and likewise in y; BEV maps are ``(..., ny, nx)``: row = y index, column = x index.
    Reference: 128 x 128 cells of 0.8 m from (-51.2, -51.2).
    """

    x: tuple[float, float, float] = (-51.2, 51.2, 0.8)
    y: tuple[float, float, float] = (-51.2, 51.2, 0.8)
    z: tuple[float, float, float] = (-5.0, 3.0, 8.0)

    @property
    def nx(self) -> int:
        """Cells along x (columns of a BEV map)."""
        return round((self.x[1] - self.x[0]) / self.x[2])

    @property
    def ny(self) -> int:
        """Cells along y (rows of a BEV map)."""
        return round((self.y[1] - self.y[0]) / self.y[2])

    @property
    def x_min(self) -> float:
        """Metres: the x of the grid's first column's lower edge."""
        return float(self.x[0])

    @property
    def y_min(self) -> float:
        """Metres: the y of the grid's first row's lower edge."""
        return float(self.y[0])

    @property
    def cell(self) -> float:
        """Edge of a square cell in metres. The training code (Gaussian radii, label rasterisation, keypoint
        sampling, teacher pillars) works in square cells; a grid whose x and y steps differ raises here."""
        if not math.isclose(self.x[2], self.y[2], rel_tol=1e-9):
            raise ValueError(f"bev_grid: x step {self.x[2]:g} m and y step {self.y[2]:g} m differ; the training code "
                             "needs square cells: give both axes the same step")
        return float(self.x[2])


KEY_FRAME_INTERVAL_S = 0.5
"""Seconds between two nuScenes key frames (the default spacing of the previous frames)."""


@dataclass(frozen=True)
class TemporalConfig:
    """Previous frames whose BEV features are warped into the current ego frame and concatenated.

    Attributes:
        num_prev_frames: T, previous frames the model takes (0: single-frame model).
        prev_offsets_s: seconds before the current frame of each previous frame, most recent first, length T
            (the trainer writes them from the data's ``prev_key_offsets``: key offset k -> ``-k * 0.5`` s).
            Empty (checkpoints from before this field): ``0.5 * (i + 1)`` for frame i, see
            :attr:`effective_offsets_s`.
        max_offset_error_s: largest ``|buffered frame time - (current time - offset)|`` the runtime accepts for a
            previous frame; beyond it that slot falls back to the current frame with the identity motion (what
            training does at the start of a scene).
    """

    num_prev_frames: int = 0
    prev_offsets_s: tuple[float, ...] = ()
    max_offset_error_s: float = 0.25

    @property
    def effective_offsets_s(self) -> tuple[float, ...]:
        """``(T,)`` seconds before the current frame of each previous frame, most recent first: the stated
        ``prev_offsets_s``, or ``0.5 * (i + 1)`` when none are stated."""
        if self.prev_offsets_s:
            return tuple(float(o) for o in self.prev_offsets_s)
        return tuple(KEY_FRAME_INTERVAL_S * (i + 1) for i in range(self.num_prev_frames))


@dataclass(frozen=True)
class BEVTrunkConfig:
    """ResNet-style BEV trunk (stem 7x7 stride 2, no max-pool, BasicBlock stages) + SECONDFPN neck that brings
    [input, stage outputs] back to the input resolution with ``neck_channels`` each."""

    base_channels: int = 300
    num_blocks: tuple[int, ...] = (2, 2, 2)
    strides: tuple[int, ...] = (1, 2, 2)
    neck_channels: int = 64


@dataclass(frozen=True)
class HeadConfig:
    """CenterPoint head: shared 3x3 conv, then one SeparateHead per task group."""

    share_conv_channels: int = 64
    head_conv_channels: int = 64
    heatmap_init_bias: float = -2.19
    task_groups: tuple[tuple[str, ...], ...] = TASK_GROUPS


@dataclass(frozen=True)
class DecodeConfig:
    """Box decoding. ``nms_radius``: per class (``class_names`` order), metres between centres below which the
    lower-scored box of the same class is suppressed (0 disables NMS for that class). ``velocity``: where a box's
    vx, vy come from: ``model`` (the head's regression) or ``tracked`` (the box's motion across consecutive sets,
    :mod:`labeldistill_ros.tracking`, in the node's fixed frame and in the trainer's evaluation alike; a box
    that starts a track, or a set without an ego pose, keeps the head's)."""

    score_threshold: float = 0.1
    max_candidates_per_task: int = 500
    post_center_range: tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    nms_radius: tuple[float, ...] = (2.0, 3.46, 3.46, 3.16, 3.16, 1.0, 0.92, 0.92, 0.42, 0.42)
    max_detections: int = 500
    velocity: str = "model"


@dataclass(frozen=True)
class ModelConfig:
    """The whole student. ``input_size`` = (height, width) of the network input images in pixels; ``image`` =
    how a camera image becomes that input (:mod:`.image_transform`; the trainer writes the data config's
    evaluation transform here, so the checkpoint carries it to the node)."""

    name: str
    input_size: tuple[int, int]
    image: ImageTransformConfig = field(default_factory=ImageTransformConfig)
    class_names: tuple[str, ...] = CLASS_NAMES
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    image_neck: ImageNeckConfig = field(default_factory=ImageNeckConfig)
    depth_net: DepthNetConfig = field(default_factory=DepthNetConfig)
    bev_grid: BEVGridConfig = field(default_factory=BEVGridConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    bev_trunk: BEVTrunkConfig = field(default_factory=BEVTrunkConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    @property
    def feature_stride(self) -> int:
        """Stride of the image features that are lifted (16 for the default neck)."""
        return round(4 / self.image_neck.upsample_strides[0])

    @property
    def feature_size(self) -> tuple[int, int]:
        """(h, w) of the lifted image features."""
        return self.input_size[0] // self.feature_stride, self.input_size[1] // self.feature_stride

    @property
    def bev_channels(self) -> int:
        """Channels of the pooled BEV input to the trunk: context channels x (1 + previous frames)."""
        return self.depth_net.context_channels * (1 + self.temporal.num_prev_frames)


# ----------------------------------------------------------------------------------------------------- loading
def load_model_config(path: str | Path) -> ModelConfig:
    """Read and validate a model YAML file (``yaml.safe_load``)."""
    return model_config_from_dict(read_yaml(path, ConfigError, "model config"), source=str(path))


def model_config_from_dict(data: Any, source: str = "<dict>") -> ModelConfig:
    """Build and validate a :class:`ModelConfig` from plain data (YAML or a checkpoint's stored dict)."""
    cfg = build(ModelConfig, data, source=source, error=ConfigError)
    _validate(cfg, source)
    return cfg


def model_config_to_dict(cfg: ModelConfig) -> dict:
    """Plain dict (lists instead of tuples) that :func:`model_config_from_dict` reads back to an equal config."""
    return to_plain(cfg)


# -------------------------------------------------------------------------------------------------- validation
def _check(ok: bool, source: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: {msg}")


def _is_multiple(span: float, step: float) -> bool:
    n = span / step
    return abs(n - round(n)) < 1e-6 * max(1.0, abs(n))


def _validate(cfg: ModelConfig, src: str) -> None:
    h, w = cfg.input_size
    _check(h > 0 and w > 0 and h % 32 == 0 and w % 32 == 0, src,
           f"input_size = {list(cfg.input_size)} must be positive multiples of 32 (the backbone's stride), "
           f"e.g. [256, 704] or [128, 352]")
    for problem in cfg.image.problems():
        _check(False, src, problem)
    _check(len(cfg.class_names) > 0 and len(set(cfg.class_names)) == len(cfg.class_names), src,
           f"class_names must be non-empty and unique, got {list(cfg.class_names)}")
    _check(cfg.backbone.depth in RESNET_DEPTHS, src,
           f"backbone.depth = {cfg.backbone.depth} is not supported; use one of {list(RESNET_DEPTHS)}")

    neck = cfg.image_neck
    _check(len(neck.upsample_strides) == 4 and len(neck.out_channels) == 4, src,
           "image_neck.upsample_strides and image_neck.out_channels need exactly 4 entries (one per ResNet stage)")
    _check(all(s > 0 for s in neck.upsample_strides), src, "image_neck.upsample_strides must be > 0")
    strides = [4 * 2**i / s for i, s in enumerate(neck.upsample_strides)]
    _check(all(abs(s - strides[0]) < 1e-6 for s in strides) and abs(strides[0] - round(strides[0])) < 1e-6, src,
           f"image_neck.upsample_strides {list(neck.upsample_strides)} bring the stages (strides 4, 8, 16, 32) to "
           f"different strides {strides}; use e.g. [0.25, 0.5, 1, 2] (all at 16)")
    for i, s in enumerate(neck.upsample_strides):
        _check(s >= 1 and abs(s - round(s)) < 1e-6 or s < 1 and abs(1 / s - round(1 / s)) < 1e-6, src,
               f"image_neck.upsample_strides[{i}] = {s} must be an integer or 1/integer")
    _check(all(c > 0 for c in neck.out_channels), src, "image_neck.out_channels must be > 0")
    stride = cfg.feature_stride
    _check(h % stride == 0 and w % stride == 0, src,
           f"input_size {list(cfg.input_size)} must be divisible by the feature stride {stride}")

    dn = cfg.depth_net
    for k in ("mid_channels", "context_channels", "num_bins"):
        _check(getattr(dn, k) > 0, src, f"depth_net.{k} must be > 0, got {getattr(dn, k)}")
    _check(not dn.use_dcn or dn.mid_channels % 4 == 0, src,
           f"depth_net.mid_channels = {dn.mid_channels} must be a multiple of 4 (the deformable conv has 4 groups) "
           f"or set depth_net.use_dcn: false")
    _check(dn.num_res_blocks >= 0, src, f"depth_net.num_res_blocks must be >= 0, got {dn.num_res_blocks}")
    dmin, dmax, dstep = dn.depth_bound
    _check(0 < dmin < dmax and dstep > 0, src,
           f"depth_net.depth_bound = {list(dn.depth_bound)} must be [min > 0, max > min, step > 0] in metres")
    _check(_is_multiple(dmax - dmin, dstep), src,
           f"depth_net.depth_bound: (max - min) = {dmax - dmin:g} m is not a multiple of step {dstep:g} m")
    n_bins = round((dmax - dmin) / dstep)
    _check(dn.num_bins == n_bins, src,
           f"depth_net.num_bins = {dn.num_bins} does not match depth_bound {list(dn.depth_bound)}, which gives "
           f"{n_bins} bins; set num_bins: {n_bins} or change depth_bound")

    grid, trunk = cfg.bev_grid, cfg.bev_trunk
    for axis in ("x", "y", "z"):
        lo, hi, step = getattr(grid, axis)
        _check(hi > lo and step > 0, src, f"bev_grid.{axis} = {[lo, hi, step]} must be [min, max > min, step > 0]")
        _check(_is_multiple(hi - lo, step), src,
               f"bev_grid.{axis}: span {hi - lo:g} m is not a multiple of the cell size {step:g} m")
    _check(round((grid.z[1] - grid.z[0]) / grid.z[2]) == 1, src,
           f"bev_grid.z = {list(grid.z)} must be a single bin: set its step to max - min = {grid.z[1] - grid.z[0]:g}")
    _check(len(trunk.num_blocks) == len(trunk.strides) and len(trunk.strides) >= 1, src,
           "bev_trunk.num_blocks and bev_trunk.strides need the same (>= 1) number of entries")
    _check(all(s in (1, 2) for s in trunk.strides) and all(b >= 1 for b in trunk.num_blocks), src,
           "bev_trunk.strides entries must be 1 or 2 and bev_trunk.num_blocks entries >= 1")
    total = 2 * math.prod(trunk.strides)
    _check(grid.nx % total == 0 and grid.ny % total == 0, src,
           f"the BEV grid is {grid.ny}x{grid.nx} cells but the trunk downsamples by {total} (stem 2 x strides "
           f"{list(trunk.strides)}): make the cell counts divisible by {total}")
    for k in ("base_channels", "neck_channels"):
        _check(getattr(trunk, k) > 0, src, f"bev_trunk.{k} must be > 0")
    _validate_temporal(cfg.temporal, src)

    head = cfg.head
    _check(head.share_conv_channels > 0 and head.head_conv_channels > 0, src, "head channel counts must be > 0")
    flat = [c for g in head.task_groups for c in g]
    _check(sorted(flat) == sorted(cfg.class_names) and len(flat) == len(set(flat)), src,
           f"head.task_groups {[list(g) for g in head.task_groups]} must use every class of class_names exactly "
           f"once ({list(cfg.class_names)})")
    _check(all(len(g) > 0 for g in head.task_groups), src, "head.task_groups must not contain an empty group")

    dec = cfg.decode
    _check(0.0 <= dec.score_threshold < 1.0, src, f"decode.score_threshold = {dec.score_threshold} must be in [0, 1)")
    _check(dec.max_candidates_per_task > 0 and dec.max_detections > 0, src,
           "decode.max_candidates_per_task and decode.max_detections must be > 0")
    pcr = dec.post_center_range
    _check(len(pcr) == 6 and all(pcr[i] < pcr[i + 3] for i in range(3)), src,
           f"decode.post_center_range = {list(pcr)} must be [xmin, ymin, zmin, xmax, ymax, zmax] with min < max")
    _check(len(dec.nms_radius) == len(cfg.class_names) and all(r >= 0 for r in dec.nms_radius), src,
           f"decode.nms_radius needs one radius >= 0 (metres) per class ({len(cfg.class_names)}), "
           f"got {len(dec.nms_radius)}")
    _check(dec.velocity in ("model", "tracked"), src, f"decode.velocity = {dec.velocity!r} must be model or tracked")


def _validate_temporal(tc: TemporalConfig, src: str) -> None:
    T = tc.num_prev_frames
    _check(0 <= T <= 8, src, f"temporal.num_prev_frames = {T} must be in [0, 8]")
    offs = list(tc.prev_offsets_s)
    if offs:
        _check(len(offs) == T, src,
               f"temporal.prev_offsets_s has {len(offs)} entries but temporal.num_prev_frames = {T}: give one offset "
               f"(seconds before the current frame, most recent first) per previous frame, e.g. "
               f"{[KEY_FRAME_INTERVAL_S * (i + 1) for i in range(T)]}, or leave it out")
        _check(all(math.isfinite(o) and o > 0 for o in offs), src,
               f"temporal.prev_offsets_s = {offs} must be > 0 (seconds before the current frame, e.g. 0.5 for the "
               f"previous nuScenes key frame)")
        _check(all(b > a for a, b in zip(offs, offs[1:])), src,
               f"temporal.prev_offsets_s = {offs} must be strictly increasing (most recent frame first), e.g. "
               f"{sorted(set(offs))}")
    err = tc.max_offset_error_s
    _check(math.isfinite(err) and err > 0, src,
           f"temporal.max_offset_error_s = {err} must be > 0 seconds (default 0.25)")
    if T:
        first = tc.effective_offsets_s[0]
        _check(err < first, src,
               f"temporal.max_offset_error_s = {err} s must be smaller than the most recent previous frame's offset "
               f"{first:g} s (otherwise the current frame could stand in for a previous one); e.g. {first / 2:g}")
