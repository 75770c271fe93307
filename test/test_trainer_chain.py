"""The stage chain teacher -> label_encoder -> student (LabelDistill) on the tiny synthetic set, end to end through
the real data pipeline, checkpoints and DetectionEval (a couple of iterations per stage, small config)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

TEST_DIR = Path(__file__).resolve().parent
REPO = TEST_DIR.parent


def test_stage_chain_on_tiny_set(tiny_root, tmp_path):  # noqa: F811
    from labeldistill_ros.model.checkpoint import read_payload
    from labeldistill_training.config import load_train_config
    from labeldistill_training.trainer import Trainer

    torch.set_num_threads(1)
    work = tmp_path / "work"

    def cfg(stage, epochs=1, iters=2, **extra):
        over = {"data": {"dataroot": str(tiny_root)}, "loader": {"batch_size": 1, "num_workers": 0},
                "trainer": {"work_dir": str(work), "progress": False, "log_interval": 1,
                            "eval_at_end": stage == "student"},
                "stages": {stage: {"epochs": epochs, "max_iters_per_epoch": iters, "milestones": [5]}}}
        over.update(extra)
        return load_train_config(REPO / "config/train/cpu_small.yaml", over)

    s_t = Trainer(cfg("teacher"), "teacher").fit()
    assert s_t["global_step"] == 2 and (work / "teacher/final.pt").is_file()
    s_l = Trainer(cfg("label_encoder", epochs=2, iters=2), "label_encoder").fit()
    assert s_l["global_step"] == 4
    rows = list(csv.DictReader(open(work / "label_encoder/log.csv")))
    assert [r["kind"] for r in rows].count("epoch") == 2
    s_s = Trainer(cfg("student", distill={"method": "labeldistill", "kd_warmup_steps": 4}), "student").fit()
    assert s_s["global_step"] == 2
    # distill.kd_warmup_steps: the KD terms' weight ramps 1/4, 2/4, ... over the first optimizer steps
    warm = [float(r["loss_warmup_weight"]) for r in csv.DictReader(open(work / "student/log.csv"))
            if r["kind"] == "train"]
    assert warm == [0.25, 0.5]
    m = json.loads((work / "student/metrics.json").read_text())
    assert 0.0 <= m["mAP"] <= 1.0 and 0.0 <= m["NDS"] <= 1.0 and m["num_samples"] == 4
    # per class, the highest recall of its 2 m PR curve (the devkit's metric data), 0 for a class never detected
    assert set(m["per_class_max_recall"]) == set(m["class_ap"])
    assert all(0.0 <= v <= 1.0 for v in m["per_class_max_recall"].values())
    assert (work / "student/final.pt").resolve() == (work / "student/student.pt").resolve()  # written once
    ck = read_payload(work / "student/final.pt", "student")
    assert ck["extra"]["method"] == "labeldistill"
    assert any(k.startswith("label_adaptor.") for k in ck["extra"]["distiller"])
    assert "head.task_heads.0.branches.heatmap.1.bias" in ck["state_dict"]
    row = next(csv.DictReader(open(work / "student/log.csv")))
    for k in ("loss_det_hm", "loss_depth", "loss_kd_lidar_feat", "loss_kd_label_feat", "loss_kd_response"):
        assert k in row and float(row[k]) >= 0
    assert (work / "student/loss_curves.png").is_file()
    from labeldistill_ros.model.checkpoint import read_checkpoint

    assert read_checkpoint(work / "student/student.pt")["extra"]["method"] == "labeldistill"


def test_temporal_student_trains_on_the_node_path(tiny_root, tmp_path):  # noqa: F811
    """A student with one previous key frame trains through the real pipeline: the previous frame is lifted in its
    own key ego frame and warped with the batch's prev2curr; the runtime checkpoint carries the 0.5 s offset."""
    import yaml

    from labeldistill_ros.model.checkpoint import read_checkpoint
    from labeldistill_training.config import load_train_config
    from labeldistill_training.trainer import Trainer

    torch.set_num_threads(1)
    model = yaml.safe_load((REPO / "config/model/r18_128x352_cpu.yaml").read_text())
    model["temporal"] = {"num_prev_frames": 1}
    (tmp_path / "temporal.yaml").write_text(yaml.safe_dump(model))
    cfg = load_train_config(REPO / "config/train/cpu_small.yaml", {
        "model_config": str(tmp_path / "temporal.yaml"), "distill": {"method": "none"},
        "data": {"dataroot": str(tiny_root), "prev_key_offsets": [-1]},
        "loader": {"batch_size": 2, "num_workers": 0},
        "trainer": {"work_dir": str(tmp_path / "work"), "progress": False, "log_interval": 1, "eval_at_end": False},
        "stages": {"student": {"epochs": 1, "max_iters_per_epoch": 1, "milestones": [5]}}})
    s = Trainer(cfg, "student").fit()
    assert s["global_step"] == 1
    ck = read_checkpoint(tmp_path / "work/student/student.pt")
    assert ck["model_config"].temporal.num_prev_frames == 1
    assert ck["model_config"].temporal.prev_offsets_s == (0.5,)
