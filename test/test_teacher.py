"""LiDAR teacher: plain-torch voxelisation, SECOND backbone / SECONDFPN shapes, the student's head class."""
from __future__ import annotations

import pytest
import torch

from labeldistill_training.models.teacher import BevDownsampler, LidarTeacher, PillarEncoder, SECONDBackbone, SECONDFPN
from labeldistill_ros.geometry import TASK_GROUPS
from labeldistill_ros.model.head import CenterHead


def _points(B=2, N=500, pad=50):
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.rand(B, N, 2, generator=g) * 100 - 50, torch.rand(B, N, 1, generator=g) * 4 - 2,
                     torch.rand(B, N, 2, generator=g)], -1)
    pts[:, -pad:] = -999.0  # padding rows fall outside the range
    return pts


@pytest.mark.parametrize("mode", ["pillar", "voxel"])
def test_teacher_shapes_and_head_class(mode):
    enc = PillarEncoder((-51.2, -51.2, -5, 51.2, 51.2, 3), (0.8, 0.8), 5, 16, mode=mode, z_bins=4)
    down = BevDownsampler(16, 32, stride=4)
    backbone = SECONDBackbone(32, (16, 32), (1, 1), (1, 2))
    neck = SECONDFPN((16, 32), (16, 16), (1, 2))
    head = CenterHead(32, 8, 8, TASK_GROUPS)
    teacher = LidarTeacher(enc, down, backbone, neck, head)
    out = teacher(_points())
    assert out["encoder"].shape == (2, 32, 32, 32)
    assert [tuple(f.shape) for f in out["backbone"]] == [(2, 16, 32, 32), (2, 32, 16, 16)]
    assert out["neck"].shape == (2, 32, 32, 32)
    assert len(out["head_outputs"]) == 6 and out["head_outputs"][1]["heatmap"].shape == (2, 2, 32, 32)
    assert isinstance(teacher.head, CenterHead)


def test_pillar_scatter_lands_in_the_right_cell():
    enc = PillarEncoder((0, 0, -5, 8, 8, 3), (1.0, 1.0), 5, 4, mode="voxel", z_bins=1)
    with torch.no_grad():
        enc.proj[0].weight.zero_()
        enc.proj[0].weight[0, 0] = 1.0  # channel 0 <- mean x of the voxel
        enc.proj[1].eval()
        enc.proj[1].running_mean.zero_()
        enc.proj[1].running_var.fill_(1.0 - 1e-3)
    enc.eval()
    pts = torch.tensor([[[5.5, 2.5, 0.0, 0.0, 0.0], [5.7, 2.1, 0.0, 0.0, 0.0], [-999, -999, -999, 0, 0]]])
    out = enc(pts)[0, 0]
    assert float(out[2, 5].detach()) == pytest.approx(5.6, abs=1e-3)  # row = y index 2, column = x index 5
    assert float(out.sum().detach()) == pytest.approx(5.6, abs=1e-3)
