"""The box coder: the one place that turns boxes into the CenterPoint head's regression code and back.

Training targets (``CenterPointTargetAssigner``), the losses that decode teacher or student regressions
(StereoDistill's pilot boxes, UniDistill's IoU channel) and inference decoding (:mod:`.decode`) all call
:class:`BoxCoder`, so the encoding cannot drift between them (torchvision ``BoxCoder``, OpenPCDet / BEVDepth
``CenterPointBBoxCoder``).

Frames and units. Boxes are ``(..., 9) = (x, y, z, l, w, h, yaw, vx, vy)`` in the (BEV-augmented) ego frame
(base_link: x forward, y left, z up) of :mod:`labeldistill_ros.geometry`: centre in metres (z the geometric
centre), sizes in metres (l along the heading), yaw in radians about +z from +x, velocity in m/s in that
frame. Extra columns after the ninth are ignored by :meth:`BoxCoder.encode`.

Code (10 values, the head's branch order ``reg 2, height 1, dim 3, rot 2, vel 2``, see
:data:`~labeldistill_ros.model.head.REG_BRANCHES`)::

    [dx, dy, z, log l, log w, log h, sin yaw, cos yaw, vx, vy]

``(dx, dy)`` is the centre's offset inside its cell, in cells, in [0, 1): with ``(cx, cy) = ((x - x_min) /
cell_x, (y - y_min) / cell_y)`` the centre in fractional cells of the head's map, the centre cell is ``(ix, iy)
= (floor(cx), floor(cy))`` and ``dx = cx - ix``. ``z`` in metres, sizes as natural logs of metres, velocity in
m/s. A cell of the head's map is ``out_size_factor`` BEV-grid cells on a side (1: the head runs at the grid's
resolution, as here). Decoding inverts it: ``x = (ix + dx) * cell_x + x_min``, sizes ``exp``, yaw ``atan2(sin,
cos)``.

The size clamp, decided once: with ``clamp_log_size`` (the default) log-sizes are clamped to
``log_size_range`` on both sides of the coder: encoding takes ``log(max(size, exp(lo)))`` (a zero-size GT
box gives a finite target; default 1 mm), decoding ``exp(min(max(code, lo), hi))`` (default ``hi = 6``:
403 m, far above any object, keeps ``exp`` finite for any finite regression, in fp16 too). Before this class
only StereoDistill's pilot boxes clamped at decode (at 6) and the target assigner at encode (at 1 mm); inference
decoding did not clamp (a regression of ``log l > 88.7`` became an infinite box). UniDistill's IoU target uses
the reference's tighter ``[1 mm, 30 m]`` by constructing its coder with that range.
"""
from __future__ import annotations

import math

import torch

from .config import BEVGridConfig

LOG_SIZE_MIN = math.log(1e-3)
"""Default lower log-size bound: 1 mm (encode and decode)."""
LOG_SIZE_MAX = 6.0
"""Default upper log-size bound: ``exp(6)`` = 403 m (decode)."""
CODE_SIZE = 10
"""Values per box code."""


class BoxCoder:
    """Encode ego boxes to the head's 10-value code at their centre cell, decode codes at cells back to boxes.

    Args:
        grid: the BEV grid (the model config's ``bev_grid``).
        out_size_factor: BEV-grid cells per head-map cell along each axis (1: head at grid resolution); must
            divide the grid's cell counts.
        clamp_log_size: clamp log-sizes to ``log_size_range`` when encoding and decoding (module docstring).
        log_size_range: ``(lo, hi)`` natural logs of metres.
    """

    def __init__(self, grid: BEVGridConfig, out_size_factor: int = 1, clamp_log_size: bool = True,
                 log_size_range: tuple[float, float] = (LOG_SIZE_MIN, LOG_SIZE_MAX)) -> None:
        if out_size_factor < 1 or grid.nx % out_size_factor or grid.ny % out_size_factor:
            raise ValueError(f"out_size_factor {out_size_factor} must be >= 1 and divide the grid's "
                             f"{grid.ny}x{grid.nx} cells")
        if clamp_log_size and not log_size_range[0] < log_size_range[1]:
            raise ValueError(f"log_size_range {log_size_range} must be (lo, hi) with lo < hi")
        self.grid = grid
        self.out_size_factor = int(out_size_factor)
        self.clamp_log_size = bool(clamp_log_size)
        self.log_size_range = (float(log_size_range[0]), float(log_size_range[1]))
        self.x_min, self.y_min = float(grid.x[0]), float(grid.y[0])
        self.cell_x = float(grid.x[2]) * self.out_size_factor
        self.cell_y = float(grid.y[2]) * self.out_size_factor
        self.nx, self.ny = grid.nx // self.out_size_factor, grid.ny // self.out_size_factor

    def __repr__(self) -> str:
        return (f"BoxCoder(grid={self.grid}, out_size_factor={self.out_size_factor}, "
                f"clamp_log_size={self.clamp_log_size}, log_size_range={self.log_size_range})")

    # ------------------------------------------------------------------------------------------------ encode
    def centre_cells(self, boxes: torch.Tensor) -> torch.Tensor:
        """``boxes (..., >=2)`` -> fractional cell coordinates ``(..., 2)`` float64 as ``(cx, cy)`` (column,
        row) on the head's map; computed in float64 so the cell and its offset are exact for float32 input."""
        xy = boxes[..., :2].double()
        return torch.stack([(xy[..., 0] - self.x_min) / self.cell_x, (xy[..., 1] - self.y_min) / self.cell_y], -1)

    def encode(self, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``boxes (N, >=9)`` ego boxes -> ``(cells (N, 2) int64 as (ix, iy), codes (N, 10) float32)``.

        Cells may fall outside the map (see :meth:`inside`); a non-finite centre coordinate gets cell index -1.
        NaN velocities stay NaN in the code (the losses mask them)."""
        boxes = torch.as_tensor(boxes)
        c = self.centre_cells(boxes)
        cell = torch.floor(c)
        offset = (c - cell).float()
        cells = torch.where(torch.isfinite(cell), cell, torch.full_like(cell, -1.0)).long()
        b = boxes[:, :9].float()
        size = b[:, 3:6]
        if self.clamp_log_size:
            log_size = torch.log(size.clamp(min=math.exp(self.log_size_range[0]))).clamp(max=self.log_size_range[1])
        else:
            log_size = torch.log(size)
        code = torch.cat([offset, b[:, 2:3], log_size, torch.sin(b[:, 6:7]), torch.cos(b[:, 6:7]), b[:, 7:9]], 1)
        return cells, code

    def inside(self, cells: torch.Tensor) -> torch.Tensor:
        """``cells (..., 2)`` int (ix, iy) -> ``(...)`` bool: the cell is on the head's map."""
        return (cells[..., 0] >= 0) & (cells[..., 0] < self.nx) & (cells[..., 1] >= 0) & (cells[..., 1] < self.ny)

    def flat_index(self, cells: torch.Tensor) -> torch.Tensor:
        """``cells (..., 2)`` (ix, iy) -> ``(...)`` flattened map index ``iy * nx + ix``."""
        return cells[..., 1] * self.nx + cells[..., 0]

    def unflatten(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened map index ``(...)`` -> ``(ix, iy)``, inverse of :meth:`flat_index`."""
        return index % self.nx, torch.div(index, self.nx, rounding_mode="floor")

    # ------------------------------------------------------------------------------------------------ decode
    def decode(self, code: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor) -> torch.Tensor:
        """``code (..., 10)`` at cells ``ix, iy`` (broadcastable to ``code[..., 0]``) -> boxes ``(..., 9)``
        float32 (inverse of :meth:`encode`, module docstring)."""
        code = code.float()
        x = (ix.float() + code[..., 0]) * self.cell_x + self.x_min
        y = (iy.float() + code[..., 1]) * self.cell_y + self.y_min
        log_size = code[..., 3:6]
        if self.clamp_log_size:
            log_size = log_size.clamp(*self.log_size_range)
        yaw = torch.atan2(code[..., 6], code[..., 7])
        return torch.cat([x[..., None], y[..., None], code[..., 2:3], torch.exp(log_size), yaw[..., None],
                          code[..., 8:10]], dim=-1)

    def decode_at(self, code: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``code (..., 10)`` at flattened map indices ``index (...)`` -> boxes ``(..., 9)``."""
        ix, iy = self.unflatten(index)
        return self.decode(code, ix, iy)
