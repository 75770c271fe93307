"""Official nuScenes detection evaluation (nuscenes-devkit ``DetectionEval``) with custom-split support.

Predefined splits (``val``, ``mini_val``, ...) and custom ones (``<version>/splits.json``, nuscenes-devkit >= 1.2)
both work. The results are validated first (:func:`.results.validate_results`), restricted to the samples of the
split, and completed with empty lists for samples without detections (the devkit requires exact coverage on
predefined splits). Returns mAP, NDS, the five TP errors and per-class numbers, and writes
``metrics_summary.json`` (+ ``metrics_details.json``; plots on request) to ``output_dir``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from .results import validate_results

TP_METRICS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")


@dataclass
class EvalResult:
    """Scores of one evaluation.

    Attributes:
        mAP, NDS: in [0, 1].
        tp_errors: mean TP errors ``{'trans_err' (m), 'scale_err' (1 - IoU), 'orient_err' (rad), 'vel_err' (m/s),
            'attr_err' (1 - acc)}`` (mATE, mASE, mAOE, mAVE, mAAE).
        class_ap: per-class AP (mean over distance thresholds); class_tp: per-class TP errors (NaN where
            undefined, e.g. cone orientation).
        num_samples: samples evaluated; num_samples_without_results: of those, samples that had no entry in the
            results (filled with an empty list).
        eval_time: seconds; metrics_path: the written ``metrics_summary.json``.
    """

    mAP: float
    NDS: float
    tp_errors: dict
    class_ap: dict
    class_tp: dict
    num_samples: int
    num_samples_without_results: int
    eval_time: float
    metrics_path: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def split_sample_tokens(nusc, eval_set: str) -> list[str]:
    """Sample tokens of a predefined or custom split (scene membership by name, as the devkit does)."""
    from nuscenes.utils.splits import get_scenes_of_split

    scenes = set(get_scenes_of_split(eval_set, nusc))
    return [s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]


def lidar_ego_xy(nusc, sample_tokens) -> dict[str, tuple[float, float]]:
    """Global (x, y) of the ego pose of each sample's LIDAR_TOP key frame (what the class-range filter uses)."""
    out = {}
    for tok in sample_tokens:
        sd = nusc.get("sample_data", nusc.get("sample", tok)["data"]["LIDAR_TOP"])
        t = nusc.get("ego_pose", sd["ego_pose_token"])["translation"]
        out[tok] = (float(t[0]), float(t[1]))
    return out


def detection_eval_on_tokens(nusc, result_path: str | os.PathLike, sample_tokens: list[str],
                             output_dir: str | os.PathLike, config_name: str = "detection_cvpr_2019",
                             verbose: bool = False):
    """nuscenes-devkit's ``DetectionEval`` on exactly ``sample_tokens`` (a split, or the key frames of a bag), ready
    for ``evaluate()`` / ``render()``: predictions from ``result_path`` (which must hold every one of the tokens),
    ground truth from ``nusc``, the devkit's distance, zero-point and bike-rack filters.

    Unlike the devkit's constructor it accepts a prediction set without a single box (an untrained model, a
    threshold above every score): the devkit's box filter cannot tell the box type of an empty set and raises
    ``Invalid box type: None``; with nothing to filter, the filter is skipped and the evaluation scores 0 mAP.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.common.loaders import (add_center_dist, filter_eval_boxes, load_gt_of_sample_tokens,
                                              load_prediction_of_sample_tokens)
    from nuscenes.eval.detection.data_classes import DetectionBox
    from nuscenes.eval.detection.evaluate import DetectionEval

    cfg = config_factory(config_name)
    ev = DetectionEval.__new__(DetectionEval)  # the devkit's evaluator, set up on a token list
    ev.nusc, ev.cfg, ev.verbose, ev.result_path, ev.eval_set = nusc, cfg, verbose, str(result_path), "tokens"
    ev.output_dir, ev.plot_dir = str(output_dir), os.path.join(str(output_dir), "plots")
    os.makedirs(ev.plot_dir, exist_ok=True)
    ev.pred_boxes, ev.meta = load_prediction_of_sample_tokens(str(result_path), cfg.max_boxes_per_sample,
                                                              DetectionBox, sample_tokens=list(sample_tokens))
    ev.gt_boxes = load_gt_of_sample_tokens(nusc, list(sample_tokens), DetectionBox)
    if ev.pred_boxes.all:
        ev.pred_boxes = filter_eval_boxes(nusc, add_center_dist(nusc, ev.pred_boxes), cfg.class_range)
    ev.gt_boxes = filter_eval_boxes(nusc, add_center_dist(nusc, ev.gt_boxes), cfg.class_range)
    ev.sample_tokens = ev.gt_boxes.sample_tokens
    return ev


def evaluate_results(results: Mapping | str | os.PathLike, nusc, eval_set: str, output_dir: str | os.PathLike,
                     render_plots: bool = False, validate: bool = True, verbose: bool = False,
                     config_name: str = "detection_cvpr_2019") -> EvalResult:
    """Score a results dict (or JSON path) with nuscenes-devkit's ``DetectionEval``.

    Args:
        results: ``{"meta": ..., "results": {sample_token: [box, ...]}}`` or a path to such a JSON file.
        nusc: a loaded ``NuScenes`` holding the split's ground truth.
        eval_set: split name (predefined or custom).
        output_dir: where the results JSON used, ``metrics_summary.json``, ``metrics_details.json`` and (with
            ``render_plots``) ``plots/`` go.
        render_plots: render the devkit's PR/TP curves (slow: ~10 s).
        validate: run :func:`.results.validate_results` (frame and size-order checks included) first.
        verbose: devkit progress output.
        config_name: devkit detection config.
    Returns:
        An :class:`EvalResult`.
    """
    t0 = time.perf_counter()
    if not isinstance(results, Mapping):
        with open(results) as f:
            results = json.load(f)
    tokens = split_sample_tokens(nusc, eval_set)
    if not tokens:
        raise ValueError(f"split {eval_set!r} has no samples in {nusc.version} (scene names do not match)")
    if validate:
        validate_results(results, ego_xy=lidar_ego_xy(nusc, tokens))
    res = results["results"]
    missing = [t for t in tokens if t not in res]
    sub = {"meta": dict(results["meta"]), "results": {t: list(res.get(t, [])) for t in tokens}}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results_nusc.json"
    with open(res_path, "w") as f:
        json.dump(sub, f)
    # The devkit draws tqdm bars on stderr even when not verbose; keep quiet runs quiet.
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(io.StringIO())
    with quiet:
        ev = detection_eval_on_tokens(nusc, res_path, tokens, out, config_name, verbose)
        metrics, metric_data = ev.evaluate()
    summary = metrics.serialize()
    summary["meta"] = ev.meta.copy()
    with open(out / "metrics_summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    with open(out / "metrics_details.json", "w") as f:
        json.dump(metric_data.serialize(), f)
    if render_plots:
        ev.render(metrics, metric_data)
    return EvalResult(
        mAP=float(summary["mean_ap"]), NDS=float(summary["nd_score"]),
        tp_errors={k: float(summary["tp_errors"][k]) for k in TP_METRICS},
        class_ap={k: float(v) for k, v in summary["mean_dist_aps"].items()},
        class_tp={c: {k: float(v) for k, v in d.items()} for c, d in summary["label_tp_errors"].items()},
        num_samples=len(tokens), num_samples_without_results=len(missing),
        eval_time=time.perf_counter() - t0, metrics_path=str(out / "metrics_summary.json"),
    )
