"""What keeps a state_dict from loading strictly into a module, in words (checkpoints and pretrained backbones)."""
from __future__ import annotations

import torch


def state_dict_problems(own: dict[str, torch.Tensor], given: dict[str, torch.Tensor], given_name: str = "checkpoint",
                        own_name: str = "model", show: int = 5) -> list[str]:
    """``["missing keys [...] (n)", "unexpected keys [...] (n)", "shape mismatches: k: <given_name> (..), <own_name>
    (..); ..."]``, only those that apply (empty: ``load_state_dict(given, strict=True)`` works). ``own`` is the
    module's ``state_dict()``; at most ``show`` names of each kind are listed."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = [f"{k}: {given_name} {tuple(given[k].shape)}, {own_name} {tuple(v.shape)}"
              for k, v in own.items() if k in given and tuple(given[k].shape) != tuple(v.shape)]
    more = lambda xs: " ..." if len(xs) > show else ""  # noqa: E731
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:show]}{more(missing)} ({len(missing)})")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:show]}{more(unexpected)} ({len(unexpected)})")
    if shapes:
        problems.append(f"shape mismatches: {'; '.join(shapes[:show])}{more(shapes)} ({len(shapes)})")
    return problems
