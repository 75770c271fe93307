"""Evaluation of a trained stage: decoded detections on the val split -> nuScenes results -> nuscenes-devkit
DetectionEval, and the per-class recall reach of the result."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn as nn

from labeldistill_training.batch import batch_to
from labeldistill_training.config import TrainConfig, resolve_path


@torch.no_grad()
def predict(stage: nn.Module, batches: Iterable[dict], model_cfg, device: torch.device,
            max_samples: Optional[int] = None) -> list[dict]:
    """Decoded detections of ``stage`` for every sample of ``batches``: ``[{"sample_token", "boxes", "scores",
    "labels", "ego2global"}]`` (boxes in the ego frame of the sample), at most ``max_samples``."""
    from labeldistill_ros.model.decode import decode_detections

    stage.eval()
    mc = model_cfg
    results = []
    for batch in batches:
        batch = batch_to(batch, device)
        head_out = stage.predict(batch)
        dets = decode_detections(head_out, mc.head.task_groups, mc.class_names, mc.bev_grid, mc.decode)
        for i, d in enumerate(dets):
            results.append({"sample_token": batch["sample_token"][i], "boxes": d.boxes.float().cpu(),
                            "scores": d.scores.float().cpu(), "labels": d.labels.cpu(),
                            "ego2global": batch["ego2global"][i].double().cpu().numpy()
                            if "ego2global" in batch else None})
        if max_samples is not None and len(results) >= max_samples:
            break
    return results


def run_detection_eval(cfg: TrainConfig, model_cfg, preds: list[dict], out_dir: Path) -> dict:
    """Detections (key ego frame) -> nuScenes results (global) -> nuscenes-devkit DetectionEval on the val split."""
    from labeldistill_training.data.infos import load_nuscenes
    from labeldistill_training.eval.evaluate import evaluate_results
    from labeldistill_training.eval.results import detections_to_results

    dc = cfg.data
    dets = [{"sample_token": p["sample_token"], "boxes": p["boxes"].numpy(), "scores": p["scores"].numpy(),
             "labels": p["labels"].numpy(), "ego2global": p["ego2global"]} for p in preds]
    nusc = load_nuscenes(str(resolve_path(cfg, dc.dataroot)), dc.version)
    if model_cfg.decode.velocity == "tracked":
        dets = track_velocities(dets, nusc, model_cfg.class_names)
    results = detections_to_results(dets, classes=model_cfg.class_names)
    res = evaluate_results(results, nusc, dc.val_split, out_dir, validate=True)
    return {"mAP": res.mAP, "NDS": res.NDS, **{k: v for k, v in res.tp_errors.items()},
            "class_ap": res.class_ap, "num_samples": res.num_samples,
            "num_samples_without_results": res.num_samples_without_results,
            "per_class_max_recall": per_class_max_recall(Path(out_dir) / "metrics_details.json")}


def track_velocities(dets: list[dict], nusc, class_names) -> list[dict]:
    """``decode.velocity: tracked``: each scene's samples in time order through one
    :class:`~labeldistill_ros.tracking.VelocityTracker` in the global frame (the node's does the same in its fixed
    frame), boxes' vx, vy replaced by :func:`~labeldistill_ros.tracking.apply_tracked_velocity`. ``dets``: dicts
    with ``sample_token``, ``boxes (N, 9)`` in the key ego frame, ``labels``, ``scores``, ``ego2global``; returns
    new dicts in the same order."""
    from labeldistill_ros.tracking import VelocityTracker, apply_tracked_velocity

    scenes: dict[str, list[tuple[int, int]]] = {}
    for i, d in enumerate(dets):
        s = nusc.get("sample", d["sample_token"])
        scenes.setdefault(s["scene_token"], []).append((int(s["timestamp"]), i))
    out = [dict(d) for d in dets]
    for items in scenes.values():
        tracker = VelocityTracker(class_names)
        for ts_us, i in sorted(items):
            d = out[i]
            d["boxes"] = apply_tracked_velocity(tracker, d["boxes"], d["labels"], d["scores"], ts_us * 1000,
                                                d["ego2global"])
    return out


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
