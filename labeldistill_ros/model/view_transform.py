"""LSS lift-splat: frustum geometry and sum pooling of depth x context into the BEV grid.

Geometry (BEVDepth ``get_geometry``). A frustum point is (u, v, d): the centre of a stride-``s`` feature cell
in the *augmented* network input, ``u = (j + 0.5) s - 0.5`` (pixel-centre convention of
:mod:`labeldistill_ros.geometry`; BEVDepth uses ``linspace(0, W - 1, w)`` instead), and a depth-bin value
``d`` in ``arange(d_min, d_max, d_step)`` metres. Its ego position is

    q = ida^-1 @ [u, v, d, 1];   p = bda @ cam2ego @ K4^-1 @ [q_u * d, q_v * d, d, 1]

and its BEV cell ``(iy, ix) = floor((p_xy - grid_min) / cell)``; points outside the grid (or the single z bin)
are dropped. The BEV feature of cell c is ``sum over points p in c of depth[p] * context[pixel(p)]``.

Pooling. The point-to-cell map depends only on the calibration (K, cam2ego, ida, bda), not on the images, so
it is computed once per calibration and cached (keyed by a hash of those tensors). Points of one pixel that
fall into the same cell are merged, which turns the pooling into one sparse (cells x pixels) by dense
(pixels x C) product: per frame, the depth probabilities are summed into the sparse matrix's values
(``index_add_`` over precomputed indices) and multiplied with the context features (a CSR matrix, i.e. a
segment sum with precomputed row boundaries). The full (N, D, h, w, C) frustum feature is never formed.

Inside ``torch.export``/``torch.compile``/TorchScript tracing the cache (a Python dict) cannot be used; there
the same cells are computed in the graph and the features are summed with one ``index_add_`` into an extra
"dropped" row (static shapes, no data-dependent filtering). Both paths give the same BEV feature up to
float summation order.
"""
from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import BEVGridConfig


def make_frustum(input_size: tuple[int, int], stride: int, depth_bound: tuple[float, float, float]) -> torch.Tensor:
    """Frustum grid ``(D, h, w, 3)`` of (u, v, d): feature-cell centres in input pixels and bin depths in metres."""
    H, W = input_size
    h, w = H // stride, W // stride
    d_min, d_max, d_step = depth_bound
    d = (d_min + d_step * torch.arange(round((d_max - d_min) / d_step), dtype=torch.float64)).float()
    u = (torch.arange(w, dtype=torch.float32) + 0.5) * stride - 0.5
    v = (torch.arange(h, dtype=torch.float32) + 0.5) * stride - 0.5
    D = d.shape[0]
    return torch.stack(
        [u.view(1, 1, w).expand(D, h, w), v.view(1, h, 1).expand(D, h, w), d.view(D, 1, 1).expand(D, h, w)], dim=-1
    )


def frustum_to_ego(
    frustum: torch.Tensor, K: torch.Tensor, cam2ego: torch.Tensor, ida: torch.Tensor, bda: torch.Tensor
) -> torch.Tensor:
    """Ego (BEV-augmented) positions of the frustum points, float32.

    ``frustum (D, h, w, 3)``, ``K (B, N, 3, 3)``, ``cam2ego (B, N, 4, 4)``, ``ida (B, N, 4, 4)``,
    ``bda (B, 4, 4)`` -> ``(B, N, D, h, w, 3)`` metres.
    """
    B, N = K.shape[:2]
    frustum = frustum.float()
    K4 = torch.zeros(B, N, 4, 4, dtype=torch.float32, device=K.device)
    K4[..., :3, :3] = K.float()
    K4[..., 3, 3] = 1.0
    combine = bda.float().view(B, 1, 4, 4) @ cam2ego.float() @ torch.linalg.inv(K4)  # (B, N, 4, 4)
    ones = torch.ones_like(frustum[..., :1])
    pix = torch.cat([frustum, ones], dim=-1)  # (D, h, w, 4)
    q = torch.einsum("bnij,dhwj->bndhwi", torch.linalg.inv(ida.float()), pix)
    cam = torch.cat([q[..., :2] * q[..., 2:3], q[..., 2:]], dim=-1)
    return torch.einsum("bnij,bndhwj->bndhwi", combine, cam)[..., :3]


@dataclass(frozen=True, eq=False)
class PoolIndex:
    """Precomputed splat of one calibration: a CSR matrix (B*ny*nx cells x B*N*h*w pixels) whose values are
    depth sums.

    ``point_idx (P,)``: kept points as indices into the flattened depth ``(B*N, D, h, w)``;
    ``pair_of_point (P,)``: the nonzero (cell, pixel) entry each point adds its depth to;
    ``crow (B*ny*nx + 1,)``, ``col (U,)``: CSR row pointers and pixel columns of the U entries.
    """

    point_idx: torch.Tensor
    pair_of_point: torch.Tensor
    crow: torch.Tensor
    col: torch.Tensor
    shape: tuple[int, int]


class LSSViewTransform(nn.Module):
    """Lift-splat with cached pooling indices.

    ``forward(depth (B*N, D, h, w) probabilities, context (B*N, C, h, w), K (B, N, 3, 3), cam2ego (B, N, 4, 4),
    ida (B, N, 4, 4), bda (B, 4, 4)) -> BEV (B, C, ny, nx)`` (row = y cell, column = x cell), float32 sums
    cast back to the context dtype.

    Args:
        input_size: (H, W) of the network input images (pixels).
        stride: feature stride of depth/context maps.
        depth_bound: (min, max, step) of the depth bins (m).
        grid: BEV grid.
        cache_size: calibrations kept (LRU); 0 rebuilds the index every call (training with random augmentation
            gains nothing from caching).
    """

    def __init__(
        self,
        input_size: tuple[int, int],
        stride: int,
        depth_bound: tuple[float, float, float],
        grid: BEVGridConfig,
        cache_size: int = 4,
    ):
        super().__init__()
        self.register_buffer("frustum", make_frustum(input_size, stride, depth_bound), persistent=False)
        self.grid = grid
        self.cache_size = cache_size
        self._cache: OrderedDict[str, PoolIndex] = OrderedDict()

    # ------------------------------------------------------------------------------------------------ geometry
    def cells(self, K, cam2ego, ida, bda) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat BEV cell ``b * ny * nx + iy * nx + ix`` of every frustum point ``(B, N, D, h, w)`` and its
        validity mask (inside the grid)."""
        g = self.grid
        with torch.autocast(device_type=K.device.type, enabled=False):  # metres need fp32, not fp16/bf16
            p = frustum_to_ego(self.frustum, K, cam2ego, ida, bda)
        ix = torch.floor((p[..., 0] - g.x[0]) / g.x[2]).long()
        iy = torch.floor((p[..., 1] - g.y[0]) / g.y[2]).long()
        iz = torch.floor((p[..., 2] - g.z[0]) / g.z[2]).long()
        valid = (ix >= 0) & (ix < g.nx) & (iy >= 0) & (iy < g.ny) & (iz == 0)
        b = torch.arange(K.shape[0], device=K.device).view(-1, 1, 1, 1, 1)
        return (b * g.ny + iy) * g.nx + ix, valid

    def build_index(self, K, cam2ego, ida, bda) -> PoolIndex:
        """Compute the :class:`PoolIndex` of one calibration (no gradients, any device). The index is made of
        normal tensors even under ``torch.inference_mode`` so a cached entry also serves later autograd calls."""
        with torch.inference_mode(False), torch.no_grad():
            cell, valid = self.cells(K, cam2ego, ida, bda)
            B, N, D, h, w = cell.shape
            num_pix = B * N * h * w
            num_cells = B * self.grid.ny * self.grid.nx
            pixel = (torch.arange(B * N, device=cell.device).view(B, N, 1, 1, 1) * (h * w)
                     + torch.arange(h * w, device=cell.device).view(1, 1, 1, h, w)).expand(B, N, D, h, w)
            point_idx = torch.nonzero(valid.reshape(-1)).squeeze(1)
            key = cell.reshape(-1)[point_idx] * num_pix + pixel.reshape(-1)[point_idx]
            pairs, pair_of_point = torch.unique(key, sorted=True, return_inverse=True)
            rows = pairs // num_pix
            crow = torch.zeros(num_cells + 1, dtype=torch.long, device=cell.device)
            crow[1:] = torch.cumsum(torch.bincount(rows, minlength=num_cells), 0)
            return PoolIndex(point_idx, pair_of_point, crow, pairs % num_pix, (num_cells, num_pix))

    def cached_index(self, K, cam2ego, ida, bda, key: str | None = None) -> PoolIndex:
        """The :class:`PoolIndex` for this calibration, from the LRU cache when the same tensors were seen.
        ``key``: the calibration's :func:`calibration_key` when the caller has it from host copies
        (:func:`host_calibration_key`); computing it here reads the tensors back (a host sync on a GPU)."""
        if self.cache_size <= 0:
            return self.build_index(K, cam2ego, ida, bda)
        key = key or calibration_key(K, cam2ego, ida, bda)
        index = self._cache.get(key)
        if index is None:
            index = self.build_index(K, cam2ego, ida, bda)
            self._cache[key] = index
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return index

    # ------------------------------------------------------------------------------------------------- pooling
    def forward(self, depth, context, K, cam2ego, ida, bda, calib_key: str | None = None) -> torch.Tensor:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return self.pool_static(depth, context, K, cam2ego, ida, bda)
        return self.pool_indexed(depth, context, self.cached_index(K, cam2ego, ida, bda, calib_key), K.shape[0])

    def pool_indexed(self, depth: torch.Tensor, context: torch.Tensor, index: PoolIndex, batch: int) -> torch.Tensor:
        """Per-frame pooling with a precomputed index: ``(B*N, D, h, w), (B*N, C, h, w) -> (B, C, ny, nx)``."""
        C = context.shape[1]
        with torch.autocast(device_type=context.device.type, enabled=False):
            values = torch.zeros(index.col.shape[0], dtype=torch.float32, device=depth.device)
            values = values.index_add(0, index.pair_of_point, depth.reshape(-1)[index.point_idx].float())
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                splat = torch.sparse_csr_tensor(index.crow, index.col, values, size=index.shape,
                                                check_invariants=False)
            feats = context.permute(0, 2, 3, 1).reshape(-1, C).float()  # (B*N*h*w, C)
            bev = splat @ feats  # (B*ny*nx, C)
        bev = bev.view(batch, self.grid.ny, self.grid.nx, C).permute(0, 3, 1, 2).contiguous()
        return bev.to(context.dtype)

    def pool_static(self, depth, context, K, cam2ego, ida, bda) -> torch.Tensor:
        """Graph-friendly pooling (static shapes): same result as :meth:`pool_indexed`; forms the full frustum
        feature, so it is slower and uses more memory."""
        cell, valid = self.cells(K, cam2ego, ida, bda)
        B = K.shape[0]
        num_cells = B * self.grid.ny * self.grid.nx
        C = context.shape[1]
        target = torch.where(valid, cell, torch.full_like(cell, num_cells)).reshape(-1)
        feats = depth.float().unsqueeze(-1) * context.float().permute(0, 2, 3, 1).unsqueeze(1)  # (BN, D, h, w, C)
        bev = torch.zeros(num_cells + 1, C, dtype=torch.float32, device=context.device)
        bev = bev.index_add(0, target, feats.reshape(-1, C))[:num_cells]
        return bev.view(B, self.grid.ny, self.grid.nx, C).permute(0, 3, 1, 2).contiguous().to(context.dtype)


def calibration_key(*tensors: torch.Tensor) -> str:
    """Hash of the exact values, shapes and device of calibration tensors (the pooling cache key)."""
    return host_calibration_key(tensors[0].device if tensors else "cpu",
                                *(t.detach().to("cpu", torch.float64).numpy() for t in tensors))


def host_calibration_key(device: torch.device | str, *arrays) -> str:
    """:func:`calibration_key` of tensors holding ``arrays``' values (host copies, as float64) on ``device``,
    without reading anything back from the device (the node knows its calibration on the host)."""
    h = hashlib.blake2b(digest_size=16)
    device = torch.device(device)
    for a in arrays:
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(f"{tuple(a.shape)}|{device}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()
