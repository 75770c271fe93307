"""Trainer mechanics: bad configs (the data section included) name their key before any network is built, the
lr schedule and EMA (torch's MultiStepLR / AveragedModel with BEVDepth's ramp), atomic checkpoints, a run killed
mid-epoch and one stopped by trainer.max_steps both resume to the uninterrupted result, and a two-process gloo DDP
run via torchrun."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labeldistill_ros.model.checkpoint import CheckpointError, atomic_save, read_payload
from labeldistill_training.config import TrainConfigError, load_train_config, train_config_from_dict
from labeldistill_training.ema import ema_model, ema_updates, load_ema_state

TEST_DIR = Path(__file__).resolve().parent
REPO = TEST_DIR.parent
HELPER = TEST_DIR / "trainer_helpers.py"


def _env(**kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
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


def test_bad_data_field_fails_at_load_before_any_network(tmp_path, monkeypatch):
    """The data section is a typed DataConfig checked with the rest of the file (key path and fix in the message);
    whether it fits the model is checked when the Trainer is created, before any network is built."""
    import labeldistill_training.trainer as trainer_module

    def no_network(*args, **kwargs):
        raise AssertionError("a network was built before the data section was checked")

    monkeypatch.setattr(trainer_module, "build_stage", no_network)
    small = REPO / "config/train/cpu_small.yaml"
    with pytest.raises(TrainConfigError, match=r"cpu_small\.yaml: 'data\.depth\.stride' must be >= 1 pixels"):
        load_train_config(small, {"data": {"depth": {"stride": 0}}})
    with pytest.raises(TrainConfigError, match=r"unknown key 'data\.image_augs'; did you mean 'data\.image_aug'"):
        load_train_config(small, {"data": {"image_augs": {}}})
    with pytest.raises(TrainConfigError, match=r"'data\.bev_aug\.flip_x_prob' must be a probability in \[0, 1\]"):
        load_train_config(small, {"data": {"bev_aug": {"flip_x_prob": 1.5}}})
    with pytest.raises(TrainConfigError, match=r"'data\.lidar_sweeps' must be an integer"):
        load_train_config(small, {"data": {"lidar_sweeps": "two"}})
    assert load_train_config(small).data.image_aug.final_dim == (128, 352)  # typed, not a dict
    cfg = load_train_config(small, {"data": {"image_aug": {"final_dim": [256, 704]}},
                                    "trainer": {"work_dir": str(tmp_path)}})
    with pytest.raises(ValueError, match=r"data\.image_aug\.final_dim \[256, 704\] != the model's input_size "
                                         r"\[128, 352\]: make them equal"):
        trainer_module.Trainer(cfg, "teacher")


def test_ema_is_bevdepth_ramp_on_averaged_model():
    """AveragedModel + the ramped multi_avg_fn: the k-th update uses decay * (1 - exp(-k / ramp)) from the copy
    made at construction (BEVDepth's ModelEMA), over parameters and BN statistics; its state resumes the ramp."""
    import copy
    import math

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ema_model(m, decay=0.9, ramp=5.0)
    ref = copy.deepcopy(m.state_dict())
    for k in range(1, 4):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1.0)
        m.train()
        m(torch.randn(4, 3))
        ema.update_parameters(m)
        d = 0.9 * (1 - math.exp(-k / 5.0))
        for name, v in ref.items():  # BEVDepth's update, written out
            v.copy_(v * d + m.state_dict()[name] * (1 - d) if v.is_floating_point() else m.state_dict()[name])
    assert ema_updates(ema) == 3 and not any(p.requires_grad for p in ema.parameters())
    for name, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, ref[name], rtol=0, atol=1e-6)
    again = ema_model(m, decay=0.9, ramp=5.0)
    load_ema_state(again, ema.state_dict())
    assert ema_updates(again) == 3
    old = ema_model(m, decay=0.9, ramp=5.0)  # the earlier last.pt layout {"module", "updates"}
    load_ema_state(old, {"module": ema.module.state_dict(), "updates": 3})
    assert ema_updates(old) == 3
    const = ema_model(torch.nn.Linear(2, 1), decay=0.5, ramp=0.0)  # ramp 0: constant decay
    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        const.module.weight.fill_(0.0)
    const.update_parameters(lin)
    assert torch.equal(const.module.weight, torch.full_like(lin.weight, 0.5))


def test_multistep_schedule_matches_the_reference_rule():
    """MultiStepLR stepped per epoch: epoch e trains at lr * gamma ** #(milestones <= e), every group at its own
    multiplier; an older last.pt without a scheduler state resumes at the same lr."""
    from labeldistill_training import optimization as optim

    cfg = train_config_from_dict({"model_config": "m.yaml", "stages": {"teacher": {"lr": 1.0, "milestones": [2, 4],
                                                                                  "gamma": 0.5}}})
    net = torch.nn.Linear(2, 2)
    opt = optim.build_optimizer(net, cfg, "teacher")
    sched = optim.build_scheduler(opt, cfg, "teacher")
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    opt2 = optim.build_optimizer(net, cfg, "teacher")
    sched2 = optim.build_scheduler(opt2, cfg, "teacher")
    optim.restore_schedule(opt2, sched2, None, epochs_done=4)
    assert opt2.param_groups[0]["lr"] == 0.25
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == 0.25 and sched2.last_epoch == 5


def test_atomic_checkpoint_and_clear_errors(tmp_path):
    m = torch.nn.Linear(2, 1)
    atomic_save({"format_version": 1, "kind": "x", "state_dict": m.state_dict()}, tmp_path / "a.pt")
    assert read_payload(tmp_path / "a.pt", "x")["kind"] == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    (tmp_path / "b.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"b\.pt is not a readable torch checkpoint.*write it again"):
        read_payload(tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"a\.pt holds a 'x' checkpoint, expected 'teacher': point to the "
                                              r"teacher file"):
        read_payload(tmp_path / "a.pt", "teacher")
    with pytest.raises(CheckpointError, match=r"no checkpoint file at .*c\.pt"):
        read_payload(tmp_path / "c.pt")


def _final(work: Path) -> dict:
    return torch.load(work / "teacher" / "final.pt", weights_only=True)["state_dict"]


def _rows(work: Path, kind: str) -> list[list[str]]:
    lines = (work / "teacher" / "log.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, r.split(","))) for r in lines[1:] if r.startswith(kind)]


def test_killed_and_stopped_runs_resume_to_the_uninterrupted_result(tmp_path, capsys):
    """A crash mid-epoch (SIGKILL from a step callback at step 6) resumes after the last completed epoch; a clean
    stop by trainer.max_steps inside an epoch (step 10 of 12) resumes at the next batch with the random states,
    schedule, EMA and epoch sums it had: the final weights and the logged losses equal an uninterrupted run.
    The killed run is a process of its own; the others run the same entry point in this process."""
    from trainer_helpers import main as train

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    cmd = [sys.executable, str(HELPER), "--epochs", "3", "--work-dir"]
    # 4 iterations per epoch: step 6 is in the middle of the second epoch
    r = subprocess.run(cmd + [str(resumed), "--kill-at-step", "6"], env=_env(), capture_output=True, text=True)
    assert r.returncode == -9, r.stdout + r.stderr
    names = sorted(p.name for p in (resumed / "teacher").iterdir())
    assert "last.pt" in names and "epoch_001.pt" in names and "epoch_002.pt" not in names
    assert not any(n.endswith(".tmp") for n in names)
    state = read_payload(resumed / "teacher" / "last.pt", "teacher_state")
    assert state["epoch"] == 0 and state["iteration"] is None and state["global_step"] == 4
    capsys.readouterr()
    assert train(["--epochs", "3", "--work-dir", str(resumed), "--max-steps", "10"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and '"global_step": 10' in out and '"stopped": true' in out
    state = read_payload(resumed / "teacher" / "last.pt", "teacher_state")
    assert (state["epoch"], state["iteration"], state["global_step"]) == (2, 2, 10)
    assert state["scheduler"]["last_epoch"] == 2 and not (resumed / "teacher" / "final.pt").exists()
    assert train(["--epochs", "3", "--work-dir", str(resumed)]) == 0
    out = capsys.readouterr().out
    assert "in epoch 3 after 2 batches (step 10)" in out and '"global_step": 12' in out
    assert train(["--epochs", "3", "--work-dir", str(full)]) == 0
    out = capsys.readouterr().out
    assert '"global_step": 12' in out and "resuming from" not in out
    a, b = _final(full), _final(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    steps = [int(r["step"]) for r in _rows(resumed, "train")]
    assert steps == list(range(1, 13))  # rows of the lost half-epoch were dropped on resume
    for x, y in zip(_rows(full, "train") + _rows(full, "epoch"), _rows(resumed, "train") + _rows(resumed, "epoch")):
        assert (x["step"], x["lr"]) == (y["step"], y["lr"])
        assert float(x["loss"]) == pytest.approx(float(y["loss"]), rel=1e-4), (x, y)
    assert [r["lr"] for r in _rows(full, "epoch")] == ["0.002", "0.002", "0.0002"]  # milestone [2]
    assert (resumed / "teacher" / "loss_curves.png").stat().st_size > 1000


def test_step_callback_sees_each_step_and_can_stop(tmp_path):
    """Trainer(on_step=...) gets a StepInfo after every optimizer step; returning True stops like max_steps."""
    from labeldistill_training.trainer import Trainer
    from trainer_helpers import collate, fake_config, fake_factory

    torch.set_num_threads(1)
    seen = []

    def stop_at_3(info):
        seen.append((info.epoch, info.iteration, info.step, info.stage))
        assert info.loss > 0 and "hm" in " ".join(info.parts)
        return info.step == 3

    cfg = train_config_from_dict(fake_config(tmp_path, epochs=2, iters=2))
    s = Trainer(cfg, "teacher", dataset_factory=fake_factory, collate_fn=collate, on_step=stop_at_3).fit()
    assert seen == [(0, 1, 1, "teacher"), (0, 2, 2, "teacher"), (1, 1, 3, "teacher")]
    assert s["stopped"] and s["global_step"] == 3 and not (tmp_path / "teacher" / "final.pt").exists()
    state = read_payload(tmp_path / "teacher" / "last.pt", "teacher_state")
    assert (state["epoch"], state["iteration"]) == (1, 1) and len(state["rng"]) == 1
    s = Trainer(cfg, "teacher", dataset_factory=fake_factory, collate_fn=collate, on_step=lambda info: True).fit()
    assert not s["stopped"] and s["global_step"] == 4  # a stop at the last step of the last epoch: complete
    assert (tmp_path / "teacher" / "final.pt").is_file()


@pytest.mark.parametrize("cpu_amp", [False, True, "auto"])
def test_cpu_amp_trains_in_bfloat16_with_fp32_weights(tmp_path, cpu_amp):
    """stages.<stage>.cpu_amp: the step's convolutions run in bfloat16 autocast on the CPU, while the weights,
    the optimizer and the written checkpoint stay float32; off, everything is float32; auto: bfloat16 exactly
    where /proc/cpuinfo names native bf16."""
    from labeldistill_training.trainer import Trainer, cpu_has_native_bf16
    from trainer_helpers import collate, fake_config, fake_factory

    torch.set_num_threads(1)
    dtypes = []

    class Probed(Trainer):
        def build_stage(self):
            stage = super().build_stage()
            conv = next(m for m in stage.modules() if isinstance(m, torch.nn.Conv2d))
            conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
            return stage

    raw = fake_config(tmp_path, epochs=1, iters=2)
    raw["stages"]["teacher"]["cpu_amp"] = cpu_amp
    s = Probed(train_config_from_dict(raw), "teacher", dataset_factory=fake_factory, collate_fn=collate).fit()
    assert s["global_step"] == 2
    train_dtypes = set(dtypes[:2])  # the two training steps (evaluation afterwards runs without autocast)
    bf16 = bool(cpu_has_native_bf16()) if cpu_amp == "auto" else cpu_amp
    assert train_dtypes == ({torch.bfloat16} if bf16 else {torch.float32})
    sd = read_payload(tmp_path / "teacher" / "final.pt", "teacher")["state_dict"]
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())


@pytest.mark.parametrize("value", ["yes", 1, "AUTO"])
def test_cpu_amp_takes_only_true_false_or_auto(tmp_path, value):
    from trainer_helpers import fake_config

    raw = fake_config(tmp_path, epochs=1, iters=2)
    raw["stages"]["teacher"]["cpu_amp"] = value
    with pytest.raises(TrainConfigError, match="stages.teacher.cpu_amp"):
        train_config_from_dict(raw)


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
    assert read_payload(tmp_path / "teacher" / "last.pt", "teacher_state")["epoch"] == 0


def test_previous_frame_offsets_reach_the_student_config_and_its_inputs(tmp_path):
    """The data's prev_key_offsets become the student's temporal.prev_offsets_s (key offset k -> -k * 0.5 s), so the
    runtime checkpoint carries them; a model YAML stating other offsets is an error; student_inputs passes the
    batch's prev2curr (previous key ego -> current key ego) with each previous frame's own cam2ego."""
    import yaml

    from labeldistill_ros.model.checkpoint import read_checkpoint, save_checkpoint
    from labeldistill_training.batch import student_inputs
    from labeldistill_training.builders import build_student
    from labeldistill_training.stage_data import data_config_for_stage
    from labeldistill_training.trainer import Trainer

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
