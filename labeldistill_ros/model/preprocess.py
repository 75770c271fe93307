"""Camera image -> network input, with the matching image-augmentation matrix (shared by the node and training).

Images are uint8 ``(H, W, 3)`` **RGB** (convert bgr8 first). The network input is ImageNet-normalised float32
``(3, h, w)``. The geometric part (resize, crop, optional flip and rotation) is described by the ``ida`` matrix
of :func:`labeldistill_ros.geometry.img_aug_matrix`, which the network needs to place pixels in 3D.

Default (inference) resize/crop is BEVDepth's test-time one: scale so the image covers the input size
(``resize = max(h / H, w / W)``), keep the horizontal centre and the *bottom* of the image (the sky is cropped).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import img_aug_matrix

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def default_resize_crop(image_hw: tuple[int, int], input_size: tuple[int, int]) -> tuple[float, tuple[int, int, int, int]]:
    """BEVDepth test-time ``(resize, crop)`` for an image of ``(H, W)`` pixels and a network input ``(h, w)``."""
    H, W = image_hw
    h, w = input_size
    resize = max(h / H, w / W)
    new_w, new_h = int(round(W * resize)), int(round(H * resize))
    x0 = (new_w - w) // 2
    y0 = new_h - h
    return resize, (x0, y0, x0 + w, y0 + h)


def preprocess_image(
    image: np.ndarray,
    input_size: tuple[int, int],
    resize: float | None = None,
    crop: Sequence[int] | None = None,
    flip: bool = False,
    rotate_deg: float = 0.0,
) -> tuple[torch.Tensor, np.ndarray]:
    """One RGB uint8 image ``(H, W, 3)`` -> (normalised ``(3, h, w)`` float32 tensor, ``ida (4, 4)`` float64).

    ``resize``/``crop`` default to :func:`default_resize_crop`; ``crop`` = (x0, y0, x1, y1) in resized pixels
    with ``(y1 - y0, x1 - x0) == input_size``. Output pixel (u', v') is the image sampled (bilinear) at
    ``ida^-1 (u', v')``, after an antialiasing prefilter when downscaling, so image content and ``ida`` agree
    exactly; regions outside the image become 0 (the mean colour).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"preprocess_image: expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    h, w = input_size
    if resize is None or crop is None:
        d_resize, d_crop = default_resize_crop(image.shape[:2], input_size)
        resize = d_resize if resize is None else resize
        crop = d_crop if crop is None else crop
    x0, y0, x1, y1 = (int(c) for c in crop)
    if (y1 - y0, x1 - x0) != (h, w):
        raise ValueError(f"preprocess_image: crop {crop} is {(y1 - y0, x1 - x0)} but input_size is {input_size}")
    ida = img_aug_matrix(resize, (x0, y0, x1, y1), flip, rotate_deg)
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().unsqueeze(0)  # (1, 3, H, W)
    return _warp(img, ida, (h, w))[0], ida


def _warp(img: torch.Tensor, ida: np.ndarray, out_hw: tuple[int, int]) -> torch.Tensor:
    """Normalise ``img (1, 3, H, W)`` (0-255) and sample it at ``ida^-1`` of every output pixel (bilinear, 0
    more than a pixel outside) -> ``(1, 3, h, w)``. A downscale is prefiltered by an antialiased resize to the same scale first."""
    H, W = img.shape[2:]
    scale = float(np.sqrt(abs(np.linalg.det(ida[:2, :2]))))
    if scale < 1.0:
        small = (max(1, int(round(H * scale))), max(1, int(round(W * scale))))
        img = F.interpolate(img, size=small, mode="bilinear", align_corners=False, antialias=True)
        pre = np.diag([small[1] / W, small[0] / H, 1.0, 1.0])  # original pixel -> prefiltered pixel (centres)
        pre[:2, 3] = [0.5 * small[1] / W - 0.5, 0.5 * small[0] / H - 0.5]
        ida = ida @ np.linalg.inv(pre)
        H, W = small
    h, w = out_hw
    inv = np.linalg.inv(ida)
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    src_u = inv[0, 0] * u + inv[0, 1] * v + inv[0, 3]
    src_v = inv[1, 0] * u + inv[1, 1] * v + inv[1, 3]
    grid = torch.stack([(2 * src_u + 1) / W - 1, (2 * src_v + 1) / H - 1], dim=-1).float().unsqueeze(0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = F.grid_sample((img - mean) / std, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # edge pixels (less than one pixel outside, e.g. the half pixel that u' = resize * u puts outside) take the
    # border value; farther outside is 0
    inside = (src_u > -1) & (src_u < W) & (src_v > -1) & (src_v < H)
    return out * inside.to(out.dtype)


def preprocess(images: Sequence[np.ndarray], input_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference preprocessing of one camera set: RGB uint8 images -> (``(N, 3, h, w)`` float32,
    ``ida (N, 4, 4)`` float32), with the default resize/crop per image."""
    outs = [preprocess_image(img, input_size) for img in images]
    return torch.stack([o[0] for o in outs]), torch.as_tensor(np.stack([o[1] for o in outs]), dtype=torch.float32)
