"""Batch access: the one place that knows the data pipeline's batch keys (``imgs``/``images``, ``K``, ``cam2ego``,
``ida``, ``bda``, ``prev2curr``, ``points``, ``gt_boxes``, ``gt_labels``, ``depth``, ``sample_token``)."""
from __future__ import annotations

import torch


def batch_to(batch: dict, device: torch.device) -> dict:
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, (list, tuple)) and v and all(torch.is_tensor(x) for x in v):
            out[k] = [x.to(device, non_blocking=True) for x in v]
        else:
            out[k] = v
    return out


def gt_lists(batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-sample GT ``(N_b, 9)`` boxes (key ego, after BEV augmentation) and ``(N_b,)`` class ids."""
    return list(batch["gt_boxes"]), [l.long() for l in batch["gt_labels"]]


def padded_points(batch: dict) -> torch.Tensor:
    """``points``: a ``(B, P, 5)`` tensor, or the pipeline's list of ``(P_b, 5)`` padded with -999 rows (outside
    every range, so the voxeliser drops them)."""
    pts = batch["points"]
    if torch.is_tensor(pts):
        return pts
    n = max(1, max(int(p.shape[0]) for p in pts))
    out = pts[0].new_full((len(pts), n, pts[0].shape[1]), -999.0)
    for i, p in enumerate(pts):
        out[i, : p.shape[0]] = p
    return out


def student_inputs(batch: dict) -> dict:
    """Student forward arguments from a pipeline batch (``imgs (B, F, N, 3, H, W)``, frame 0 = current).

    The node's path: each previous frame ``t`` is lifted in its *own* key ego frame (``prev_cam2ego = cam2ego[:,
    1:] (B, T, N, 4, 4)``, camera -> that frame's key ego), without gradients, and warped into the current key
    ego with the batch's ``prev2curr (B, T, 4, 4)`` (previous key ego -> current key ego; identity for a frame
    clamped to the current one at the start of a scene), exactly as the node warps the BEV feature it kept.
    Also accepts ``images (B, N, 3, H, W)`` with per-frame-free calibration (tests)."""
    if "images" in batch:
        kw = {k: batch[k] for k in ("images", "K", "cam2ego", "ida", "bda")}
        return kw
    imgs = batch["imgs"]
    kw = {"images": imgs[:, 0], "K": batch["K"][:, 0], "cam2ego": batch["cam2ego"][:, 0],
          "ida": batch["ida"][:, 0], "bda": batch["bda"]}
    if imgs.shape[1] > 1:
        T = imgs.shape[1] - 1
        p2c = batch.get("prev2curr")
        if p2c is None or tuple(p2c.shape[1:]) != (T, 4, 4):
            raise ValueError(f"a batch with {T} previous frames needs 'prev2curr' of shape (B, {T}, 4, 4) (previous "
                             f"key ego -> current key ego, from the data pipeline), got "
                             f"{None if p2c is None else tuple(p2c.shape)}")
        kw["prev_images"] = imgs[:, 1:]
        kw["prev_cam2ego"] = batch["cam2ego"][:, 1:]
        kw["prev2curr"] = p2c
    return kw


def is_unlabeled(sample_token: str, fraction: float) -> bool:
    """Deterministic label withholding for CMKD's unlabeled-data mode: a sample is treated as unlabeled when the
    hash of its token falls below ``fraction`` (the same samples in every epoch, on every rank)."""
    import hashlib

    h = int(hashlib.sha1(str(sample_token).encode()).hexdigest()[:8], 16) / 2 ** 32
    return h < fraction
