"""The camera student: BEVDepth-style multi-camera BEV detector (LabelDistill's student architecture).

    images (B, N, 3, H, W) -> ResNet -> SECONDFPN (stride 16) -> DepthNet (depth softmax, context)
        -> LSS lift + cached-index BEV pooling -> [previous frames' BEV, warped to the current ego frame]
        -> BEV trunk + SECONDFPN -> CenterPoint head (6 task groups) -> boxes (decode + circle NMS)

Calibration is an input: ``K (B, N, 3, 3)`` intrinsics of the original image, ``cam2ego (B, N, 4, 4)``
camera-optical -> ego, ``ida (B, N, 4, 4)`` original -> network-input pixels
(:func:`~labeldistill_ros.geometry.img_aug_matrix`), ``bda (B, 4, 4)`` BEV augmentation (identity at
inference). All in the frames of :mod:`labeldistill_ros.geometry`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..geometry import camera_vector_27
from .backbone import ResNet
from .bev_trunk import BEVEncoder
from .config import ModelConfig
from .decode import Detections, decode_detections
from .depthnet import DepthNet
from .head import CenterHead
from .necks import SECONDFPN
from .temporal import cur2prev_transform, warp_bev
from .view_transform import LSSViewTransform


@dataclass
class StudentOutput:
    """Everything the losses, distillation and decoding need from one forward.

    ``bev_input (B, C_ctx * (1 + T), ny, nx)``: pooled BEV feature before the trunk (current frame first, then
    the T warped previous frames; ``bev_input[:, :C_ctx]`` is this frame's own BEV, to keep as a later
    frame's ``prev_bev``); ``trunk_first (B, base, ny / 2, nx / 2)``: first trunk stage output;
    ``bev_feature (B, 4 * neck, ny, nx)``: BEV neck output fed to the head; ``head_outputs``: one dict per task
    group (see :class:`~labeldistill_ros.model.head.SeparateHead`); ``depth (B * N, D, h, w)``: depth
    probabilities of the current frame's cameras (softmax over the D bins).
    """

    bev_input: torch.Tensor
    trunk_first: torch.Tensor
    bev_feature: torch.Tensor
    head_outputs: list[dict[str, torch.Tensor]]
    depth: torch.Tensor


class StudentDetector(nn.Module):
    """The whole detector (sub-modules take explicit arguments; this class wires them from the config).

    Args:
        cfg: validated model configuration (kept for decoding and checkpoints).
        cache_size: calibrations whose pooling index is cached (0: rebuild every call, e.g. training with a
            random augmentation per sample).
    """

    def __init__(self, cfg: ModelConfig, cache_size: int = 4):
        super().__init__()
        self.cfg = cfg
        dn = cfg.depth_net
        self.backbone = ResNet(cfg.backbone.depth)
        self.image_neck = SECONDFPN(self.backbone.out_channels, cfg.image_neck.out_channels,
                                    cfg.image_neck.upsample_strides)
        self.depth_net = DepthNet(self.image_neck.out_channels, dn.mid_channels, dn.context_channels, dn.num_bins,
                                  dn.num_res_blocks, dn.use_aspp, dn.use_dcn)
        self.view_transform = LSSViewTransform(cfg.input_size, cfg.feature_stride, dn.depth_bound, cfg.bev_grid,
                                               cache_size)
        t = cfg.bev_trunk
        self.bev_encoder = BEVEncoder(cfg.bev_channels, t.base_channels, t.num_blocks, t.strides, t.neck_channels)
        self.head = CenterHead(self.bev_encoder.out_channels, cfg.head.share_conv_channels,
                               cfg.head.head_conv_channels, cfg.head.task_groups, cfg.head.heatmap_init_bias)

    @classmethod
    def from_config(cls, cfg: ModelConfig, cache_size: int = 4) -> "StudentDetector":
        return cls(cfg, cache_size)

    # -------------------------------------------------------------------------------------------------- forward
    def lift(self, images, K, cam2ego, ida, bda, calib_key: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame's cameras -> (BEV ``(B, C_ctx, ny, nx)``, depth probabilities ``(B * N, D, h, w)``).
        ``calib_key``: the calibration's pooling-cache key computed from host copies
        (:func:`~.view_transform.host_calibration_key`; the inference path passes it so nothing is read back from
        the device)."""
        B, N = images.shape[:2]
        feats = self.image_neck(self.backbone(images.reshape(B * N, *images.shape[2:])))
        cam_vec = camera_vector_27(K, cam2ego, ida, bda.unsqueeze(1).expand(B, N, 4, 4)).reshape(B * N, 27)
        depth_logits, context = self.depth_net(feats, cam_vec)
        depth = depth_logits.softmax(dim=1)
        return self.view_transform(depth, context, K, cam2ego, ida, bda, calib_key), depth

    def forward(
        self,
        images: torch.Tensor,
        K: torch.Tensor,
        cam2ego: torch.Tensor,
        ida: torch.Tensor,
        bda: torch.Tensor,
        prev2curr: torch.Tensor | None = None,
        prev_bev: torch.Tensor | None = None,
        prev_images: torch.Tensor | None = None,
        prev_cam2ego: torch.Tensor | None = None,
        calib_key: str | None = None,
    ) -> StudentOutput:
        """Args:
            images: ``(B, N, 3, H, W)`` normalised network inputs (:class:`~.image_transform.ImageTransform`).
            K, cam2ego, ida, bda: calibration (module docstring).
            prev2curr: ``(B, T, 4, 4)`` previous ego frame -> current ego frame for the
                ``T = cfg.temporal.num_prev_frames`` previous frames, most recent first
                (``inv(ego2global_cur) @ ego2global_prev``). Required when T > 0, with one of:
            prev_bev: ``(B, T, C_ctx, ny, nx)`` the previous frames' own BEV features
                (``bev_input[:, :C_ctx]`` of their forward, i.e. in their own ego frame, with the same ``bda``):
                the inference path, where each frame is lifted once and kept; or
            prev_images: ``(B, T, N, 3, H, W)`` the previous frames' images (same cameras, ``K`` and ``ida``) with
                ``prev_cam2ego (B, T, N, 4, 4)`` (camera -> that frame's ego): lifted here without gradients
                (the training path, as BEVDepth).
            calib_key: optional pooling-cache key of the calibration computed from host copies (:meth:`lift`).
        The previous BEV features are warped into the current frame (:func:`~.temporal.warp_bev`) and
        concatenated after the current one on channels.
        """
        bev, depth = self.lift(images, K, cam2ego, ida, bda, calib_key)
        return self.forward_lifted(bev, depth, K, ida, bda, prev2curr, prev_bev, prev_images, prev_cam2ego)

    def forward_lifted(self, bev: torch.Tensor, depth: torch.Tensor, K, ida, bda, prev2curr=None, prev_bev=None,
                       prev_images=None, prev_cam2ego=None) -> StudentOutput:
        """The forward after :meth:`lift` of the current frame (``bev (B, C_ctx, ny, nx)``, ``depth``): previous
        frames, trunk and head. The node lifts a set first, so that a previous-frame slot without history can
        take the current frame's own BEV (training's start of a scene) without lifting anything twice."""
        T = self.cfg.temporal.num_prev_frames
        if T:
            bev = torch.cat([bev] + self._previous_frames(T, K, ida, bda, prev2curr, prev_bev, prev_images,
                                                          prev_cam2ego), dim=1)
        feature, trunk_outs = self.bev_encoder(bev)
        return StudentOutput(bev, trunk_outs[1], feature, self.head(feature), depth)

    def _previous_frames(self, T, K, ida, bda, prev2curr, prev_bev, prev_images, prev_cam2ego) -> list[torch.Tensor]:
        """The T previous BEV features, each ``(B, C_ctx, ny, nx)``, warped into the current frame."""
        if prev2curr is None or (prev_bev is None and (prev_images is None or prev_cam2ego is None)):
            raise ValueError(f"this model uses {T} previous frames: pass prev2curr and either prev_bev or "
                             f"prev_images with prev_cam2ego")
        given = prev_bev if prev_bev is not None else prev_images
        if given.shape[1] != T or prev2curr.shape[1] != T:
            raise ValueError(f"the model expects {T} previous frames, got {given.shape[1]} (prev_bev/prev_images) "
                             f"and {prev2curr.shape[1]} (prev2curr)")
        warped = []
        with torch.no_grad():
            for t in range(T):
                if prev_bev is not None:
                    frame = prev_bev[:, t]
                else:
                    frame = self.lift(prev_images[:, t], K, prev_cam2ego[:, t], ida, bda)[0]
                warped.append(warp_bev(frame, cur2prev_transform(prev2curr[:, t], bda), self.cfg.bev_grid))
        return warped

    # --------------------------------------------------------------------------------------------------- decode
    def decode(self, head_outputs: list[dict[str, torch.Tensor]]) -> list[Detections]:
        """Head outputs -> per-sample :class:`~.decode.Detections` (boxes ``(N, 9)`` in the ego frame of the
        calibration, after ``bda``), with the config's thresholds and NMS."""
        c = self.cfg
        return decode_detections(head_outputs, c.head.task_groups, c.class_names, c.bev_grid, c.decode)
