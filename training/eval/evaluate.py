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
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

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
        ev = DetectionEval(nusc, config=config_factory(config_name), result_path=str(res_path), eval_set=eval_set,
                           output_dir=str(out), verbose=verbose)
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
