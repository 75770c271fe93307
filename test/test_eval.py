"""Evaluation: ground truth submitted as results scores mAP = NDS = 1 through the project's converter and the
official DetectionEval (custom splits); wrong frame / size order are caught; structural mistakes raise clearly."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from labeldistill_ros import geometry as geo
from labeldistill_training.eval.evaluate import evaluate_results, lidar_ego_xy, split_sample_tokens
from labeldistill_training.eval.results import (ResultsValidationError, SampleDetections, detections_to_results,
                                                infos_to_detections, validate_results)


@pytest.fixture(scope="module")
def class_range():
    from nuscenes.eval.common.config import config_factory

    return config_factory("detection_cvpr_2019").class_range


@pytest.mark.parametrize("split", ["synth_val", "synth_all"])
def test_ground_truth_scores_perfect(tiny_nusc, tiny_infos, class_range, split, tmp_path):
    # Attributes chosen by the converter's class/speed rule (the world labels with the same rule).
    dets = infos_to_detections(tiny_infos[split], class_range=class_range, with_attributes=False)
    res = detections_to_results(dets)
    r = evaluate_results(res, tiny_nusc, split, tmp_path)
    assert r.mAP == pytest.approx(1.0, abs=1e-6) and r.NDS == pytest.approx(1.0, abs=1e-6)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in r.tp_errors.values())
    assert set(r.class_ap) == set(geo.CLASS_NAMES) and min(r.class_ap.values()) > 0.999999
    assert r.num_samples == len(tiny_infos[split]) and r.num_samples_without_results == 0
    summary = json.loads(open(r.metrics_path).read())
    assert summary["nd_score"] == pytest.approx(r.NDS)
    assert (tmp_path / "metrics_details.json").is_file()


def test_unfiltered_ground_truth_loses_only_the_filtered_boxes(tiny_nusc, tiny_infos, tmp_path):
    """Without the evaluation's range/point filters, boxes with no LiDAR points become false positives."""
    dets = infos_to_detections(tiny_infos["synth_val"], only_valid=False)
    r = evaluate_results(detections_to_results(dets), tiny_nusc, "synth_val", tmp_path)
    assert 0.5 < r.mAP < 1.0 and r.tp_errors["trans_err"] == pytest.approx(0.0, abs=1e-6)


def test_results_without_a_single_box_score_zero(tiny_nusc, tiny_infos, tmp_path):
    """An untrained model or a high threshold: the devkit's own filter raises 'Invalid box type: None' on an empty
    prediction set; the evaluation scores it instead (mAP 0, every TP error at its worst, 1)."""
    empty = {"meta": detections_to_results([])["meta"], "results": {}}
    r = evaluate_results(empty, tiny_nusc, "synth_val", tmp_path)
    assert r.mAP == 0.0 and r.NDS == 0.0
    assert all(v == pytest.approx(1.0) for v in r.tp_errors.values())
    assert r.num_samples_without_results == r.num_samples == len(tiny_infos["synth_val"])


def test_results_in_ego_frame_are_caught(tiny_nusc, tiny_infos, class_range, tmp_path):
    dets = infos_to_detections(tiny_infos["synth_val"], class_range=class_range)
    for d in dets:
        d.ego2global = np.eye(4)  # the classic bug: ego boxes submitted as global
    res = detections_to_results(dets)
    with pytest.raises(ResultsValidationError, match="GLOBAL frame"):
        evaluate_results(res, tiny_nusc, "synth_val", tmp_path)
    r = evaluate_results(res, tiny_nusc, "synth_val", tmp_path, validate=False)
    assert r.mAP < 0.05  # what the devkit alone would have reported, silently


def test_results_with_lwh_sizes_are_caught(tiny_nusc, tiny_infos, class_range, tmp_path):
    good = detections_to_results(infos_to_detections(tiny_infos["synth_val"], class_range=class_range))
    bad = copy.deepcopy(good)
    for boxes in bad["results"].values():
        for b in boxes:
            b["size"] = [b["size"][1], b["size"][0], b["size"][2]]  # [l, w, h]
    with pytest.raises(ResultsValidationError, match=r"\[w, l, h\]"):
        evaluate_results(bad, tiny_nusc, "synth_val", tmp_path)
    r = evaluate_results(bad, tiny_nusc, "synth_val", tmp_path, validate=False)
    assert r.tp_errors["scale_err"] > 0.25 and r.NDS < 0.95  # centre matching keeps mAP; the size error shows


def test_structural_mistakes_raise(tiny_nusc, tiny_infos, class_range):
    res = detections_to_results(infos_to_detections(tiny_infos["synth_val"], class_range=class_range))
    tok = next(t for t, v in res["results"].items() if v)
    ego = lidar_ego_xy(tiny_nusc, split_sample_tokens(tiny_nusc, "synth_val"))
    validate_results(res, ego)  # the good one passes

    def broken(fn):
        r = copy.deepcopy(res)
        fn(r)
        return r

    cases = {
        "must be a dict": broken(lambda r: r.update(results=list(r["results"].values()))),
        "'meta'": broken(lambda r: r.pop("meta")),
        "its key": broken(lambda r: r["results"][tok][0].update(sample_token="x" * 32)),
        "size must be > 0": broken(lambda r: r["results"][tok][0].update(size=[0.0, 1.0, 1.0])),
        "velocity must have 2": broken(lambda r: r["results"][tok][0].update(velocity=[0.0, 0.0, 0.0])),
        "unknown detection_name": broken(lambda r: r["results"][tok][0].update(detection_name="vehicle.car")),
        "unknown attribute_name": broken(lambda r: r["results"][tok][0].update(attribute_name="moving")),
        "unit quaternion": broken(lambda r: r["results"][tok][0].update(rotation=[0.0, 0.0, 0.0, 0.0])),
        "allowed": broken(lambda r: r["results"][tok].extend([r["results"][tok][0]] * 501)),
    }
    for msg, r in cases.items():
        with pytest.raises(ResultsValidationError, match=msg):
            validate_results(r, ego)


def test_converter_frames_sizes_attributes_and_coverage(tiny_infos):
    info = tiny_infos["synth_val"][1]
    boxes = np.array([[10.0, 2.0, 0.8, 4.5, 1.9, 1.6, 0.3, 3.0, 0.0],
                      [5.0, -3.0, 0.9, 0.7, 0.6, 1.7, -1.0, 0.0, 0.0],
                      [8.0, 8.0, 0.5, 0.4, 0.4, 1.0, 0.0, 0.0, 0.0]])
    det = SampleDetections(info["sample_token"], boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 8, 9]),
                           info["ego2global"])
    other = tiny_infos["synth_val"][0]["sample_token"]
    res = detections_to_results([det], sample_tokens=[other])
    out = res["results"][info["sample_token"]]
    assert res["results"][other] == [] and res["meta"]["use_camera"] is True
    assert [b["detection_name"] for b in out] == ["car", "pedestrian", "traffic_cone"]
    assert [b["attribute_name"] for b in out] == ["vehicle.moving", "pedestrian.standing", ""]
    assert out[0]["size"] == [1.9, 4.5, 1.6]
    g = geo.transform_points(info["ego2global"], boxes[:, :3])
    assert np.allclose([b["translation"] for b in out], g)
    back = geo.nuscenes_to_boxes([b["translation"] for b in out], [b["size"] for b in out],
                                 [b["rotation"] for b in out], [b["velocity"] for b in out],
                                 geo.invert_transform(info["ego2global"]))
    assert np.allclose(back, boxes, atol=1e-9)
    assert json.loads(json.dumps(res)) == res
