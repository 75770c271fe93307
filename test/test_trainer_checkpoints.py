"""Trainer outputs and initialisation (issue 14): ImageNet initialisation of the student's image backbone from a
torchvision state_dict (and what wins over it), the from-scratch R50 warning, the printed effective lr, UniDistill's
grad-clip override, and checkpoint retention (the newest K epoch files + last.pt + the final weights; the student's
weights written once, in the runtime's format)."""
from __future__ import annotations

import os
import types
import warnings
from pathlib import Path

import pytest
import torch

from labeldistill_ros.model.checkpoint import read_payload
from labeldistill_training.builders import SCRATCH_R50_WARNING, load_pretrained_backbone
from labeldistill_training.config import load_train_config, train_config_from_dict
from labeldistill_training.trainer import Trainer
from model_support import torchvision_resnet_keys
from trainer_helpers import camera_collate, camera_factory, collate, fake_config, fake_factory

TEST_DIR = Path(__file__).resolve().parent
REPO = TEST_DIR.parent

SMALL = str(REPO / "config/model/r18_128x352_cpu.yaml")


class _Stop(Exception):
    pass


class _InitProbe(Trainer):
    """Runs ``fit`` up to the optimizer: everything that initialises the weights, then records them and stops."""

    def build_optimizer(self, trainable):
        self.initial_state = {k: v.detach().clone() for k, v in trainable.state_dict().items()}
        raise _Stop


def _torchvision_file(path: Path, depth: int = 18, drop=(), extra=()) -> dict:
    """A torchvision-format ResNet state_dict (torchvision's key names incl. ``fc.*``, random values) saved at
    ``path``; returns it."""
    g = torch.Generator().manual_seed(1)
    sd = {k: (torch.randn(s, generator=g) if s else torch.tensor(7)) for k, s in torchvision_resnet_keys(depth).items()
          if k not in drop}
    for k in extra:
        sd[k] = torch.zeros(3)
    torch.save(sd, path)
    return sd


def _student_cfg(tmp_path: Path, **student) -> object:
    return train_config_from_dict({
        "model_config": SMALL, "distill": {"method": "none"}, "loader": {"batch_size": 2, "num_workers": 0},
        "student": student,
        "stages": {"student": {"epochs": 1, "max_iters_per_epoch": 1, "milestones": [5], "amp": False}},
        "trainer": {"work_dir": str(tmp_path / "work"), "eval_at_end": False, "progress": False, "log_interval": 1}})


def _probe_init(cfg) -> dict:
    t = _InitProbe(cfg, "student", dataset_factory=camera_factory, collate_fn=camera_collate)
    with pytest.raises(_Stop):
        t.fit()
    return t.initial_state


@pytest.mark.parametrize("wrapped", [False, True])
def test_pretrained_backbone_lands_every_key(tmp_path, wrapped):
    """Every backbone tensor of the file lands in the student (equal values, BN statistics included); ``fc.*`` is
    ignored; a ``{"state_dict": ...}`` wrapper is accepted; the rest of the student keeps its own init."""
    sd = _torchvision_file(tmp_path / "resnet18.pth")
    assert "fc.weight" in sd and "layer1.0.bn1.running_mean" in sd and "conv1.weight" in sd
    if wrapped:
        torch.save({"state_dict": sd, "meta": {"epoch": 90}}, tmp_path / "resnet18.pth")
    state = _probe_init(_student_cfg(tmp_path, pretrained_backbone=str(tmp_path / "resnet18.pth")))
    backbone = {k[len("student.backbone."):]: v for k, v in state.items() if k.startswith("student.backbone.")}
    assert set(backbone) == {k for k in sd if not k.startswith("fc.")}
    for k, v in backbone.items():
        assert torch.equal(v, sd[k]), k
    scratch = _probe_init(_student_cfg(tmp_path))  # same seed, no file: the rest of the student is unchanged
    assert all(torch.equal(scratch[k], v) for k, v in state.items() if not k.startswith("student.backbone."))
    assert not torch.equal(scratch["student.backbone.conv1.weight"], state["student.backbone.conv1.weight"])


def test_pretrained_backbone_wrong_keys_name_the_file_and_keys(tmp_path):
    bad = tmp_path / "not_resnet18.pth"
    _torchvision_file(bad, drop=("layer1.0.bn1.running_mean",), extra=("layer5.0.conv1.weight",))
    with pytest.raises(ValueError) as e:
        _probe_init(_student_cfg(tmp_path, pretrained_backbone=str(bad)))
    msg = str(e.value)
    assert str(bad) in msg and "student.pretrained_backbone" in msg
    assert "missing keys ['layer1.0.bn1.running_mean']" in msg and "unexpected keys ['layer5.0.conv1.weight']" in msg
    _torchvision_file(tmp_path / "resnet50.pth", depth=50)  # a ResNet-50 file for the ResNet-18 student
    with pytest.raises(ValueError, match=r"resnet50\.pth does not fit a torchvision ResNet-18 backbone.*unexpected "
                                         r"keys.*layer1\.0\.bn3"):
        _probe_init(_student_cfg(tmp_path, pretrained_backbone=str(tmp_path / "resnet50.pth")))
    with pytest.raises(ValueError, match=r"missing\.pth: no such torchvision ResNet state_dict file"):
        _probe_init(_student_cfg(tmp_path, pretrained_backbone=str(tmp_path / "missing.pth")))


def test_r50_from_scratch_warns_once():
    cfg = train_config_from_dict({"model_config": "m.yaml"})
    lines: list[str] = []
    r50 = types.SimpleNamespace(backbone=types.SimpleNamespace(depth=50))
    with pytest.warns(UserWarning, match=r"ImageNet weights.*ResNet50_Weights\.IMAGENET1K_V1.*resnet50-0676ba61\.pth"):
        assert load_pretrained_backbone(r50, cfg, lines.append) is False
    assert len(lines) == 1 and "resnet50-11ad3fa6.pth" in lines[0] and "student.pretrained_backbone" in lines[0]
    assert "resnet50-0676ba61.pth" in SCRATCH_R50_WARNING
    quiet = [train_config_from_dict({"model_config": "m.yaml", "stages": {"student": {"init_checkpoint": "x.pt"}}}),
             cfg]
    students = [r50, types.SimpleNamespace(backbone=types.SimpleNamespace(depth=18))]
    for c, s in zip(quiet, students):  # an init checkpoint, or a ResNet-18 (the CPU configs): no warning
        lines.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_pretrained_backbone(s, c, lines.append)
        assert lines == []


def test_init_checkpoint_and_resume_win_over_the_pretrained_backbone(tmp_path, capsys):
    """A student trained two epochs (resumed after the first) leaves student.pt (runtime format, the node's file),
    final.pt -> student.pt, the newest K epoch files in the same format, last.pt; a new run initialised from that
    student.pt starts from its weights even with a pretrained backbone set (init_checkpoint wins)."""
    from labeldistill_ros.model.checkpoint import load_checkpoint as load_runtime
    from labeldistill_ros.model.checkpoint import read_checkpoint

    torch.set_num_threads(1)
    sd = _torchvision_file(tmp_path / "resnet18.pth")

    def run(epochs):
        cfg = train_config_from_dict({
            "model_config": SMALL, "distill": {"method": "none"}, "loader": {"batch_size": 2, "num_workers": 0},
            "student": {"pretrained_backbone": str(tmp_path / "resnet18.pth")},
            "stages": {"student": {"epochs": epochs, "max_iters_per_epoch": 1, "milestones": [5], "amp": False}},
            "trainer": {"work_dir": str(tmp_path / "work"), "eval_at_end": False, "progress": False,
                        "log_interval": 1, "keep_checkpoints": 1}})
        return Trainer(cfg, "student", dataset_factory=camera_factory, collate_fn=camera_collate).fit()

    run(1)
    s2 = run(2)
    out = capsys.readouterr().out
    assert "resuming from" in out and s2["global_step"] == 2
    d = tmp_path / "work" / "student"
    names = sorted(p.name for p in d.iterdir())
    assert names == ["epoch_002.pt", "final.pt", "last.pt", "log.csv", "loss_curves.png", "student.pt",
                     "summary.json", "tb"], names  # tb: TensorBoard events (train extra)
    assert (d / "final.pt").is_symlink() and os.readlink(d / "final.pt") == "student.pt"
    assert os.path.samefile(d / "epoch_002.pt", d / "student.pt")  # the last epoch's file: a link, not a copy
    rt = read_checkpoint(d / "student.pt")  # the runtime's reader (the node)
    assert {k: rt["extra"][k] for k in ("method", "epoch", "stage", "distiller")} == \
        {"method": "none", "epoch": 2, "stage": "student", "distiller": {}}
    assert rt["extra"]["train_config"]["trainer"]["keep_checkpoints"] == 1
    ck = read_payload(d / "final.pt", "student")  # the trainer's reader, through the link
    assert ck["kind"] == "student" and ck["state_dict"].keys() == rt["state_dict"].keys()
    assert read_checkpoint(d / "epoch_002.pt")["state_dict"].keys() == rt["state_dict"].keys()
    load_runtime(d / "epoch_002.pt")  # any kept epoch loads into the runtime model
    # a fresh run from that student.pt with the pretrained backbone also set: the checkpoint wins
    cfg = _student_cfg(tmp_path / "again", pretrained_backbone=str(tmp_path / "resnet18.pth"))
    cfg.stages.student.init_checkpoint = str(d / "student.pt")
    state = _probe_init(cfg)
    assert "init from" in capsys.readouterr().out
    for k, v in rt["state_dict"].items():
        assert torch.equal(state[f"student.{k}"], v), k
    assert not torch.equal(state["student.backbone.conv1.weight"], sd["conv1.weight"])


def test_five_epochs_keep_the_newest_three(tmp_path):
    torch.set_num_threads(1)
    cfg = train_config_from_dict(fake_config(tmp_path, epochs=5, iters=1))
    assert cfg.trainer.keep_checkpoints == 3
    Trainer(cfg, "teacher", dataset_factory=fake_factory, collate_fn=collate).fit()
    names = sorted(p.name for p in (tmp_path / "teacher").iterdir() if p.name != "tb")
    assert names == ["epoch_003.pt", "epoch_004.pt", "epoch_005.pt", "final.pt", "last.pt", "log.csv",
                     "loss_curves.png", "summary.json"], names
    assert read_payload(tmp_path / "teacher" / "epoch_005.pt", "teacher")["epoch"] == 4
    cfg0 = train_config_from_dict({**fake_config(tmp_path / "none", epochs=2, iters=1),
                                   "trainer": {**fake_config(tmp_path / "none")["trainer"], "keep_checkpoints": 0}})
    Trainer(cfg0, "teacher", dataset_factory=fake_factory, collate_fn=collate).fit()
    assert not list((tmp_path / "none" / "teacher").glob("epoch_*.pt"))
    assert (tmp_path / "none" / "teacher" / "final.pt").is_file()


def test_reference_lr_rule_is_printed(tmp_path, capsys):
    """The R50 config states the reference rule (AdamW 4e-4 at total batch 16 = 4 GPUs x 4, backbone x0.5); the
    trainer prints the effective lr and the batch it was scaled from."""
    cfg = load_train_config(REPO / "config/train/labeldistill_r50_256x704.yaml",
                            {"trainer": {"work_dir": str(tmp_path)}})
    s = cfg.stages.student
    assert (s.lr, s.base_batch_size, cfg.loader.batch_size, cfg.student.backbone_lr_mult) == (4e-4, 16, 4, 0.5)
    assert (s.weight_decay, s.grad_clip, s.epochs, tuple(s.milestones)) == (1e-2, 5.0, 30, (19, 23))
    t = Trainer(cfg, "student", dataset_factory=lambda *a: None, collate_fn=lambda b: b)
    assert t.base_lr() == pytest.approx(1e-4)  # one process x batch 4 = 4 of the reference's 16
    line = t.describe_lr()
    assert "lr 0.0001 = stages.student.lr 0.0004 at base batch 16, scaled x4/16 to the total batch 4" in line
    assert "2.5e-05 per sample" in line and "x0.5 = 5e-05" in line and "grad clip 5" in line
    small = load_train_config(REPO / "config/train/cpu_small.yaml", {"trainer": {"work_dir": str(tmp_path)}})
    t = Trainer(small, "teacher", dataset_factory=lambda *a: None, collate_fn=lambda b: b)
    assert "as given (no base_batch_size: not scaled" in t.describe_lr()


def test_unidistill_grad_clip_override(tmp_path):
    def trainer(method, clip):
        cfg = train_config_from_dict({"model_config": SMALL, "trainer": {"work_dir": str(tmp_path)},
                                      "distill": {"method": method, "unidistill": {"grad_clip": clip}}})
        return Trainer(cfg, "student", dataset_factory=lambda *a: None, collate_fn=lambda b: b)

    assert trainer("unidistill", None).grad_clip() == 5.0  # default: the student stage's clip, as every method
    assert trainer("unidistill", 0.1).grad_clip() == 0.1  # the reference's
    assert trainer("labeldistill", 0.1).grad_clip() == 5.0  # only UniDistill's own switch
    assert "grad clip 0.1" in trainer("unidistill", 0.1).describe_lr()
    with pytest.raises(ValueError, match=r"'distill\.unidistill\.grad_clip' must be > 0"):
        train_config_from_dict({"model_config": SMALL, "distill": {"unidistill": {"grad_clip": 0}}})


def test_per_class_max_recall_from_the_devkit_metric_data(tmp_path):
    """The highest recall of each class's PR curve at the 2 m threshold: the devkit's ``max_recall`` (recall on a
    101-point grid, confidence 0 past the last detection); other thresholds are ignored."""
    import json

    from labeldistill_training.stage_eval import per_class_max_recall

    grid = [i / 100 for i in range(101)]

    def md(last):  # detections up to recall grid point `last`
        return {"recall": grid, "precision": [0.5] * 101, "confidence": [0.9 if i <= last else 0.0 for i in range(101)]}

    details = {"car:2.0": md(37), "car:4.0": md(80), "pedestrian:2.0": {**md(0), "confidence": [0.0] * 101},
               "barrier:2.0": md(5)}
    (tmp_path / "metrics_details.json").write_text(json.dumps(details))
    assert per_class_max_recall(tmp_path / "metrics_details.json") == {"car": 0.37, "pedestrian": 0.0, "barrier": 0.05}
    assert per_class_max_recall(tmp_path / "none.json") == {}
