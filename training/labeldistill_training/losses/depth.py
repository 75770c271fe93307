"""BEVDepth depth loss (methods.md §1.1): binary cross-entropy between the predicted depth distribution and a
one-hot bin of the minimum non-zero LiDAR depth in each feature-stride patch, over foreground patches only."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def downsample_depth_min(depth: torch.Tensor, stride: int) -> torch.Tensor:
    """``(..., H, W)`` sparse depth image (metres, 0 = no return) -> ``(..., H/stride, W/stride)`` holding the
    minimum non-zero depth of each ``stride x stride`` patch (0 where the patch has no return)."""
    *lead, H, W = depth.shape
    if H % stride or W % stride:
        raise ValueError(f"depth image {H}x{W} is not divisible by the feature stride {stride}")
    d = depth.reshape(-1, H // stride, stride, W // stride, stride).permute(0, 1, 3, 2, 4)
    d = d.reshape(-1, H // stride, W // stride, stride * stride)
    d = torch.where(d > 0, d, torch.full_like(d, 1e5)).min(dim=-1).values
    d = torch.where(d >= 1e5, torch.zeros_like(d), d)
    return d.reshape(*lead, H // stride, W // stride)


def depth_one_hot(depth: torch.Tensor, d_min: float, d_step: float, num_bins: int) -> torch.Tensor:
    """Metric depth ``(...)`` -> one-hot ``(..., num_bins)`` with BEVDepth's indexing
    ``floor((d - (d_min - d_step)) / d_step)`` over ``num_bins + 1`` classes, class 0 (and out of range) dropped.
    An all-zero row means background (no valid depth)."""
    idx = (depth - (d_min - d_step)) / d_step
    idx = torch.where((idx < num_bins + 1) & (idx >= 0), idx, torch.zeros_like(idx))
    return F.one_hot(idx.long(), num_classes=num_bins + 1)[..., 1:].to(depth.dtype)


class DepthLoss:
    """``weight * sum_fg BCE(p, onehot) / max(1, N_fg)`` in fp32 (weight 3.0 in BEVDepth/LabelDistill).

    Args:
        d_min, d_step, num_bins: depth bins (2.0, 0.5, 112).
        stride: image-to-feature downsampling; targets at image resolution are min-pooled per patch.
        weight: loss factor.
    ``__call__(depth_prob, depth_img)``: ``depth_prob (B*N or B,N, D, h, w)`` softmax probabilities;
    ``depth_img (B, N, H, W)`` sparse metric depth (already at ``h, w`` when ``H == h``).
    """

    def __init__(self, d_min: float = 2.0, d_step: float = 0.5, num_bins: int = 112, stride: int = 16,
                 weight: float = 3.0) -> None:
        self.d_min, self.d_step, self.num_bins = d_min, d_step, num_bins
        self.stride, self.weight = stride, weight

    def __call__(self, depth_prob: torch.Tensor, depth_img: torch.Tensor) -> torch.Tensor:
        D, h, w = depth_prob.shape[-3:]
        if D != self.num_bins:
            raise ValueError(f"depth prediction has {D} bins, the loss is configured for {self.num_bins}")
        if depth_img.shape[-2] != h:
            stride = depth_img.shape[-2] // h
            depth_img = downsample_depth_min(depth_img, stride)
        target = depth_one_hot(depth_img.reshape(-1, h, w).float(), self.d_min, self.d_step, self.num_bins)
        target = target.reshape(-1, self.num_bins)
        pred = depth_prob.reshape(-1, D, h, w).permute(0, 2, 3, 1).reshape(-1, D).float()
        fg = target.max(dim=1).values > 0
        if not bool(fg.any()):
            return pred.sum() * 0.0
        with torch.autocast(device_type=pred.device.type, enabled=False):
            bce = F.binary_cross_entropy(pred[fg].clamp(1e-7, 1 - 1e-7), target[fg], reduction="none").sum()
        return self.weight * bce / max(1.0, float(fg.sum()))
