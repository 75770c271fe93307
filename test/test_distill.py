"""Distillation wiring on the real student (small CPU config): every method runs forward/backward, the frozen
teacher and label encoder get no gradient and stay in eval mode, partition slices and adaptors line up."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from labeldistill_training.config import train_config_from_dict
from labeldistill_training.distill import LabelDistillDistiller, build_distiller
from labeldistill_training.losses.depth import DepthLoss
from labeldistill_training.losses.detection import CenterPointLoss, CenterPointTargetAssigner
from labeldistill_training.models.adaptors import partition_slices
from labeldistill_training.builders import (build_label_encoder, build_student, build_teacher, distiller_for,
                                            task_class_ids)
from labeldistill_training.stages import Frozen, StudentStage
from labeldistill_ros.model.config import load_model_config

REPO = Path(__file__).resolve().parents[1]


def test_partition_slices():
    assert partition_slices(750) == (slice(0, 250), slice(250, 500), slice(500, 750))
    assert partition_slices(750, (0.3333333333, 0.3333333333)) == partition_slices(750)
    assert partition_slices(300) == (slice(0, 100), slice(100, 200), slice(200, 300))
    assert partition_slices(32) == (slice(0, 10), slice(10, 20), slice(20, 32))
    with pytest.raises(ValueError):
        partition_slices(1)


def _plain(method: str) -> dict:
    return {
        "model_config": str(REPO / "config/model/r18_128x352_cpu.yaml"),
        "teacher": {"pillar_size": [0.8, 0.8], "pillar_channels": 8, "encoder_channels": 16,
                    "backbone_channels": [16, 32], "backbone_layers": [1, 1], "neck_channels": [16, 16],
                    "head_share_channels": 16, "head_conv_channels": 16},
        "label_encoder": {"hidden": 16},
        "distill": {"method": method},
    }


def _cfg(method: str):
    return train_config_from_dict(_plain(method))


def _batch(B: int = 1, N: int = 2):
    torch.manual_seed(0)
    R0 = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # optical -> ego (x fwd, y left)
    cam2ego = torch.zeros(B, N, 4, 4)
    for n in range(N):
        a = 2 * math.pi * n / N
        Rz = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])
        cam2ego[:, n, :3, :3] = Rz @ R0.t().t()
        cam2ego[:, n, :3, 3] = torch.tensor([1.0, 0.0, 1.5])
        cam2ego[:, n, 3, 3] = 1
    K = torch.tensor([[120.0, 0, 176], [0, 120.0, 64], [0, 0, 1]]).expand(B, N, 3, 3).clone()
    boxes = torch.tensor([[10.0, 2.0, 0.8, 4.5, 1.9, 1.6, 0.3, 1.0, 0.0], [-5.0, 8.0, 0.9, 0.7, 0.7, 1.8, 0.0, 0, 0]])
    depth = torch.zeros(B, N, 8, 22)
    depth[:, :, 4, 5:9] = 12.0
    pts = torch.cat([torch.rand(B, 400, 2) * 40 - 20, torch.rand(B, 400, 1) * 2, torch.rand(B, 400, 2)], -1)
    return {"images": torch.randn(B, N, 3, 128, 352), "K": K, "cam2ego": cam2ego,
            "ida": torch.eye(4).expand(B, N, 4, 4).clone(), "bda": torch.eye(4).expand(B, 4, 4).clone(),
            "gt_boxes": [boxes] * B, "gt_labels": [torch.tensor([0, 8])] * B, "depth": depth, "points": pts}


@pytest.fixture(scope="module")
def student_and_batch():
    torch.manual_seed(0)
    mcfg = load_model_config(REPO / "config/model/r18_128x352_cpu.yaml")
    return build_student(mcfg), _batch()


@pytest.mark.parametrize("method", ["none", "labeldistill", "unidistill", "cmkd", "stereodistill"])
def test_student_stage_frozen_modules(method, student_and_batch):
    cfg = _cfg(method)
    mcfg = load_model_config(cfg.model_config)
    grid = mcfg.bev_grid
    student, batch = student_and_batch
    student.zero_grad(set_to_none=True)
    distiller = distiller_for(cfg, mcfg, student)
    teacher = Frozen(build_teacher(cfg, mcfg)) if distiller.needs_teacher else None
    label_enc = Frozen(build_label_encoder(cfg, mcfg)) if distiller.needs_label_encoder else None
    dn = mcfg.depth_net
    stage = StudentStage(student, distiller, teacher, label_enc,
                         CenterPointTargetAssigner(grid, task_class_ids(mcfg)), CenterPointLoss(),
                         DepthLoss(dn.depth_bound[0], dn.depth_bound[2], dn.num_bins, 16), grid, 10, 0.5)
    frozen = [m for m in (teacher, label_enc) if m is not None]
    before = [{k: v.clone() for k, v in f.state_dict().items()} for f in frozen]
    stage.train()
    loss, parts = stage(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert "det_hm" in parts and "depth" in parts
    if method != "none":
        assert any(k.startswith("kd_") for k in parts)
        assert any(p.grad is not None for p in distiller.parameters())
    if method == "unidistill":  # the IoU channel (reference on): its branch trains through both of its losses
        assert "kd_iou_aware" in parts and distiller.iou_branch is not None
        assert all(p.grad is not None for p in distiller.iou_branch.parameters())
    for f, sd in zip(frozen, before):
        assert not f.training and all(not m.training for m in f.modules())
        assert all(p.grad is None and not p.requires_grad for p in f.parameters())
        assert all(torch.equal(v, f.state_dict()[k]) for k, v in sd.items())  # BN statistics untouched
    assert student.training and any(p.grad is not None for p in student.parameters())


def test_labeldistill_partition_feeds_adaptors():
    d = LabelDistillDistiller((32, 32), (16, 32), _cfg("labeldistill").distill.labeldistill)

    class Out:
        bev_input = torch.arange(32.0).view(1, 32, 1, 1).expand(1, 32, 64, 64)
        trunk_first = torch.arange(32.0).view(1, 32, 1, 1).expand(1, 32, 32, 32)

    lab, lid = d.split(Out)
    assert lab[0][0, :, 0, 0].tolist() == list(range(0, 10)) and lid[0][0, :, 0, 0].tolist() == list(range(10, 20))
    assert lab[1].shape == (1, 10, 32, 32)
    assert [tuple(o.shape) for o in d.lidar_adaptor(lid)] == [(1, 16, 64, 64), (1, 32, 32, 32)]


def test_cmkd_unlabeled_samples_train_from_the_teacher_alone(student_and_batch):
    from labeldistill_training.batch import is_unlabeled

    cfg = _cfg("cmkd")
    mcfg = load_model_config(cfg.model_config)
    grid = mcfg.bev_grid
    student, batch = student_and_batch
    student.zero_grad(set_to_none=True)
    distiller = build_distiller("cmkd", (mcfg.bev_channels, mcfg.bev_trunk.base_channels), cfg.teacher.encoder_channels,
                                cfg.teacher.backbone_channels, grid, cfg.distill.labeldistill, cfg.distill.unidistill,
                                cfg.distill.cmkd, cfg.distill.stereodistill)
    stage = StudentStage(student, distiller, Frozen(build_teacher(cfg, mcfg)), None,
                         CenterPointTargetAssigner(grid, task_class_ids(mcfg)), CenterPointLoss(), None, grid, 10, 0.5,
                         unlabeled_fraction=0.5)
    stage.train()
    loss, parts = stage({**batch, "has_labels": torch.tensor([False])})
    assert float(parts["det_hm"].detach()) == 0.0 and float(parts["det_reg"].detach()) == 0.0
    assert float(parts["kd_bev"].detach()) > 0 and float(parts["kd_soft_cls"].detach()) > 0
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.parameters())
    toks = [f"tok{i}" for i in range(400)]
    frac = sum(is_unlabeled(t, 0.25) for t in toks) / len(toks)
    assert 0.15 < frac < 0.35 and is_unlabeled("tok1", 0.25) == is_unlabeled("tok1", 0.25)


def test_unidistill_adaptor_switch(student_and_batch):
    """adaptor: true = a 1x1 conv to the teacher's encoder channels; false = none, and unequal channels are an error
    naming both (the reference has no adaptor: its channels match by construction)."""

    student, _ = student_and_batch
    mcfg = load_model_config(REPO / "config/model/r18_128x352_cpu.yaml")
    cfg = _cfg("unidistill")
    assert isinstance(distiller_for(cfg, mcfg, student).adaptor, torch.nn.Conv2d)
    off = train_config_from_dict({**_plain("unidistill"), "distill": {"method": "unidistill",
                                                                      "unidistill": {"adaptor": False}}})
    with pytest.raises(ValueError, match=r"adaptor is false.*\(32, model bev_channels\).*\(16, teacher.encoder_channels\)"):
        distiller_for(off, mcfg, student)
    same = train_config_from_dict({**_plain("unidistill"), "teacher": {**_plain("unidistill")["teacher"],
                                                                       "encoder_channels": mcfg.bev_channels},
                                   "distill": {"method": "unidistill", "unidistill": {"adaptor": False}}})
    d = distiller_for(same, mcfg, student)
    assert isinstance(d.adaptor, torch.nn.Identity)
    x = torch.randn(1, mcfg.bev_channels, 4, 4)
    assert torch.equal(d.adaptor(x), x)


def test_unidistill_iou_channel_switch(student_and_batch):
    """iou_channel: false = no branch, no kd_iou_aware part; the response term then differs from the default's."""
    student, batch = student_and_batch
    mcfg = load_model_config(REPO / "config/model/r18_128x352_cpu.yaml")
    off = train_config_from_dict({**_plain("unidistill"), "distill": {"method": "unidistill",
                                                                      "unidistill": {"iou_channel": False}}})
    d = distiller_for(off, mcfg, student)
    assert d.iou_branch is None and not any("iou" in k for k, _ in d.named_parameters())
    assert any(k.startswith("iou_branch.") for k, _ in distiller_for(_cfg("unidistill"), mcfg, student).named_parameters())
