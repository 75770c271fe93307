"""Batching of :class:`~.dataset.NuScenesDataset` samples."""
from __future__ import annotations

import torch

STACKED = ("imgs", "K", "cam2ego", "ida", "bda", "prev2curr", "depth", "ego2global", "frame_dt")
"""Keys stacked into one tensor with a leading batch dimension B."""
LISTED = ("gt_boxes", "gt_labels", "points", "sample_token", "frame_tokens")
"""Keys kept as length-B lists (variable sizes / strings)."""


def collate_batch(samples: list[dict]) -> dict:
    """Batch samples: ``imgs (B, F, N, 3, H, W)``, ``K (B, F, N, 3, 3)``, ``cam2ego``/``ida (B, F, N, 4, 4)``,
    ``bda (B, 4, 4)``, ``prev2curr (B, F-1, 4, 4)``, ``depth (B, N, h, w)``, ``ego2global (B, 4, 4)``,
    ``frame_dt (B, F)``; ``gt_boxes`` (list of ``(M_b, 9)``), ``gt_labels`` (list of ``(M_b,)``), ``points``
    (list of ``(P_b, 5)``), ``sample_token`` and ``frame_tokens`` as lists. Keys absent from the samples are
    absent from the batch."""
    if not samples:
        raise ValueError("collate_batch: empty batch")
    out: dict = {}
    for k in STACKED:
        if k in samples[0]:
            out[k] = torch.stack([s[k] for s in samples])
    for k in LISTED:
        if k in samples[0]:
            out[k] = [s[k] for s in samples]
    for k in samples[0]:
        if k not in out:
            out[k] = [s[k] for s in samples]
    return out
