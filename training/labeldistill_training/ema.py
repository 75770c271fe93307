"""EMA of the trained weights: :class:`torch.optim.swa_utils.AveragedModel` with BEVDepth's ramped decay.

BEVDepth's ``ModelEMA`` (used by every LabelDistill stage) keeps ``ema = decay_k * ema + (1 - decay_k) * model``
after the k-th optimizer step, over parameters *and* buffers (BatchNorm statistics), with
``decay_k = decay * (1 - exp(-k / ramp))``, starting from a copy of the model. ``AveragedModel`` (``use_buffers=
True``) with :func:`ramped_ema_multi_avg_fn` does exactly that, with one convention to line the counts up:
``AveragedModel`` copies the model on its first update (``n_averaged == 0``); here the copy made at construction
counts as that first average (``n_averaged`` starts at 1), so the k-th update sees ``n_averaged == k`` and uses
``decay_k`` like BEVDepth. Integer buffers (``num_batches_tracked``) are copied, as BEVDepth does.
``ramp`` 0 = constant ``decay`` (what ``get_ema_multi_avg_fn(decay)`` computes).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel


def ramped_decay(decay: float, ramp: float, updates: int) -> float:
    """BEVDepth's decay after ``updates`` optimizer steps: ``decay * (1 - exp(-updates / ramp))`` (ramp 0 =
    constant)."""
    return decay * (1 - math.exp(-updates / ramp)) if ramp > 0 else decay


def ramped_ema_multi_avg_fn(decay: float, ramp: float):
    """``multi_avg_fn`` for :class:`AveragedModel`: lerp towards the model by ``1 - decay_k`` (floating tensors),
    copy the rest; ``num_averaged`` is the update's count ``k`` (see the module docstring)."""

    @torch.no_grad()
    def update(ema_tensors, model_tensors, num_averaged) -> None:
        if torch.is_floating_point(ema_tensors[0]):
            d = ramped_decay(decay, ramp, int(num_averaged))
            torch._foreach_lerp_(ema_tensors, model_tensors, 1.0 - d)
        else:
            torch._foreach_copy_(ema_tensors, model_tensors)

    return update


def ema_model(module: nn.Module, decay: float = 0.999, ramp: float = 2000.0) -> AveragedModel:
    """The EMA of ``module`` (a deep copy in eval mode, no gradients); call ``.update_parameters(module)`` after
    each optimizer step, read the averaged network at ``.module``. Its ``state_dict`` holds the weights and the
    update count (``n_averaged``), so a resumed run continues the same ramp."""
    ema = AveragedModel(module, multi_avg_fn=ramped_ema_multi_avg_fn(decay, ramp), use_buffers=True)
    ema.n_averaged.fill_(1)  # the construction copy is the first average (see the module docstring)
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def ema_updates(ema: AveragedModel) -> int:
    """Optimizer steps averaged so far (BEVDepth's ``updates``)."""
    return int(ema.n_averaged) - 1


def load_ema_state(ema: AveragedModel, state: dict) -> None:
    """Restore :func:`ema_model`'s ``state_dict``; also reads the earlier ``{"module": ..., "updates": k}``
    layout of this project's ``last.pt`` files."""
    if "updates" in state and "module" in state:
        ema.module.load_state_dict(state["module"])
        ema.n_averaged.fill_(int(state["updates"]) + 1)
        return
    ema.load_state_dict(state)
