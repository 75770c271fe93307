"""Export of the inference graph with ``torch.export`` (``.pt2`` files).

Why torch.export: it captures the whole forward as one ATen graph with checked input shapes, serialises it
to a single ``.pt2`` file that loads and runs without this package's Python classes
(``torch.export.load(path).module()``), and it is the entry point of PyTorch's deployment back ends
(AOTInductor, Torch-TensorRT, ExecuTorch). TorchScript is in maintenance mode (torch.export replaces it) and
its tracer does not check input shapes; ONNX export needs the ``onnx``/``onnxscript`` packages, which the
vehicle image does not carry (an exported program can still be converted to ONNX offline).

The exported graph takes the calibration as inputs, so one file serves any camera rig of the same camera
count and image size. The cached sparse pooling of eager mode is data-dependent Python, so under export the
view transform switches to its static-shape path (:meth:`LSSViewTransform.pool_static`, cells computed in
the graph); the test suite checks eager and exported outputs agree within 1e-4.

Inputs (fixed shapes, those of the example): ``images (B, N, 3, H, W), K (B, N, 3, 3), cam2ego (B, N, 4, 4),
ida (B, N, 4, 4), bda (B, 4, 4)``, plus ``prev2curr (B, T, 4, 4), prev_bev (B, T, C_ctx, ny, nx)`` when the
model uses T previous frames. Outputs: a flat tuple ``(bev_current, *head tensors)`` with ``bev_current
(B, C_ctx, ny, nx)`` (keep it as a later frame's ``prev_bev``) and, task by task, the branches in
:data:`HEAD_OUTPUT_ORDER`; :func:`unflatten_head_outputs` rebuilds the per-task dicts for
:meth:`StudentDetector.decode`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..geometry import make_transform, quat_to_matrix, yaw_to_quat
from .config import ModelConfig
from .head import REG_BRANCHES
from .image_transform import ImageTransform
from .student import StudentDetector

HEAD_OUTPUT_ORDER: tuple[str, ...] = ("heatmap",) + tuple(name for name, _ in REG_BRANCHES)


class ExportableStudent(nn.Module):
    """Tensor-only wrapper of a :class:`StudentDetector` for ``torch.export`` (see the module docstring)."""

    def __init__(self, model: StudentDetector):
        super().__init__()
        self.model = model
        self.context_channels = model.cfg.depth_net.context_channels

    def forward(self, images, K, cam2ego, ida, bda, prev2curr=None, prev_bev=None) -> tuple[torch.Tensor, ...]:
        out = self.model(images, K, cam2ego, ida, bda, prev2curr=prev2curr, prev_bev=prev_bev)
        flat = [out.bev_input[:, : self.context_channels]]
        for task in out.head_outputs:
            flat.extend(task[name] for name in HEAD_OUTPUT_ORDER)
        return tuple(flat)


def unflatten_head_outputs(flat: Sequence[torch.Tensor], num_tasks: int) -> list[dict[str, torch.Tensor]]:
    """Head tensors of the exported graph (its outputs after ``bev_current``) -> one dict per task."""
    k = len(HEAD_OUTPUT_ORDER)
    if len(flat) != k * num_tasks:
        raise ValueError(f"expected {k * num_tasks} head tensors for {num_tasks} tasks, got {len(flat)}")
    return [dict(zip(HEAD_OUTPUT_ORDER, flat[i * k : (i + 1) * k])) for i in range(num_tasks)]


def example_inputs(cfg: ModelConfig, num_cameras: int = 6, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Plausible inputs of the right shapes for exporting a model of ``cfg`` (a ring of ``num_cameras`` cameras,
    nuScenes-like intrinsics for a 1600x900 image, the model's own image transform, identity BEV augmentation,
    zero images)."""
    H, W = cfg.input_size
    ida = torch.as_tensor(ImageTransform(cfg.input_size, cfg.image).ida(1600, 900), dtype=torch.float32)
    optical = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    cams = []
    for i in range(num_cameras):
        yaw = 2 * np.pi * i / num_cameras
        cams.append(make_transform(quat_to_matrix(yaw_to_quat(yaw)) @ optical, [np.cos(yaw), np.sin(yaw), 1.6]))
    cam2ego = torch.as_tensor(np.stack(cams), dtype=torch.float32).expand(batch, -1, -1, -1).contiguous()
    K = torch.tensor([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]]).expand(batch, num_cameras, 3, 3)
    inputs = (
        torch.zeros(batch, num_cameras, 3, H, W),
        K.contiguous(),
        cam2ego,
        ida.expand(batch, num_cameras, 4, 4).contiguous(),
        torch.eye(4).expand(batch, 4, 4).contiguous(),
    )
    T = cfg.temporal.num_prev_frames
    if T:
        inputs += (
            torch.eye(4).expand(batch, T, 4, 4).contiguous(),
            torch.zeros(batch, T, cfg.depth_net.context_channels, cfg.bev_grid.ny, cfg.bev_grid.nx),
        )
    return inputs


def export_student(
    model: StudentDetector, inputs: tuple[torch.Tensor, ...], path: str | Path | None = None
) -> torch.export.ExportedProgram:
    """Export ``model`` (put in eval mode) for ``inputs``' shapes; save to ``path`` (``.pt2``) when given."""
    model.eval()
    program = torch.export.export(ExportableStudent(model), tuple(inputs))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(path))
    return program


def load_exported(path: str | Path) -> nn.Module:
    """Load a ``.pt2`` written by :func:`export_student`; returns a callable module (same inputs/outputs)."""
    return torch.export.load(str(path)).module()
