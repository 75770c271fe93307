"""bench/bench_distill.py's statistics over seeds (hand values) and bench/bench_distill_probe.py's parameter groups
and per-term gradients on the real student (no training, no data set)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import bench_distill
import bench_distill_probe
import run_all

REPO = Path(__file__).resolve().parents[1]


def _run(seed, nds, map_, step, recall):
    return {"seed": seed, "NDS": nds, "mAP": map_, "step_ms": step, "steps": 10, "wall_s": 1.0,
            "tp_errors": {"trans_err": 1.0}, "class_ap": {}, "per_class_max_recall": recall}


def test_seed_statistics_and_paired_gain():
    runs = {"none": [_run(0, 0.10, 0.02, 100.0, {"car": 0.30, "bicycle": 0.0}),
                     _run(1, 0.14, 0.04, 100.0, {"car": 0.50, "bicycle": 0.04})],
            "labeldistill": [_run(0, 0.13, 0.03, 120.0, {"car": 0.40, "bicycle": 0.08}),
                             _run(1, 0.15, 0.05, 130.0, {"car": 0.60, "bicycle": 0.12})]}
    res = bench_distill.summarise(runs)
    b, m = res["none"], res["labeldistill"]
    assert b["NDS"] == pytest.approx(0.12) and b["NDS_std"] == pytest.approx(math.sqrt(2) * 0.02)
    assert m["NDS"] == pytest.approx(0.14) and m["mAP"] == pytest.approx(0.04)
    # paired per-seed gains 3 and 1 points: mean 2, sample std sqrt(2), standard error sqrt(2) / sqrt(2) = 1
    assert m["gain_NDS_pts"] == pytest.approx(2.0) and m["gain_NDS_se"] == pytest.approx(1.0)
    assert m["gain_mAP_pts"] == pytest.approx(1.0) and m["gain_mAP_se"] == pytest.approx(0.0, abs=1e-9)
    assert m["step_ms"] == pytest.approx(125.0) and m["step_time_ratio"] == pytest.approx(1.25)
    assert m["per_class_max_recall"] == pytest.approx({"car": 0.5, "bicycle": 0.1})
    assert b["classes_under_min_recall"] == ["bicycle"] and m["classes_under_min_recall"] == []
    assert [r["seed"] for r in m["seeds"]] == [0, 1]
    text = bench_distill.tables(res)
    assert "bicycle" in text and "2.0*" in text and "+2.00" in text
    one = bench_distill.summarise({k: v[:1] for k, v in runs.items()})
    assert one["labeldistill"]["NDS_std"] is None and one["labeldistill"]["gain_NDS_se"] is None
    assert "n/a" in bench_distill.tables(one)
    # the README's table (bench/run_all.py) from the same results: seeds, NDS +- std, gains +- se, recall cut
    readme = "\n".join(run_all.distill_table({"complete": True, "methods": res, "machine": {"device": "cpu"},
                                                "budget": {"student_epochs": 4, "batch_size": 4, "data": "demo"}}))
    assert "| labeldistill | 2 | 4.00 | 14.00 ± 1.41 | +2.00 ± 1.00 | +1.00 ± 0.00 | 125 | 1.25x |" in readme
    assert "| bicycle | 2.0* | 10.0 |" in readme and "seeds 0, 1" in readme and "the last at lr / 10" in readme


def test_the_student_budget_ends_at_a_tenth_of_the_lr():
    assert bench_distill.budget(4, None)["milestones"] == [3]  # epochs 1-3 at lr, epoch 4 at lr / 10
    assert bench_distill.budget(1, 5) == {"epochs": 1, "max_iters_per_epoch": 5, "milestones": [2]}  # no decay


def test_probe_groups_and_per_term_gradients():
    """The probe's groups exist on the real student, and each term's gradient is that term's alone: the detection
    gradient does not reach the depth net's depth-only path differently from a direct autograd call."""
    from labeldistill_ros.model.config import load_model_config
    from labeldistill_training.losses.depth import DepthLoss
    from labeldistill_training.losses.detection import CenterPointLoss, CenterPointTargetAssigner
    from labeldistill_training.builders import build_student, task_class_ids
    from labeldistill_training.stages import StudentStage
    from test_distill import _batch

    torch.manual_seed(0)
    mcfg = load_model_config(REPO / "config/model/r18_128x352_cpu.yaml")
    student = build_student(mcfg)
    groups = bench_distill_probe.group_params(student)
    assert set(groups) == {"depth_net", "image_stem_stage1", "bev_trunk_stage1", "head"}
    grid = mcfg.bev_grid
    dn = mcfg.depth_net
    from labeldistill_training.distill import NoDistill

    stage = StudentStage(student, NoDistill(), None, None, CenterPointTargetAssigner(grid, task_class_ids(mcfg)),
                         CenterPointLoss(), DepthLoss(dn.depth_bound[0], dn.depth_bound[2], dn.num_bins, 16), grid,
                         10, 0.5)
    batch = _batch()
    torch.manual_seed(0)  # the depth net's ASPP has dropout: the same draws for the direct call below
    res = bench_distill_probe.probe(stage, [batch], groups)
    assert set(res) == {"detection", "depth"}
    assert res["detection"]["groups"]["head"]["cos_det"] == pytest.approx(1.0)
    assert res["depth"]["groups"]["head"]["norm"] == 0.0 and res["depth"]["groups"]["head"]["cos_det"] is None
    assert res["depth"]["groups"]["depth_net"]["norm"] > 0
    # the detection term's head gradient equals a direct autograd call on the same forward
    torch.manual_seed(0)
    stage.train()
    _, parts = stage(batch)
    g = torch.autograd.grad(parts["det_hm"] + parts["det_reg"], groups["head"])
    assert res["detection"]["groups"]["head"]["norm"] == pytest.approx(float(torch.cat([x.reshape(-1) for x in g]).norm()),
                                                                      rel=1e-4)


def test_merge_keeps_every_seed_not_retrained(tmp_path):
    out = tmp_path / "distill.json"
    runs = {"none": [_run(0, 0.10, 0.02, 100.0, {}), _run(1, 0.14, 0.04, 100.0, {})],
            "cmkd": [_run(0, 0.12, 0.03, 110.0, {}), _run(1, 0.11, 0.03, 110.0, {})]}
    out.write_text(json.dumps({"methods": bench_distill.summarise(runs)}))
    kept = bench_distill.merged_runs(out, {("cmkd", 1), ("cmkd", 2), ("none", 2)})
    assert [r["seed"] for r in kept["none"]] == [0, 1]  # seed 2 is new: nothing of it to drop
    assert [r["seed"] for r in kept["cmkd"]] == [0]  # seed 1 is retrained: its old record goes
    assert bench_distill.merged_runs(tmp_path / "missing.json", set()) == {}


def test_velocity_probe_statistics_hand_values():
    """bench/bench_velocity_probe.py's figures: a head at half the target (slope 0.5), one that has learned nothing
    (0), and one with the direction reversed."""
    import numpy as np

    import bench_velocity_probe as probe

    target = np.array([[6.0, 0.0], [0.0, -3.0], [0.0, 0.0], [0.5, 0.0]])  # two moving (> 1 m/s), two not
    half = probe.velocity_stats(0.5 * target, target)
    assert half["objects"] == 4 and half["moving"] == 2
    assert half["slope"] == pytest.approx(0.5)
    assert half["moving_along"] == pytest.approx((3.0 + 1.5) / 2) and half["moving_positive_share"] == 1.0
    assert half["speed_gt"] == pytest.approx((6 + 3 + 0 + 0.5) / 4)
    assert half["err"] == pytest.approx(half["speed_gt"] / 2) and half["err0"] == pytest.approx(half["speed_gt"])
    zero = probe.velocity_stats(np.zeros_like(target), target)
    assert zero["slope"] == 0.0 and zero["moving_along"] == 0.0 and zero["err"] == pytest.approx(zero["err0"])
    reversed_ = probe.velocity_stats(-target, target)
    assert reversed_["slope"] == pytest.approx(-1.0) and reversed_["moving_positive_share"] == 0.0
    static = probe.velocity_stats(np.ones((2, 2)), np.zeros((2, 2)))
    assert static["slope"] is None and static["moving"] == 0 and "moving_along" not in static
