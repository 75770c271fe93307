"""Run-time history of BEV features for temporal students (the node's half of training's previous frames).

A temporal student (``temporal.num_prev_frames`` = T > 0) takes, besides the current cameras, the BEV features of
T earlier camera sets, ``temporal.effective_offsets_s`` seconds before the current one (most recent first). In
training (:func:`labeldistill_training.batch.student_inputs`) each previous set is lifted in its *own* key ego
frame and warped into the current ego frame with ``prev2curr``; the node does the same without lifting anything
twice:

1. each processed camera set is lifted once; its own BEV feature ``bev (C, ny, nx)`` (``C`` =
   ``depth_net.context_channels``: ``StudentOutput.bev_input[0, :C]`` or the exported graph's ``bev_current[0]``,
   in that set's ego frame, BEV augmentation = identity) is kept here with the set's stamp and ego pose
   (:meth:`BevHistory.push`);
2. for the next set, :meth:`BevHistory.select` takes for each trained offset the kept frame nearest in time to
   ``stamp - offset`` and returns the model's ``prev_bev (1, T, C, ny, nx)`` and ``prev2curr (1, T, 4, 4)``
   inputs (the model warps with :func:`labeldistill_ros.model.temporal.warp_bev`).

Where no kept frame lies within ``max_error_s`` of the wanted time (start-up, a gap in the data, frames dropped)
or a pose is unknown, that slot gets the *current* frame's own BEV with the identity motion: what training does at
the start of a scene (the previous frame clamped to the current one). The current BEV comes out of the same
forward, so a caller that runs the exported graph does::

    prev_bev, prev2curr, missing = history.select(stamp_ns, pose, offsets_s, max_error_s)
    out = program(images, K, cam2ego, ida, bda, prev2curr, prev_bev)    # out[0] = bev_current (1, C, ny, nx)
    if any(missing):  # bev_current does not depend on prev_bev: a second pass gives exactly training's input
        out = program(images, K, cam2ego, ida, bda, prev2curr, fill_missing(prev_bev, missing, out[0][0]))
    history.push(stamp_ns, pose, out[0][0])

Frames: ``ego_pose (4, 4)`` maps the ego frame (the node's target frame, the model's ego) at the stamp to a fixed
frame (odom / map / global), column vectors, metres; ``prev2curr = inv(pose_now) @ pose_then`` maps the earlier
ego frame to the current one (the dataset's ``inv(cur ego2global) @ prev ego2global``). Stamps are integer
nanoseconds. Single-threaded (the node's inference worker owns it). This module does not import the training
code or nuscenes-devkit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch

from .geometry import invert_transform

__all__ = ["BevHistory", "KeptFrame", "PreviousFrames", "fill_missing"]


@dataclass(frozen=True)
class KeptFrame:
    """One processed camera set: ``stamp_ns`` (int ns), ``ego_pose`` ``(4, 4)`` float64 ego -> fixed frame at that
    stamp (``None`` when unknown), ``bev`` ``(C, ny, nx)`` its own BEV feature in its own ego frame."""

    stamp_ns: int
    ego_pose: np.ndarray | None
    bev: torch.Tensor


class PreviousFrames(NamedTuple):
    """What :meth:`BevHistory.select` returns (unpacks as ``prev_bev, prev2curr, missing``).

    ``prev_bev (1, T, C, ny, nx)``: the kept BEV features, most recent offset first; ``prev2curr (1, T, 4, 4)``
    float32: each one's ego frame -> the current ego frame (identity where missing); ``missing`` (T bools): slots
    that fell back to the current frame (holding the ``current_bev`` given to select, else zeros to be replaced by
    :func:`fill_missing`).
    """

    prev_bev: torch.Tensor
    prev2curr: torch.Tensor
    missing: list[bool]


def fill_missing(prev_bev: torch.Tensor, missing: Sequence[bool], current_bev: torch.Tensor) -> torch.Tensor:
    """``prev_bev (1, T, C, ny, nx)`` with the ``missing`` slots replaced by ``current_bev`` (``(C, ny, nx)`` or
    ``(1, C, ny, nx)``): training's start-of-scene input (the current frame as its own previous frame, identity
    motion, which :meth:`BevHistory.select` already put in ``prev2curr``). Returns a new tensor."""
    cur = _as_chw(current_bev).to(device=prev_bev.device, dtype=prev_bev.dtype)
    if tuple(cur.shape) != tuple(prev_bev.shape[2:]):
        raise ValueError(f"current_bev {tuple(cur.shape)} does not match prev_bev's frames {tuple(prev_bev.shape[2:])}")
    out = prev_bev.clone()
    for t, m in enumerate(missing):
        if m:
            out[0, t] = cur
    return out


class BevHistory:
    """Bounded history of processed camera sets' own BEV features (see the module docstring).

    Args:
        max_frames: most frames kept (>= 1). Beyond it the frame in the densest stretch of time is dropped (never
            the newest or the oldest), so a fast camera rate thins the history evenly instead of losing the
            oldest frames that the largest offset needs.
        max_age_s: frames older than the newest stamp minus this are dropped (the largest offset plus the
            tolerance, :meth:`for_config`).
        bev_shape: ``(C, ny, nx)`` of the features (checked on push; needed to shape ``prev_bev`` before the
            first push when select gets no ``current_bev``). Taken from the first push when ``None``.
    Nothing is ever recomputed: a pushed feature is kept as is (copied only when it is a view into a larger
    tensor, e.g. ``bev_input[0, :C]``, so the larger tensor is not kept alive).
    """

    def __init__(self, max_frames: int, max_age_s: float, bev_shape: tuple[int, int, int] | None = None):
        if int(max_frames) < 1:
            raise ValueError(f"BevHistory: max_frames must be >= 1, got {max_frames}")
        if not (math.isfinite(max_age_s) and max_age_s > 0):
            raise ValueError(f"BevHistory: max_age_s must be > 0 seconds, got {max_age_s}")
        self.max_frames = int(max_frames)
        self.max_age_s = float(max_age_s)
        self.bev_shape = None if bev_shape is None else tuple(int(x) for x in bev_shape)
        self._frames: list[KeptFrame] = []  # ascending stamps

    @classmethod
    def for_config(cls, cfg, max_frames: int | None = None) -> "BevHistory":
        """A history sized for a :class:`~labeldistill_ros.model.config.ModelConfig`: features
        ``(context_channels, ny, nx)``, ``max_age_s`` = largest offset + ``max_offset_error_s``, and by default
        ``max_frames`` = ``ceil(max_age_s / max_offset_error_s) + 2`` (gaps of at most the tolerance once
        thinned; 19 frames for the r50 config: 1-4 s, 0.25 s)."""
        t = cfg.temporal
        offsets = t.effective_offsets_s
        age = (max(offsets) if offsets else 0.0) + t.max_offset_error_s
        if max_frames is None:
            max_frames = math.ceil(age / t.max_offset_error_s - 1e-9) + 2
        return cls(max_frames, age, (cfg.depth_net.context_channels, cfg.bev_grid.ny, cfg.bev_grid.nx))

    # ------------------------------------------------------------------------------------------------ state
    def __len__(self) -> int:
        return len(self._frames)

    @property
    def frames(self) -> tuple[KeptFrame, ...]:
        """The kept frames, oldest first."""
        return tuple(self._frames)

    @property
    def stamps_ns(self) -> list[int]:
        """Stamps of the kept frames, ascending."""
        return [f.stamp_ns for f in self._frames]

    def clear(self) -> None:
        """Forget every frame (a bag loop, a reset, a change of calibration or model)."""
        self._frames.clear()

    # ------------------------------------------------------------------------------------------------- push
    def push(self, stamp_ns: int, ego_pose, bev: torch.Tensor) -> None:
        """Keep a processed set's own BEV feature.

        Args:
            stamp_ns: the set's stamp (int ns).
            ego_pose: ``(4, 4)`` ego -> fixed frame at ``stamp_ns`` (array-like), or ``None`` when unknown (the
                frame is kept but never selected).
            bev: ``(C, ny, nx)`` (or ``(1, C, ny, nx)``) the set's own BEV feature, in its own ego frame.
        A stamp at or before the newest kept one (a bag loop, a clock reset, a repeated set) first drops the kept
        frames at or after it: they are not in this set's past.
        """
        stamp_ns = int(stamp_ns)
        feat = _as_chw(bev).detach()
        if self.bev_shape is None:
            self.bev_shape = tuple(feat.shape)
        elif tuple(feat.shape) != self.bev_shape:
            raise ValueError(f"BevHistory.push: bev {tuple(feat.shape)} does not match the kept features "
                             f"{self.bev_shape} (C, ny, nx)")
        if feat.untyped_storage().nbytes() > feat.numel() * feat.element_size():
            feat = feat.clone()  # a view into a larger tensor: keep only this frame's feature alive
        pose = _pose_or_none(ego_pose, "ego_pose")
        if self._frames and stamp_ns <= self._frames[-1].stamp_ns:
            self._frames = [f for f in self._frames if f.stamp_ns < stamp_ns]
        self._frames.append(KeptFrame(stamp_ns, pose, feat))
        oldest = stamp_ns - round(self.max_age_s * 1e9)
        self._frames = [f for f in self._frames if f.stamp_ns >= oldest]
        while len(self._frames) > self.max_frames:
            self._drop_one()

    def _drop_one(self) -> None:
        """Drop the interior frame whose removal leaves the shortest gap (the densest spot); with fewer than
        three frames, the oldest."""
        fr = self._frames
        if len(fr) < 3:
            del fr[0]
            return
        i = min(range(1, len(fr) - 1), key=lambda j: (fr[j + 1].stamp_ns - fr[j - 1].stamp_ns, j))
        del fr[i]

    # ----------------------------------------------------------------------------------------------- select
    def select(self, stamp_ns: int, ego_pose, offsets_s: Sequence[float], max_error_s: float,
               current_bev: torch.Tensor | None = None) -> PreviousFrames:
        """The model's previous-frame inputs for the set at ``stamp_ns`` (nothing is changed here).

        Args:
            stamp_ns: the current set's stamp (int ns).
            ego_pose: ``(4, 4)`` current ego -> fixed frame, or ``None`` (then every slot is missing).
            offsets_s: T seconds before the current set, most recent first (``temporal.effective_offsets_s``).
            max_error_s: largest ``|kept stamp - (stamp - offset)|`` accepted (``temporal.max_offset_error_s``).
            current_bev: the current set's own BEV ``(C, ny, nx)`` when already known: put in the missing slots.
        For each offset: the kept frame with a known pose, strictly before ``stamp_ns`` (never a frame from the
        future of this set, e.g. after stamps went backwards), nearest to ``stamp - offset`` (ties: the more
        recent); if it is more than ``max_error_s`` away, or there is none, the slot is missing: the current
        frame's BEV (``current_bev``, else zeros to replace with :func:`fill_missing`) and the identity.
        Returns:
            :class:`PreviousFrames` ``(prev_bev (1, T, C, ny, nx), prev2curr (1, T, 4, 4) float32, missing)``, on
            the device and dtype of the kept features (or of ``current_bev``).
        """
        stamp_ns = int(stamp_ns)
        cur_pose = _pose_or_none(ego_pose, "ego_pose")
        cur = None if current_bev is None else _as_chw(current_bev).detach()
        shape = tuple(cur.shape) if cur is not None else self.bev_shape
        if shape is None:
            raise ValueError("BevHistory.select: the feature shape is unknown (nothing pushed yet): give bev_shape "
                             "to the constructor or pass current_bev")
        if cur is not None and self.bev_shape is not None and tuple(cur.shape) != self.bev_shape:
            raise ValueError(f"BevHistory.select: current_bev {tuple(cur.shape)} does not match the kept features "
                             f"{self.bev_shape}")
        ref = cur if cur is not None else (self._frames[-1].bev if self._frames else None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None else torch.float32
        err_ns = round(float(max_error_s) * 1e9)
        cands = [] if cur_pose is None else [f for f in self._frames
                                             if f.stamp_ns < stamp_ns and f.ego_pose is not None]
        cur_inv = None if cur_pose is None else invert_transform(cur_pose)
        bevs, p2c, missing = [], [], []
        for off in offsets_s:
            want = stamp_ns - round(float(off) * 1e9)
            best = min(cands, key=lambda f: (abs(f.stamp_ns - want), -f.stamp_ns), default=None)
            if best is None or abs(best.stamp_ns - want) > err_ns:
                bevs.append(cur if cur is not None else torch.zeros(shape, device=device, dtype=dtype))
                p2c.append(np.eye(4))
                missing.append(True)
            else:
                bevs.append(best.bev)
                p2c.append(cur_inv @ best.ego_pose)
                missing.append(False)
        if bevs:
            prev_bev = torch.stack([b.to(device=device, dtype=dtype) for b in bevs])[None]
        else:
            prev_bev = torch.zeros((1, 0, *shape), device=device, dtype=dtype)
        prev2curr = torch.as_tensor(np.asarray(p2c, dtype=np.float64).reshape(1, len(p2c), 4, 4),
                                    dtype=torch.float32)
        if device.type == "cuda":  # through pinned memory: a pageable copy would wait for the device's queue
            prev2curr = prev2curr.pin_memory().to(device, non_blocking=True)
        else:
            prev2curr = prev2curr.to(device)
        return PreviousFrames(prev_bev, prev2curr, missing)


def _as_chw(bev: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(bev):
        raise TypeError(f"expected a BEV feature tensor (C, ny, nx), got {type(bev).__name__}")
    if bev.dim() == 4 and bev.shape[0] == 1:
        bev = bev[0]
    if bev.dim() != 3:
        raise ValueError(f"expected a BEV feature (C, ny, nx) or (1, C, ny, nx), got shape {tuple(bev.shape)}")
    return bev


def _pose_or_none(pose, name: str) -> np.ndarray | None:
    if pose is None:
        return None
    if torch.is_tensor(pose):
        pose = pose.detach().cpu().double().numpy()
    T = np.array(pose, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"{name} must be a finite (4, 4) transform, got shape {T.shape}")
    return T
