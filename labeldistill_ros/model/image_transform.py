"""The one image transform of the camera student: original camera image -> network input, with its matrix ``ida``.

Training (the dataset's evaluation transform and the warp of every augmented image), evaluation, bag replay, the
export examples and the ROS node all call :class:`ImageTransform`; its parameters
(:class:`ImageTransformConfig`) are part of the model config and so travel inside every checkpoint: a node can
never run a model with another crop than the one it was evaluated with, whatever its cameras' resolution.

Geometry (BEVDepth's ``img_transform`` / ``sample_ida_augmentation``), for an original image ``W x H`` and the
network input ``w x h`` (``input_size = (h, w)``)::

    fit    = max(h / H, w / W)                    # the smallest scale that covers the input
    resize = fit * resize_scale                   # training: fit * U(resize_lim)
    newW, newH = int(W * resize), int(H * resize)
    top    = int((1 - bottom_crop) * newH) - h    # keep the bottom, cut the sky (training: U(bot_pct_lim))
    left   = int(max(0, newW - w) / 2)            # centred (training: U(0, newW - w))
    ida    = img_aug_matrix(resize, (left, top, left + w, top + h), flip, rotate_deg)

For a 1600x900 camera at 256x704 with the default ``bottom_crop`` 0.11 (the mean of BEVDepth's ``bot_pct_lim``
(0, 0.22)) the crop starts at row 96 of the 704x396 resized image.

Pixels: output pixel ``(u', v')`` is the image sampled (bilinear) at ``ida^-1 (u', v')`` after an antialiasing
prefilter to the output scale when downscaling (the triangle filter of PIL's bilinear resize, which BEVDepth
uses), so the image content and ``ida`` agree exactly. Samples more than one pixel outside the image are black
(0, PIL's crop / rotate fill in BEVDepth) before normalisation ``(x - mean) / std`` (RGB, 0..255 units).
Everything that does not depend on the pixels (``ida``, the sampling grid, which rows the prefilter needs) is
cached per image size and ``ida``; on a CPU the prefilter runs on uint8 (within one grey level of float).

Inference (``ida`` a pure scale and crop, the prefilter size equal to that scale) takes a specialisation of the
same operations: only the band of rows the crop keeps is prefiltered (both cuts at rows where the band's
resampling grid is the whole image's), and the bilinear sampling, which then reads every output pixel at one
common sub-pixel offset, is two lerps of shifted slices instead of ``grid_sample``. Training augmentation
(rotations, flips, crops past the border) takes the general path. Both give the same tensor (tested against each
other and against an independent float reference). :meth:`ImageTransform.band` + :meth:`ImageTransform.apply`
split the transform where a caller moves the image to the device itself (the node's pinned staging).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import img_aug_matrix

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ImageTransformConfig:
    """The deterministic transform of a model (stored in its config and checkpoint).

    Attributes:
        resize_scale: resize relative to the fit scale ``max(h / H, w / W)`` (BEVDepth's test-time resize; the
            data config's ``image_aug.test_resize``).
        bottom_crop: fraction of the resized height cut at the bottom (the mean of the data config's
            ``image_aug.bot_pct_lim``).
        mean, std: per-channel normalisation, RGB order, 0..255 units.
    """

    resize_scale: float = 1.0
    bottom_crop: float = 0.11
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def problems(self) -> list[str]:
        """What is wrong with the values (empty when valid), each naming the key and the fix."""
        out = []
        if not self.resize_scale > 0:
            out.append(f"image.resize_scale = {self.resize_scale} must be > 0 (1.0: fit the input size)")
        if not 0 <= self.bottom_crop < 1:
            out.append(f"image.bottom_crop = {self.bottom_crop} must be in [0, 1) (0.11: BEVDepth's test crop)")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            out.append("image.mean and image.std need 3 values (RGB), std > 0")
        return out


def ida_for(width: int, height: int, input_size: Sequence[int], resize_scale: float, bottom_crop: float,
            left: int | None = None, flip: bool = False, rotate_deg: float = 0.0) -> np.ndarray:
    """``ida (4, 4)`` float64 for a ``width x height`` image (module docstring); ``left`` = crop column in the
    resized image (None: centred)."""
    h, w = int(input_size[0]), int(input_size[1])
    resize = max(h / height, w / width) * float(resize_scale)
    new_w, new_h = int(width * resize), int(height * resize)
    top = int((1 - float(bottom_crop)) * new_h) - h
    if left is None:
        left = int(max(0, new_w - w) / 2)
    return img_aug_matrix(resize, (left, top, left + w, top + h), flip, rotate_deg)


@dataclass
class _Plan:
    """Pixel-independent work for one image size and ``ida``.

    ``prefilter_size`` = antialiased resize target (the output scale; None when not downscaling). Only the
    prefiltered rows ``r0 .. r1`` are computed, from input rows ``first_row .. last_row``, with ``r * H / Hs`` an
    integer at both cuts (the resize of that band has the sampling grid of the whole image, so its rows equal the
    whole image's) and ``r0`` / ``r1`` at least two rows outside the rows the sampling reads. ``grid (1, h, w,
    2)`` samples the (row-cropped) prefiltered image at ``ida^-1`` of every output pixel; ``inside (3, h, w)`` is 1
    where the sample lies less than a pixel outside the image, and ``fill (3, h, w)`` the normalised black
    elsewhere.

    ``shift``: the inference case, ``ida`` a pure scale and crop whose scale the prefilter size reproduces exactly
    and whose samples all lie inside the band: every output pixel then samples the band at ``(v + oy, u + ox)``
    with the same ``oy, ox`` (``ida``'s corner convention against the resize's pixel centres puts them
    ``0.5 (1 - scale)`` px off the grid). ``shift = (rows, cols, fy, fx)``: the band rows and columns read (index
    tensors, clamped at the edge as ``grid_sample``'s border padding clamps) and the two fractions; the bilinear
    sample is then two lerps of shifted slices instead of ``grid_sample`` (same weights; equal up to float
    rounding, tested). None: the general path (augmentation: flips, rotations, crops past the border).
    """

    prefilter_size: tuple[int, int] | None
    first_row: int
    grid: torch.Tensor
    inside: torch.Tensor
    fill: torch.Tensor
    last_row: int | None = None  # None: to the bottom of the image
    shift: tuple[torch.Tensor, torch.Tensor, float, float] | None = None

    @staticmethod
    def make(hw: tuple[int, int], ida: np.ndarray, out_hw: tuple[int, int], fill: torch.Tensor,
             device: torch.device) -> "_Plan":
        H, W = hw
        h, w = out_hw
        scale = float(np.sqrt(abs(np.linalg.det(ida[:2, :2]))))
        warp, Hs, Ws, size = ida, H, W, None
        if scale < 1.0:  # prefilter to the output scale; map original pixel centres to prefiltered ones
            Hs, Ws = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
            pre = np.diag([Ws / W, Hs / H, 1.0, 1.0])
            pre[:2, 3] = [0.5 * Ws / W - 0.5, 0.5 * Hs / H - 0.5]
            warp, size = ida @ np.linalg.inv(pre), (Hs, Ws)
        inv = np.linalg.inv(warp)
        v, u = np.mgrid[0:h, 0:w].astype(np.float64)
        src_u = inv[0, 0] * u + inv[0, 1] * v + inv[0, 3]
        src_v = inv[1, 0] * u + inv[1, 1] * v + inv[1, 3]
        inside = (src_u > -1) & (src_u < Ws) & (src_v > -1) & (src_v < Hs)
        r0, r1 = 0, Hs
        if size is not None:
            need = int(np.floor(src_v.min())) - 2
            r0 = next((r for r in range(min(max(0, need), Hs - 1), 0, -1) if (r * H) % Hs == 0), 0)
            need = int(np.ceil(src_v.max())) + 3
            r1 = next((r for r in range(max(need, r0 + 1), Hs) if (r * H) % Hs == 0), Hs)
            size = (r1 - r0, Ws)
        first_row = r0 * H // Hs if size is not None else 0
        last_row = r1 * H // Hs if size is not None else H
        grid = np.stack([(2 * src_u + 1) / Ws - 1, (2 * (src_v - r0) + 1) / (r1 - r0) - 1], axis=-1)
        inside_t = torch.as_tensor(inside, dtype=torch.float32, device=device).expand(3, h, w).contiguous()
        shift = None
        exact_scale = size is None or (abs(Ws / W - ida[0, 0]) < 1e-12 and abs(Hs / H - ida[1, 1]) < 1e-12)
        if exact_scale and inside.all() and np.allclose(inv[:2, :2], np.eye(2), rtol=0, atol=1e-12):
            oy, ox = inv[1, 3] - r0, inv[0, 3]
            row, col = int(np.floor(oy + 1e-9)), int(np.floor(ox + 1e-9))
            fy, fx = max(0.0, oy - row), max(0.0, ox - col)
            fy, fx = (0.0 if fy < 1e-9 else fy), (0.0 if fx < 1e-9 else fx)
            # grid_sample's border padding clamps a sample less than a pixel outside to the edge: clamped indices
            rows = np.clip(np.arange(row, row + h + (fy > 0)), 0, r1 - r0 - 1)
            cols = np.clip(np.arange(col, col + w + (fx > 0)), 0, Ws - 1)
            shift = (torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device), fy, fx)
        return _Plan(size, first_row, torch.as_tensor(grid, dtype=torch.float32, device=device).unsqueeze(0),
                     inside_t, fill.view(3, 1, 1) * (1.0 - inside_t), last_row, shift)


class ImageTransform:
    """Original RGB uint8 image -> normalised network input, on one device (module docstring).

    Args:
        input_size: network input ``(h, w)`` pixels.
        config: :class:`ImageTransformConfig` (the model config's ``image``).
        device: where the output tensors live (the node: the model's device; the dataset: CPU).
        cache_size: plans kept (one per image size and ``ida``; augmented training images each need a new one).
    """

    def __init__(self, input_size: Sequence[int], config: ImageTransformConfig = ImageTransformConfig(),
                 device: torch.device | str = "cpu", cache_size: int = 16):
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.config = config
        self.device = torch.device(device)
        self._mean = torch.tensor(config.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._inv_std = 1.0 / torch.tensor(config.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._fill = (-self._mean * self._inv_std).view(3)  # black, normalised
        self._plans: OrderedDict[bytes, _Plan] = OrderedDict()
        self._cache_size = max(1, int(cache_size))

    def ida(self, width: int, height: int) -> np.ndarray:
        """The evaluation / inference ``ida (4, 4)`` float64 of a ``width x height`` image."""
        return ida_for(width, height, self.input_size, self.config.resize_scale, self.config.bottom_crop)

    def plan(self, hw: tuple[int, int], ida: np.ndarray) -> _Plan:
        """The cached :class:`_Plan` of an image of ``hw = (H, W)`` pixels and ``ida``."""
        key = np.asarray(hw, dtype=np.int64).tobytes() + np.asarray(ida, dtype=np.float64).tobytes()
        plan = self._plans.get(key)
        if plan is None:
            plan = _Plan.make(hw, np.asarray(ida, dtype=np.float64), self.input_size, self._fill, self.device)
            self._plans[key] = plan
            while len(self._plans) > self._cache_size:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

    def band(self, image: np.ndarray, ida: np.ndarray | None = None) -> tuple[np.ndarray, _Plan]:
        """The rows of ``image`` the transform reads (a view, no copy) and the plan: what a caller moves to the
        device itself (the node's pinned staging) before :meth:`apply`. Checks the image like :meth:`__call__`."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image transform: expected an (H, W, 3) uint8 RGB image, got {got}")
        H, W = image.shape[:2]
        plan = self.plan((H, W), self.ida(W, H) if ida is None else ida)
        return image[plan.first_row:plan.last_row], plan

    def __call__(self, image: np.ndarray, ida: np.ndarray | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """One ``(H, W, 3)`` uint8 RGB image -> ``(3, h, w)`` float32 on the device (written into ``out`` when
        given); ``ida`` defaults to :meth:`ida` of the image's size."""
        band, plan = self.band(image, ida)
        return self.apply(torch.from_numpy(band), plan, out)

    def apply(self, band: torch.Tensor, plan: _Plan, out: torch.Tensor | None = None) -> torch.Tensor:
        """The transform of an image's :meth:`band` ``(rows, W, 3)`` uint8, on the CPU or already on the device
        (moved there when not) -> ``(3, h, w)`` float32 (into ``out`` when given)."""
        src = band.to(self.device, non_blocking=True).permute(2, 0, 1).unsqueeze(0)  # channels-last view
        if plan.prefilter_size is not None:
            if self.device.type != "cpu":  # uint8 antialiased resize is a CPU kernel
                src = src.float()
            src = F.interpolate(src, size=plan.prefilter_size, mode="bilinear", align_corners=False, antialias=True)
        if plan.shift is not None:  # scale + crop: bilinear at one sub-pixel offset = two lerps of slices
            rows, cols, fy, fx = plan.shift
            h, w = self.input_size
            x = src[0].index_select(1, rows).index_select(2, cols).float()
            if fx:
                x = torch.lerp(x[:, :, :w], x[:, :, 1:], fx)
            if fy:
                x = torch.lerp(x[:, :h], x[:, 1:], fy)
            mean, inv_std = self._mean.view(3, 1, 1), self._inv_std.view(3, 1, 1)
            if out is None:
                return (x - mean) * inv_std
            return torch.sub(x, mean, out=out).mul_(inv_std)
        norm = (src.float() - self._mean) * self._inv_std
        sampled = F.grid_sample(norm, plan.grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        if out is None:
            return torch.addcmul(plan.fill, sampled, plan.inside)
        return torch.addcmul(plan.fill, sampled, plan.inside, out=out)
