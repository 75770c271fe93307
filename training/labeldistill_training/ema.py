"""Exponential moving average of a model's weights (BEVDepth's ``ModelEMA``), used by the trainer."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


class ModelEMA:
    """Exponential moving average of a module's parameters and buffers (BEVDepth's ``ModelEMA``).

    ``decay_t = decay * (1 - exp(-updates / ramp))`` (ramp 0 = constant decay). Buffers (BN statistics) are
    averaged like parameters; integer buffers are copied.
    """

    def __init__(self, module: nn.Module, decay: float = 0.999, ramp: float = 2000.0, updates: int = 0) -> None:
        self.ema = copy.deepcopy(module).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, updates

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.ramp)) if self.ramp > 0 else self.decay

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        msd = module.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach().to(v.dtype), alpha=1 - d)
            else:
                v.copy_(msd[k])

    def state_dict(self) -> dict:
        return {"module": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, sd: dict) -> None:
        self.ema.load_state_dict(sd["module"])
        self.updates = int(sd["updates"])
