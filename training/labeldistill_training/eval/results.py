"""Detections -> nuScenes detection results JSON, and a validator that catches the silent mistakes.

Input detections are per sample, in the ego frame of the sample's LIDAR_TOP key frame (the project's box layout
``(N, 9)`` x, y, z, l, w, h, yaw, vx, vy). Output boxes are in the **global** frame with ``size`` = [w, l, h],
quaternion [w, x, y, z], global velocity (vx, vy) and an attribute (given, or chosen by class and speed with
:func:`..attributes.default_attribute`). The devkit accepts ego-frame boxes or [l, w, h] sizes without a word
and scores them ~0; :func:`validate_results` raises :class:`ResultsValidationError` on those instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from labeldistill_ros import geometry as geo

from .attributes import ATTRIBUTE_NAMES, default_attributes

MAX_BOXES_PER_SAMPLE = 500
"""nuScenes' limit per sample."""

# Classes whose boxes are longer along the heading than across it (size [w, l, h] has w < l).
_ELONGATED = ("car", "truck", "bus", "trailer", "construction_vehicle", "motorcycle", "bicycle")


class ResultsValidationError(ValueError):
    """A results file that nuscenes-devkit would accept but score wrongly (or reject with a vague error)."""


@dataclass
class SampleDetections:
    """Detections of one sample.

    Attributes:
        sample_token: nuScenes sample token.
        boxes: ``(N, 9)`` x, y, z (geometric centre), l, w, h, yaw, vx, vy in the sample's key ego frame (m,
            rad, m/s); ``(N, 7)`` is accepted (zero velocity).
        scores: ``(N,)`` confidences.
        labels: ``(N,)`` class indices into ``classes`` (default ``geometry.CLASS_NAMES``).
        ego2global: ``(4, 4)`` pose of that ego frame (the LIDAR_TOP key frame's ego pose).
        attributes: optional ``N`` attribute names ('' allowed); default: by class and speed.
    """

    sample_token: str
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    ego2global: np.ndarray
    attributes: Sequence[str] | None = None


@dataclass
class ValidationReport:
    """What :func:`validate_results` looked at (for logs)."""

    num_samples: int = 0
    num_boxes: int = 0
    far_fraction: float = 0.0
    swapped_size_fraction: float = 0.0
    warnings: list[str] = field(default_factory=list)


def detections_to_results(detections: Iterable[SampleDetections | Mapping], classes: Sequence[str] = geo.CLASS_NAMES,
                          meta: Mapping | None = None, sample_tokens: Iterable[str] | None = None) -> dict:
    """Build the nuScenes results dict ``{"meta": ..., "results": {sample_token: [box, ...]}}``.

    Args:
        detections: :class:`SampleDetections` or dicts with the same keys.
        classes: class names indexed by ``labels``.
        meta: the ``meta`` entry (default: camera-only).
        sample_tokens: if given, every one of these samples gets an entry (empty list when no detections), as
            the devkit requires for predefined splits.
    Returns:
        A JSON-serialisable dict.
    """
    results: dict[str, list[dict]] = {}
    for det in detections:
        d = det if isinstance(det, Mapping) else det.__dict__
        token = str(d["sample_token"])
        boxes = np.asarray(d["boxes"], dtype=np.float64)
        if boxes.size == 0:
            boxes = np.zeros((0, 9))
        if boxes.shape[1] == 7:
            boxes = np.concatenate([boxes, np.zeros((len(boxes), 2))], axis=1)
        scores = np.asarray(d["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(d["labels"], dtype=np.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(f"sample {token}: boxes/scores/labels lengths differ "
                             f"({len(boxes)}, {len(scores)}, {len(labels)})")
        names = [classes[int(i)] for i in labels]
        attrs = d.get("attributes")
        if attrs is None:
            attrs = default_attributes(names, boxes[:, 7:9])
        entries = results.setdefault(token, [])
        for nb, name, score, attr in zip(geo.boxes_to_nuscenes(boxes, d["ego2global"]), names, scores, attrs):
            nb.update(sample_token=token, detection_name=name, detection_score=float(score),
                      attribute_name=str(attr))
            entries.append(nb)
    for token in sample_tokens or ():
        results.setdefault(str(token), [])
    meta = dict(meta) if meta is not None else {"use_camera": True, "use_lidar": False, "use_radar": False,
                                                 "use_map": False, "use_external": False}
    return {"meta": meta, "results": results}


def validate_results(submission: Mapping, ego_xy: Mapping[str, Sequence[float]] | None = None,
                     far_threshold: float = 100.0, min_boxes: int = 5) -> ValidationReport:
    """Check a results dict before scoring; raise :class:`ResultsValidationError` with the fix on a mistake.

    Checks: structure (``meta`` and ``results`` dicts, ``sample_token`` equal to its key, field lengths, finite
    numbers, size > 0, known class/attribute names, at most 500 boxes per sample) and two silent-zero mistakes:

    * **frame**: with ``ego_xy`` (sample token -> ego (x, y) in the global frame of its LIDAR_TOP key frame),
      if at least ``min_boxes`` boxes are given and more than half of them lie farther than ``far_threshold`` m
      from their ego (no class is evaluated beyond 50 m), the boxes are not in the global frame;
    * **size order**: if at least ``min_boxes`` boxes of elongated classes (car, truck, bus, trailer,
      construction vehicle, motorcycle, bicycle) are given and more than 60 % of them have ``size[0]`` (w) more
      than 1.2 x ``size[1]`` (l), the sizes are [l, w, h] instead of [w, l, h].

    Returns:
        A :class:`ValidationReport`.
    """
    if not isinstance(submission, Mapping) or "results" not in submission or "meta" not in submission:
        raise ResultsValidationError("results must be a dict with 'meta' and 'results' keys (nuScenes format)")
    res = submission["results"]
    if not isinstance(res, Mapping):
        raise ResultsValidationError("'results' must be a dict {sample_token: [box, ...]}, not a list")
    if not isinstance(submission["meta"], Mapping):
        raise ResultsValidationError("'meta' must be a dict")
    rep = ValidationReport(num_samples=len(res))
    far, n_pos, swapped, n_long = 0, 0, 0, 0
    required = ("sample_token", "translation", "size", "rotation", "velocity", "detection_name",
                "detection_score", "attribute_name")
    for token, boxes in res.items():
        if not isinstance(boxes, list):
            raise ResultsValidationError(f"results[{token!r}] must be a list of boxes")
        if len(boxes) > MAX_BOXES_PER_SAMPLE:
            raise ResultsValidationError(f"sample {token}: {len(boxes)} boxes > {MAX_BOXES_PER_SAMPLE} allowed; "
                                         "keep the top-scoring ones")
        for b in boxes:
            missing = [k for k in required if k not in b]
            if missing:
                raise ResultsValidationError(f"sample {token}: box misses {missing}")
            if b["sample_token"] != token:
                raise ResultsValidationError(f"box sample_token {b['sample_token']!r} != its key {token!r} "
                                             "(the devkit would silently score it 0)")
            for k, n in (("translation", 3), ("size", 3), ("rotation", 4), ("velocity", 2)):
                v = b[k]
                if len(v) != n:
                    raise ResultsValidationError(f"sample {token}: {k} must have {n} values, got {len(v)}")
                if k != "velocity" and not all(math.isfinite(float(x)) for x in v):
                    raise ResultsValidationError(f"sample {token}: {k} has non-finite values {v}")
            if min(b["size"]) <= 0:
                raise ResultsValidationError(f"sample {token}: size must be > 0, got {b['size']}")
            if abs(float(np.linalg.norm(b["rotation"])) - 1.0) > 1e-3:
                raise ResultsValidationError(f"sample {token}: rotation must be a unit quaternion [w, x, y, z]")
            if b["detection_name"] not in geo.CLASS_NAMES:
                raise ResultsValidationError(f"sample {token}: unknown detection_name {b['detection_name']!r}; "
                                             f"use one of {geo.CLASS_NAMES}")
            if b["attribute_name"] not in ATTRIBUTE_NAMES + ("",):
                raise ResultsValidationError(f"sample {token}: unknown attribute_name {b['attribute_name']!r}")
            if not math.isfinite(float(b["detection_score"])):
                raise ResultsValidationError(f"sample {token}: detection_score must be finite")
            rep.num_boxes += 1
            if ego_xy is not None and token in ego_xy:
                n_pos += 1
                e = ego_xy[token]
                if math.hypot(b["translation"][0] - e[0], b["translation"][1] - e[1]) > far_threshold:
                    far += 1
            if b["detection_name"] in _ELONGATED:
                n_long += 1
                if b["size"][0] > 1.2 * b["size"][1]:
                    swapped += 1
    rep.far_fraction = far / n_pos if n_pos else 0.0
    rep.swapped_size_fraction = swapped / n_long if n_long else 0.0
    if n_pos >= min_boxes and rep.far_fraction > 0.5:
        raise ResultsValidationError(
            f"{far}/{n_pos} boxes lie more than {far_threshold:.0f} m from their sample's ego pose: translations "
            "must be in the GLOBAL frame (transform ego boxes with the LIDAR_TOP key frame's ego2global, e.g. "
            "geometry.boxes_to_nuscenes); nuScenes would score these ~0")
    if n_long >= min_boxes and rep.swapped_size_fraction > 0.6:
        raise ResultsValidationError(
            f"{swapped}/{n_long} boxes of elongated classes have size[0] > 1.2 size[1]: nuScenes sizes are "
            "[w, l, h] (width first), these look like [l, w, h]")
    return rep


def infos_to_detections(infos: Sequence[Mapping], classes: Sequence[str] = geo.CLASS_NAMES,
                        class_range: Mapping[str, float] | None = None, only_valid: bool = True,
                        with_attributes: bool = True) -> list[SampleDetections]:
    """Ground truth of infos as score-1 detections (an upper-bound / pipeline check).

    Args:
        infos: records of :func:`..data.infos.create_infos`.
        classes: class names (labels index into it).
        class_range: if given, keep boxes within this xy distance (m) of the ego per class (the evaluation's
            range filter).
        only_valid: keep only boxes with LiDAR/radar points (the evaluation's point filter).
        with_attributes: pass the ground-truth attributes (False: let the converter choose by class and speed).
    """
    out = []
    for info in infos:
        names = list(info["gt_names"])
        keep = np.array([n in classes for n in names], dtype=bool)
        if only_valid:
            keep &= np.asarray(info["valid_flag"], dtype=bool)
        boxes = np.asarray(info["gt_boxes"], dtype=np.float64).reshape(-1, 9)
        if class_range is not None and len(boxes):
            dist = np.hypot(boxes[:, 0], boxes[:, 1])
            keep &= np.array([d < class_range.get(n, np.inf) for d, n in zip(dist, names)], dtype=bool)
        idx = np.nonzero(keep)[0]
        out.append(SampleDetections(
            sample_token=info["sample_token"], boxes=boxes[idx], scores=np.ones(len(idx)),
            labels=np.array([classes.index(names[i]) for i in idx], dtype=np.int64),
            ego2global=np.asarray(info["ego2global"]),
            attributes=[info["gt_attributes"][i] for i in idx] if with_attributes else None))
    return out
