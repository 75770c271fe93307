"""Typed configuration of the nuScenes data pipeline, validated at load (YAML file or dict); also the ``data:``
section of a training config (:class:`labeldistill_training.config.TrainConfig`), whose errors then name
``data.<key>``.

Example YAML (every key optional except ``dataroot``)::

    dataroot: /data/nuscenes
    version: v1.0-mini
    train_split: mini_train
    val_split: mini_val
    prev_key_offsets: [-1]
    lidar_sweeps: 8
    image_aug: {final_dim: [256, 704], resize_lim: [0.88, 1.25]}
    bev_aug: {rot_lim: [-22.5, 22.5]}
    depth: {stride: 16}
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from labeldistill_ros.geometry import CLASS_NAMES
from labeldistill_ros.model.image_transform import ImageTransformConfig
from labeldistill_ros.typed_config import build, read_yaml

CAMERA_CHANNELS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
)
"""The six nuScenes camera channels, in the usual BEVDepth order (the default network order)."""


@dataclass(frozen=True)
class ImageAugConfig:
    """Image augmentation (BEVDepth ``ida``) and normalisation.

    Attributes:
        final_dim: network input (H, W) in pixels.
        resize_lim: training resize range, *relative* to the fit scale ``max(H / H_src, W / W_src)`` (so the same
            config works for 1600x900 and small synthetic images; BEVDepth's absolute (0.386, 0.55) on 1600x900
            with 256x704 is (0.88, 1.25)). Evaluation uses the fit scale times ``test_resize``.
        bot_pct_lim: fraction of the resized height cut at the bottom (training range; evaluation: its mean).
        rot_lim: training rotation range in degrees (counter-clockwise).
        rand_flip: random left-right flip in training (p = 0.5).
        test_resize: evaluation resize relative to the fit scale.
        enabled: apply random augmentation in training (False: training uses the evaluation transform).
        mean, std: per-channel normalisation in 0..255 units, RGB order (images are decoded to RGB).

    The deterministic part (``final_dim``, ``test_resize``, the mean of ``bot_pct_lim``, ``mean``, ``std``) is
    the model's image transform: :meth:`DataConfig.image_transform_config`, stored in the student's checkpoint.
    """

    final_dim: tuple[int, int] = (256, 704)
    resize_lim: tuple[float, float] = (0.88, 1.25)
    bot_pct_lim: tuple[float, float] = (0.0, 0.22)
    rot_lim: tuple[float, float] = (-5.4, 5.4)
    rand_flip: bool = True
    test_resize: float = 1.0
    enabled: bool = True
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def __post_init__(self) -> None:
        _check(self.final_dim[0] > 0 and self.final_dim[1] > 0, "image_aug.final_dim",
               "must be a positive [H, W] in pixels (the network input)")
        _check(0 < self.resize_lim[0] <= self.resize_lim[1], "image_aug.resize_lim", "must be [lo, hi] with 0 < lo <= hi")
        _check(0 <= self.bot_pct_lim[0] <= self.bot_pct_lim[1] < 1, "image_aug.bot_pct_lim",
               "must be [lo, hi] with 0 <= lo <= hi < 1")
        _check(self.rot_lim[0] <= self.rot_lim[1], "image_aug.rot_lim", "must be [lo, hi] degrees with lo <= hi")
        _check(self.test_resize > 0, "image_aug.test_resize", "must be > 0 (1.0 = the fit scale)")
        _check(all(s > 0 for s in self.std), "image_aug.std", "must be three values > 0")


@dataclass(frozen=True)
class BevAugConfig:
    """BEV augmentation (BEVDepth ``bda``), applied identically to boxes, points and camera geometry.

    Attributes:
        rot_lim: rotation range about +z in degrees.
        scale_lim: uniform scale range.
        flip_x_prob, flip_y_prob: probabilities of negating x / y.
        enabled: apply in training (evaluation always uses the identity).
    """

    rot_lim: tuple[float, float] = (-22.5, 22.5)
    scale_lim: tuple[float, float] = (0.95, 1.05)
    flip_x_prob: float = 0.5
    flip_y_prob: float = 0.5
    enabled: bool = True

    def __post_init__(self) -> None:
        _check(self.rot_lim[0] <= self.rot_lim[1], "bev_aug.rot_lim", "must be [lo, hi] degrees with lo <= hi")
        _check(0 < self.scale_lim[0] <= self.scale_lim[1], "bev_aug.scale_lim", "must be [lo, hi] with 0 < lo <= hi")
        _check(0 <= self.flip_x_prob <= 1, "bev_aug.flip_x_prob", "must be a probability in [0, 1]")
        _check(0 <= self.flip_y_prob <= 1, "bev_aug.flip_y_prob", "must be a probability in [0, 1]")


@dataclass(frozen=True)
class DepthConfig:
    """Per-camera depth targets from the key-frame LiDAR cloud.

    Attributes:
        enabled: compute targets.
        stride: output stride in pixels of the network input (16 -> (H/16, W/16)); each cell holds the minimum
            depth (m) of the points projecting into it, 0 where none.
        min_depth, max_depth: points outside this optical-depth range (m) are ignored.
    """

    enabled: bool = True
    stride: int = 16
    min_depth: float = 0.5
    max_depth: float = 60.0

    def __post_init__(self) -> None:
        _check(self.stride >= 1, "depth.stride", "must be >= 1 pixels (the model's feature stride, e.g. 16)")
        _check(0 <= self.min_depth < self.max_depth, "depth.min_depth", "must be >= 0 and below depth.max_depth")


@dataclass(frozen=True)
class DataConfig:
    """The whole data pipeline.

    Attributes:
        dataroot: nuScenes dataroot (``samples/``, ``sweeps/``, ``<version>/``).
        version: table folder, e.g. ``v1.0-mini``, ``v1.0-trainval``, ``v1.0-synth``.
        train_split, val_split: split names (predefined or custom from ``<version>/splits.json``).
        cameras: camera channels in network order.
        classes: detection classes; a label is an index into this tuple.
        prev_key_offsets: previous key frames to load, as negative key-frame offsets (e.g. (-1,) = 0.5 s
            earlier); clamped to the first sample of the scene.
        lidar_sweeps: previous LiDAR sweeps merged into ``points`` (0 = key frame only).
        load_points: return the LiDAR points.
        point_min_radius: points closer than this (m, xy in the LiDAR frame) are dropped (ego-body returns).
        min_lidar_pts: ground-truth boxes with fewer LiDAR + radar points are dropped (1 = the evaluation's
            rule; 0 keeps all).
        info_cache_dir: where to cache the info pickles (None: ``<dataroot>/infos``).
        image_aug, bev_aug, depth: see their classes.
    """

    dataroot: str
    version: str = "v1.0-synth"
    train_split: str = "synth_train"
    val_split: str = "synth_val"
    cameras: tuple[str, ...] = CAMERA_CHANNELS
    classes: tuple[str, ...] = CLASS_NAMES
    prev_key_offsets: tuple[int, ...] = ()
    lidar_sweeps: int = 0
    load_points: bool = True
    point_min_radius: float = 1.0
    min_lidar_pts: int = 1
    info_cache_dir: str | None = None
    image_aug: ImageAugConfig = field(default_factory=ImageAugConfig)
    bev_aug: BevAugConfig = field(default_factory=BevAugConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)

    def __post_init__(self) -> None:
        _check(len(self.cameras) >= 1, "cameras", f"must name at least one camera channel, e.g. {list(CAMERA_CHANNELS)}")
        _check(len(set(self.cameras)) == len(self.cameras), "cameras", "must be distinct: remove the repeated channel")
        _check(all(c in CLASS_NAMES for c in self.classes), "classes",
               f"must be among {list(CLASS_NAMES)}, got {[c for c in self.classes if c not in CLASS_NAMES]}")
        _check(all(k < 0 for k in self.prev_key_offsets), "prev_key_offsets",
               f"must be negative key-frame offsets (e.g. [-1] = 0.5 s earlier), got {list(self.prev_key_offsets)}")
        _check(self.lidar_sweeps >= 0, "lidar_sweeps", "must be >= 0 (0 = the key frame's sweep only)")
        _check(self.min_lidar_pts >= 0, "min_lidar_pts", "must be >= 0 (0 keeps every box)")

    def image_transform_config(self) -> ImageTransformConfig:
        """The evaluation transform of these images, as the model (and so the node) stores it."""
        a = self.image_aug
        return ImageTransformConfig(resize_scale=float(a.test_resize), bottom_crop=float(sum(a.bot_pct_lim) / 2),
                                    mean=tuple(a.mean), std=tuple(a.std))

    def replace(self, **kw) -> "DataConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **kw)


class DataConfigError(ValueError):
    """A data configuration is invalid; the message names the key and the fix. ``key`` (dotted path inside the
    data section) and ``problem`` are set for the semantic checks, so a training config can name
    ``data.<key>``."""

    def __init__(self, message: str, key: str | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.key, self.problem = key, problem


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise DataConfigError(f"data config: '{key}' {problem}", key, problem)


def load_data_config(src: str | Path | dict) -> DataConfig:
    """Load and validate a :class:`DataConfig` from a YAML path or a dict (unknown keys and wrong types raise
    :class:`DataConfigError`). A YAML file may hold the data section alone or a whole training config (its
    ``data:`` section is used)."""
    if isinstance(src, (str, Path)):
        d, source = read_yaml(src, DataConfigError, "data config"), f"data config {src}"
        if isinstance(d, dict) and isinstance(d.get("data"), dict) and "dataroot" not in d:
            d = d["data"]
    else:
        d, source = src, "data config"
    return build(DataConfig, d, source=source, error=DataConfigError)


def preset(name: str, dataroot: str, **overrides) -> DataConfig:
    """Named presets: ``r50_256x704`` (BEVDepth R50 input, stride 16) and ``small_128x352`` (the small CPU model:
    128x352 input, stride 16, milder augmentation). ``overrides`` replace top-level fields."""
    if name == "r50_256x704":
        cfg = DataConfig(dataroot=dataroot)
    elif name == "small_128x352":
        cfg = DataConfig(dataroot=dataroot,
                         image_aug=ImageAugConfig(final_dim=(128, 352), resize_lim=(0.94, 1.1), rot_lim=(-2.7, 2.7)),
                         depth=DepthConfig(stride=16))
    else:
        raise ValueError(f"unknown data preset {name!r}; known: r50_256x704, small_128x352")
    return cfg.replace(**overrides) if overrides else cfg
