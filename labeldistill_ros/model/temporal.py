"""Align a previous frame's BEV feature with the current ego frame (ego-motion warp with ``grid_sample``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import BEVGridConfig


def cur2prev_transform(prev2curr: torch.Tensor, bda: torch.Tensor) -> torch.Tensor:
    """``(B, 4, 4)`` map from the current BEV-augmented ego frame to the previous one (both augmented with the
    same ``bda (B, 4, 4)``): ``bda @ inv(prev2curr) @ inv(bda)``, in fp32 even under autocast."""
    with torch.autocast(device_type=bda.device.type, enabled=False):
        bda = bda.float()
        return bda @ torch.linalg.inv(prev2curr.float()) @ torch.linalg.inv(bda)


def bev_warp_theta(cur2prev: torch.Tensor, grid: BEVGridConfig) -> torch.Tensor:
    """``affine_grid`` parameters ``(B, 2, 3)`` for a BEV map, from ``cur2prev (B, 4, 4)``: the transform of
    points from the current (BEV-augmented) ego frame to the previous frame's (BEV-augmented) ego frame.

    Only the xy part is used (z, roll and pitch do not move a BEV cell). Normalised coordinates follow
    ``align_corners=False``: -1/+1 are the outer edges of the grid, x along the width, y along the height.
    """
    cur2prev = cur2prev.float()
    half = torch.tensor([(grid.x[1] - grid.x[0]) / 2, (grid.y[1] - grid.y[0]) / 2], device=cur2prev.device)
    centre = torch.tensor([(grid.x[1] + grid.x[0]) / 2, (grid.y[1] + grid.y[0]) / 2], device=cur2prev.device)
    A = cur2prev[:, :2, :2]
    t = cur2prev[:, :2, 3]
    lin = A * half.view(1, 1, 2) / half.view(1, 2, 1)  # D^-1 A D
    trans = ((A @ centre) + t - centre) / half  # D^-1 (A c + t - c)
    return torch.cat([lin, trans.unsqueeze(-1)], dim=-1)


def warp_bev(bev_prev: torch.Tensor, cur2prev: torch.Tensor, grid: BEVGridConfig) -> torch.Tensor:
    """Resample ``bev_prev (B, C, ny, nx)`` (in the previous frame) onto the current frame's grid, bilinear,
    zeros where the previous frame has no data. ``cur2prev (B, 4, 4)`` as in :func:`bev_warp_theta`."""
    with torch.autocast(device_type=cur2prev.device.type, enabled=False):
        theta = bev_warp_theta(cur2prev, grid).to(bev_prev.dtype)
    sample = F.affine_grid(theta, list(bev_prev.shape), align_corners=False)
    return F.grid_sample(bev_prev, sample, mode="bilinear", padding_mode="zeros", align_corners=False)
