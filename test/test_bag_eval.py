"""labeldistill-bag-eval's scorer: ground truth played back as detections scores mAP = NDS = 1 through the whole
path (bag -> stamp matching -> recorded TF to global -> results JSON -> DetectionEval); damaged bags give a clear
error naming the file and write no results."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from labeldistill_ros.bag.reader import BagError, BagReader


@pytest.fixture(scope="module")
def bag(make_bag, first_scene):
    return make_bag("compressed_mcap", scenes=[first_scene])


def _eval(bag, nusc_dataset, out, *extra):
    from labeldistill_training.tools.bag_eval import main

    return main(["offline", "--bag", str(bag), "--dataroot", str(nusc_dataset[0]), "--version", nusc_dataset[1],
                 "--out", str(out), *extra])


def test_ground_truth_as_detections_scores_one(bag, nusc_dataset, tmp_path, capsys):
    out = tmp_path / "gt_eval"
    assert _eval(bag, nusc_dataset, out, "--detections-topic", "/ground_truth/detections", "--bev", "2") == 0
    rep = json.loads((out / "bag_eval.json").read_text())
    assert rep["mAP"] == pytest.approx(1.0) and rep["NDS"] == pytest.approx(1.0)
    assert rep["drop_rate"] == 0.0 and rep["matched_key_frames"] == rep["key_frames"] > 0
    assert all(v == pytest.approx(0.0) for v in rep["tp_errors"].values())
    res = json.loads((out / "results_nusc.json").read_text())["results"]
    assert len(res) == rep["key_frames"] and all(b["sample_token"] == k for k, bs in res.items() for b in bs)
    assert len(list((out / "bev").glob("*.png"))) == 2
    assert "mAP 1.0000" in capsys.readouterr().out


def test_ground_truth_of_a_multi_scene_bag_scores_one(make_bag, nusc_dataset, tmp_path):
    out = tmp_path / "all"
    assert _eval(make_bag("all_scenes"), nusc_dataset, out, "--detections-topic", "/ground_truth/detections",
                 "--bev", "0") == 0
    rep = json.loads((out / "bag_eval.json").read_text())
    assert rep["mAP"] == pytest.approx(1.0) and rep["NDS"] == pytest.approx(1.0) and rep["drop_rate"] == 0.0


def test_detections_go_to_the_global_frame_with_the_recorded_tf(bag, nusc_dataset):
    """Results translations equal the dataset's global annotations (the TF at the key-frame stamp is used)."""
    from nuscenes.nuscenes import NuScenes

    from labeldistill_training.tools.bag_eval import frames_from_topic, match_frames, results_json

    nusc = NuScenes(version=nusc_dataset[1], dataroot=str(nusc_dataset[0]), verbose=False)
    with BagReader(bag) as r:
        gt, traj = r.ground_truth(), r.trajectory()
    run = frames_from_topic(bag, "/ground_truth/detections")
    res = results_json(gt, match_frames(gt, run.frames, 1), traj)["results"]
    for tok, boxes in res.items():
        anns = {nusc.get("sample_annotation", a)["instance_token"]: nusc.get("sample_annotation", a)
                for a in nusc.get("sample", tok)["anns"]}
        g = next(f for f in gt if f.sample_token == tok)
        for inst, b in zip(g.ids, boxes):
            np.testing.assert_allclose(b["translation"], anns[inst]["translation"], atol=1e-6)
            np.testing.assert_allclose(b["size"], anns[inst]["size"], atol=1e-6)


def test_stamp_matching_tolerance():
    from labeldistill_ros.bag.detections import BoxFrame
    from labeldistill_training.tools.bag_eval import match_frames

    def f(t):
        return BoxFrame(t, "base_link", np.zeros((0, 9)), [], np.zeros(0))

    gt = [f(1_000), f(2_000)]
    m = match_frames(gt, [f(1_040), f(1_010), f(2_500), f(5_000)], tol_ns=100)
    assert set(m) == {0} and m[0].stamp_ns == 1_010  # nearest of two candidates; 2_500 too far from 2_000


def _damaged_copy(bag, tmp_path, how: str):
    dst = tmp_path / f"bag_{how}"
    shutil.copytree(bag, dst)
    data = next(dst.glob("*.mcap"))
    raw = data.read_bytes()
    if how == "truncated":
        data.write_bytes(raw[: len(raw) // 2])
    elif how == "corrupted":
        b = bytearray(raw)
        mid = len(b) // 2
        b[mid: mid + 4096] = bytes(4096)
        data.write_bytes(bytes(b))
    elif how == "no_metadata":
        (dst / "metadata.yaml").unlink()
    return dst, data


@pytest.mark.parametrize("how", ["truncated", "corrupted", "no_metadata"])
def test_damaged_bag_clear_error_and_no_results(bag, nusc_dataset, tmp_path, capsys, how):
    damaged, data = _damaged_copy(bag, tmp_path, how)
    out = tmp_path / "out"
    assert _eval(damaged, nusc_dataset, out, "--detections-topic", "/ground_truth/detections") == 2
    err = capsys.readouterr().err
    assert str(damaged) in err and "labeldistill-bag-eval:" in err and "Traceback" not in err
    if how != "no_metadata":
        assert data.name in err
    assert not out.exists(), "no partial results may be written"
    assert not list(tmp_path.glob(".bag_eval_*"))
    with pytest.raises(BagError):
        with BagReader(damaged) as r:
            r.check()
