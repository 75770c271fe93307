"""Trainer mechanics: bad configs name their key, LR schedule, EMA, atomic checkpoints, resume after a kill
mid-epoch equals an uninterrupted run, and a two-process gloo DDP run via torchrun."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labeldistill_training.config import TrainConfigError, load_train_config, train_config_from_dict
from labeldistill_training.ema import ModelEMA
from labeldistill_training.trainer import KILL_ENV, atomic_save, load_checkpoint

TEST_DIR = Path(__file__).resolve().parent
REPO = TEST_DIR.parent
HELPER = TEST_DIR / "trainer_helpers.py"


def _env(**kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop(KILL_ENV, None)
    env.update({k: str(v) for k, v in kw.items()})
    return env


@pytest.mark.parametrize("data,key", [
    ({"stages": {"student": {"lr": "fast"}}}, "'stages.student.lr'"),
    ({"distill": {"method": "labeldistil"}}, "'distill.method'"),
    ({"distil": {}}, "'distil'"),
    ({"teacher": {"code_weights": [1, 2]}}, "'teacher.code_weights'"),
    ({"trainer": {"frozen_bn": "sometimes"}}, "'trainer.frozen_bn'"),
    ({"stages": {"teacher": {"epoch": 3}}}, "'stages.teacher.epoch'"),
])
def test_bad_config_names_the_key(data, key):
    with pytest.raises(TrainConfigError, match=key.replace(".", r"\.")):
        train_config_from_dict({"model_config": "m.yaml", **data})


def test_cli_bad_config_exits_2_naming_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model_config: m.yaml\nloader:\n  batch_size: two\n")
    r = subprocess.run([sys.executable, "-m", "labeldistill_training.cli", "--config", str(p), "--stage", "teacher"],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 2 and "'loader.batch_size'" in r.stderr


def test_shipped_configs_load():
    for p in sorted((REPO / "config/train").glob("*.yaml")):
        cfg = load_train_config(p)
        assert cfg.distill.method in ("none", "labeldistill", "unidistill", "cmkd", "stereodistill"), p


def test_stage_defaults_and_partial_override():
    cfg = train_config_from_dict({"model_config": "m.yaml", "stages": {"teacher": {"epochs": 2}}})
    assert cfg.stages.teacher.epochs == 2 and cfg.stages.teacher.lr == 1e-4 and cfg.stages.teacher.milestones == (16, 19)
    assert cfg.stages.student.lr == 4e-4 and cfg.stages.student.milestones == (19, 23)
    assert cfg.stages.label_encoder.lr == 1e-3 and cfg.stages.label_encoder.milestones == (10, 11)


def test_ema_ramp_and_atomic_checkpoint(tmp_path):
    m = torch.nn.Linear(2, 1)
    ema = ModelEMA(m, decay=0.5, ramp=0.0)
    with torch.no_grad():
        m.weight.fill_(1.0)
        ema.ema.weight.fill_(0.0)
    ema.update(m)
    assert torch.allclose(ema.ema.weight, torch.full_like(m.weight, 0.5))
    atomic_save({"format_version": 1, "kind": "x", "state_dict": m.state_dict()}, tmp_path / "a.pt")
    assert load_checkpoint(tmp_path / "a.pt", "x")["kind"] == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    (tmp_path / "b.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "b.pt")
    with pytest.raises(RuntimeError, match="expected 'teacher'"):
        load_checkpoint(tmp_path / "a.pt", "teacher")


def _final(work: Path) -> dict:
    return torch.load(work / "teacher" / "final.pt", weights_only=True)["state_dict"]


def test_resume_after_kill_mid_epoch_matches_uninterrupted(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    cmd = [sys.executable, str(HELPER), "--epochs", "3", "--work-dir"]
    p_full = subprocess.Popen(cmd + [str(full)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    # 4 iterations per epoch: step 6 is in the middle of the second epoch
    r = subprocess.run(cmd + [str(killed)], env=_env(**{KILL_ENV: 6}), capture_output=True, text=True)
    assert r.returncode == -9, r.stdout + r.stderr
    names = sorted(p.name for p in (killed / "teacher").iterdir())
    assert "last.pt" in names and "epoch_001.pt" in names and "epoch_002.pt" not in names
    assert not any(n.endswith(".tmp") for n in names)
    state = load_checkpoint(killed / "teacher" / "last.pt", "teacher_state")
    assert state["epoch"] == 0 and state["global_step"] == 4
    r = subprocess.run(cmd + [str(killed)], env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming" in r.stdout and '"global_step": 12' in r.stdout
    out, _ = p_full.communicate(timeout=300)
    assert p_full.returncode == 0, out
    a, b = _final(full), _final(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    rows = (killed / "teacher" / "log.csv").read_text().splitlines()
    steps = [int(r.split(",")[2]) for r in rows[1:] if r.startswith("train")]
    assert steps == list(range(1, 13))  # rows of the lost half-epoch were dropped on resume
    assert (killed / "teacher" / "loss_curves.png").stat().st_size > 1000


def test_two_process_gloo_ddp(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    r = subprocess.run(launcher + ["--standalone", "--nproc_per_node", "2", str(HELPER), "--epochs", "1",
                                   "--work-dir", str(tmp_path)], env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # 16 samples / 2 ranks / batch 2 -> 4 steps per rank; both ranks report the same step count
    assert r.stdout.count('"global_step": 4') == 2
    assert (tmp_path / "teacher" / "final.pt").is_file()
    assert load_checkpoint(tmp_path / "teacher" / "last.pt", "teacher_state")["epoch"] == 0


def test_previous_frame_offsets_reach_the_student_config_and_its_inputs(tmp_path):
    """The data's prev_key_offsets become the student's temporal.prev_offsets_s (key offset k -> -k * 0.5 s), so the
    runtime checkpoint carries them; a model YAML stating other offsets is an error; student_inputs passes the
    batch's prev2curr (previous key ego -> current key ego) with each previous frame's own cam2ego."""
    import yaml

    from labeldistill_ros.model.checkpoint import read_checkpoint, save_checkpoint
    from labeldistill_training.trainer import Trainer, build_student, data_config_for_stage, student_inputs

    model = yaml.safe_load((REPO / "config/model/r18_128x352_cpu.yaml").read_text())
    model["temporal"] = {"num_prev_frames": 2}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(model))
    model["temporal"]["prev_offsets_s"] = [1.0, 2.0]
    (tmp_path / "m_stated.yaml").write_text(yaml.safe_dump(model))

    def trainer(model_yaml, offsets):
        cfg = train_config_from_dict({
            "model_config": str(tmp_path / model_yaml), "trainer": {"work_dir": str(tmp_path / "work")},
            "data": {"dataroot": str(tmp_path), "prev_key_offsets": offsets,
                     "image_aug": {"final_dim": [128, 352]}, "depth": {"stride": 16}}})
        return Trainer(cfg, "student", dataset_factory=lambda *a: None, collate_fn=lambda b: b)

    t = trainer("m.yaml", [-1, -2])
    assert t.model_cfg.temporal.prev_offsets_s == (0.5, 1.0)
    assert data_config_for_stage(t.cfg, t.model_cfg, "student").prev_key_offsets == (-1, -2)
    save_checkpoint(tmp_path / "student.pt", build_student(t.model_cfg))
    assert read_checkpoint(tmp_path / "student.pt")["model_config"].temporal.effective_offsets_s == (0.5, 1.0)
    assert trainer("m_stated.yaml", [-2, -4]).model_cfg.temporal.prev_offsets_s == (1.0, 2.0)
    with pytest.raises(ValueError, match=r"prev_offsets_s \[1\.0, 2\.0\] s differ from the data's"):
        trainer("m_stated.yaml", [-1, -2])
    with pytest.raises(ValueError, match="data.prev_key_offsets has 1 frames"):
        trainer("m.yaml", [-1])
    with pytest.raises(ValueError, match="most recent first"):
        trainer("m.yaml", [-2, -1])
    with pytest.raises(ValueError, match="differ from the data's"):  # also when the data section changes later
        data_config_for_stage(trainer("m_stated.yaml", [-2, -4]).cfg, t.model_cfg, "student")

    B, F, N = 2, 3, 2
    p2c = torch.eye(4).repeat(B, F - 1, 1, 1)
    p2c[:, :, 0, 3] = torch.tensor([-3.0, -6.0])
    cam2ego = torch.randn(B, F, N, 4, 4)
    batch = {"imgs": torch.randn(B, F, N, 3, 8, 8), "K": torch.randn(B, F, N, 3, 3), "cam2ego": cam2ego,
             "ida": torch.randn(B, F, N, 4, 4), "bda": torch.eye(4).repeat(B, 1, 1), "prev2curr": p2c}
    kw = student_inputs(batch)
    assert kw["prev2curr"] is p2c and torch.equal(kw["prev_cam2ego"], cam2ego[:, 1:])
    assert torch.equal(kw["cam2ego"], cam2ego[:, 0]) and kw["prev_images"].shape == (B, F - 1, N, 3, 8, 8)
    with pytest.raises(ValueError, match="prev2curr"):
        student_inputs({k: v for k, v in batch.items() if k != "prev2curr"})
