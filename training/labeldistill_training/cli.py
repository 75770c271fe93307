"""``labeldistill-train --config FILE --stage teacher|label_encoder|student [--set key=value ...]``

Runs one training stage (see :mod:`labeldistill_training.trainer`). Several GPUs or nodes: launch with
``torchrun --nproc_per_node N [--nnodes M ...] -m labeldistill_training.cli --config ... --stage ...``.
``--set`` overrides config keys with dotted paths and YAML values, e.g. ``--set distill.method=cmkd
--set stages.student.epochs=2``. A bad config exits with status 2 and a message naming the offending key.
``--set trainer.max_steps=N`` stops cleanly after N optimizer steps (a resumable ``last.pt``); the same command
without it continues from there.
"""
from __future__ import annotations

import argparse
import json
import sys

import yaml

from labeldistill_training.config import STAGES, TrainConfigError, load_train_config


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}`` (values parsed with ``yaml.safe_load``)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise TrainConfigError(f"--set expects key=value, got {item!r}")
        key, val = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="labeldistill-train", description=__doc__.split("\n\n")[1])
    ap.add_argument("--config", required=True, help="training YAML (config/train/*.yaml)")
    ap.add_argument("--stage", required=True, choices=STAGES)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = ap.parse_args(argv)
    try:
        cfg = load_train_config(args.config, parse_overrides(args.set))
    except TrainConfigError as e:
        print(f"labeldistill-train: config error: {e}", file=sys.stderr)
        return 2
    from labeldistill_training.trainer import Trainer

    summary = Trainer(cfg, args.stage).fit()
    if summary.get("global_step") is not None:
        print(json.dumps({k: v for k, v in summary.items()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
