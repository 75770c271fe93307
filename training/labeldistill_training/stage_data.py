"""The training config's ``data:`` section (a typed :class:`~labeldistill_training.data.config.DataConfig`) put to
work for one stage: the stage's DataConfig, its consistency with the model config, the model settings that come
from the data (previous-frame offsets, image transform) and the pipeline's datasets."""
from __future__ import annotations

import dataclasses

from labeldistill_training.config import TrainConfig, resolve_path


def data_config_for_stage(cfg: TrainConfig, model_cfg, stage: str, method: str = "none"):
    """The pipeline's DataConfig for a stage: points only where a LiDAR teacher runs, depth targets only for
    the student's depth loss; the network input size and depth stride must match the model. ``dataroot`` is
    resolved like every config path. The Trainer calls it on creation, before any network is built."""
    if cfg.data is None:
        raise ValueError(f"{cfg.source}: no 'data' section: add one (data.dataroot at least) or give the Trainer "
                         f"a dataset_factory")
    dc = cfg.data
    needs_points = stage == "teacher" or (stage == "student" and method != "none")
    needs_depth = stage == "student" and cfg.student.depth_loss_weight > 0
    dc = dc.replace(dataroot=str(resolve_path(cfg, dc.dataroot)), load_points=needs_points,
                    depth=dataclasses.replace(dc.depth, enabled=needs_depth))
    if tuple(dc.image_aug.final_dim) != tuple(model_cfg.input_size):
        raise ValueError(f"data.image_aug.final_dim {list(dc.image_aug.final_dim)} != the model's input_size "
                         f"{list(model_cfg.input_size)}: make them equal")
    if needs_depth and dc.depth.stride != model_cfg.feature_stride:
        raise ValueError(f"data.depth.stride {dc.depth.stride} != the model's feature stride "
                         f"{model_cfg.feature_stride}: make them equal")
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

    if cfg.data is None:
        return model_cfg
    keys = cfg.data.prev_key_offsets
    T = model_cfg.temporal.num_prev_frames
    if len(keys) != T:
        raise ValueError(f"data.prev_key_offsets has {len(keys)} frames ({list(keys)}), the model uses "
                         f"temporal.num_prev_frames = {T}: make them agree")
    offsets = key_offsets_to_seconds(keys)
    _check_prev_offsets(offsets, model_cfg)
    if any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"data.prev_key_offsets {list(keys)} must go back in time, most recent first "
                         f"(e.g. {sorted(keys, reverse=True)}): the model's previous frames are ordered that way")
    new = dataclasses.replace(model_cfg, temporal=dataclasses.replace(model_cfg.temporal, prev_offsets_s=offsets))
    return model_config_from_dict(model_config_to_dict(new), source="model config with the data's prev offsets")


def with_data_image_transform(cfg: TrainConfig, model_cfg):
    """``model_cfg`` with its image transform set to the data config's evaluation transform (test resize, the
    mean of ``bot_pct_lim``, normalisation): what every checkpoint then carries to the node, which runs exactly
    that transform. A model YAML that states another non-default transform is an error."""
    from labeldistill_ros.model.image_transform import ImageTransformConfig

    if cfg.data is None:
        return model_cfg
    tc = cfg.data.image_transform_config()
    if model_cfg.image not in (ImageTransformConfig(), tc):
        raise ValueError(f"the model config's image transform {model_cfg.image} differs from the data config's "
                         f"evaluation transform {tc}: remove 'image' from the model YAML (the trainer sets it "
                         f"from data.image_aug)")
    return dataclasses.replace(model_cfg, image=tc)


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
