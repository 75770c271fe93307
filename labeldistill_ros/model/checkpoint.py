"""Student checkpoints: weights + the model config + class names + a format version, in one ``torch.save`` file.

Layout (a plain dict, readable with ``torch.load(..., weights_only=True)``)::

    {"format_version": 1, "model_config": {...plain dict...}, "class_names": [...], "state_dict": {...},
     "extra": {...}}   # extra: free for the trainer (epoch, metrics, EMA flag, ...), weights_only-safe values

Other keys are allowed and ignored (the trainer adds its own); an optional ``kind`` must be ``"student"``.

The one implementation of checkpoint format 1, for the runtime and the trainer alike: :func:`atomic_save` writes
every checkpoint file (temporary file in the same folder, fsync, ``os.replace``: a crash leaves the old file or
the new one, never half of one) and :func:`read_payload` reads every one (``torch.load(..., weights_only=True)``,
format version, ``kind``: ``"student"`` when absent; the trainer's files say ``"teacher"``, ``"label_encoder"``,
``"<stage>_state"``).

Loading never unpickles arbitrary objects, and every mismatch (file, format, kind, config, classes, tensor
shapes) raises :class:`CheckpointError` naming the file, what differs and the fix.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, ModelConfig, model_config_from_dict, model_config_to_dict
from .state_dict import state_dict_problems
from .student import StudentDetector

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_config", "class_names", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, not a student checkpoint, or not matching the expected model."""


def atomic_save(payload: Any, path: str | Path) -> None:
    """``torch.save(payload)`` to ``path`` atomically: a temporary file in the same folder, flushed and fsynced,
    then ``os.replace`` (readers see the old file or the complete new one, also after a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_payload(path: str | Path, kind: str | None = None, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a format-1 checkpoint dict with ``weights_only=True`` and check it: readable, a dict holding
    ``required`` keys, this format version and (when ``kind`` is given) that kind. The returned dict always has
    ``kind`` (``"student"`` for the runtime's files, which do not store it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}: check the path (a training stage writes "
                              f"<work_dir>/<stage>/final.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... depending on the damage
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (truncated, corrupted or not saved with torch.save): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; write it again (e.g. rerun the "
            f"training stage) or point to another file"
        ) from e
    needed = ("format_version",) + tuple(k for k in required if k != "format_version")
    if not isinstance(payload, dict) or any(k not in payload for k in needed):
        have = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        missing = [k for k in needed if not isinstance(payload, dict) or k not in payload]
        what = f"{kind} checkpoint" if kind else "checkpoint"
        raise CheckpointError(
            f"{path} is not a labeldistill_ros {what}: missing {missing} (found {have}); write checkpoints with "
            f"labeldistill_ros.model.save_checkpoint (the student) or the trainer"
        )
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {payload['format_version']!r}, this code reads version {FORMAT_VERSION}: "
            f"use the labeldistill_ros version that wrote it, or write it again with this one"
        )
    payload = {**payload, "kind": payload.get("kind", "student")}
    if kind is not None and payload["kind"] != kind:
        raise CheckpointError(f"{path} holds a '{payload['kind']}' checkpoint, expected '{kind}': point to the "
                              f"{kind} file (e.g. <work_dir>/{kind.removesuffix('_state')}/"
                              f"{'last' if kind.endswith('_state') else 'final'}.pt)")
    return payload


def save_checkpoint(path: str | Path, model: StudentDetector, extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` (weights + config + class names) to ``path`` with :func:`atomic_save`."""
    payload = {
        "format_version": FORMAT_VERSION,
        "model_config": model_config_to_dict(model.cfg),
        "class_names": list(model.cfg.class_names),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    atomic_save(payload, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint's payload; ``payload["model_config"]`` is returned as a validated
    :class:`ModelConfig`."""
    path = Path(path)
    payload = read_payload(path, "student", REQUIRED_KEYS)
    try:
        cfg = model_config_from_dict(payload["model_config"], source=f"{path} (model_config)")
    except ConfigError as e:
        raise CheckpointError(f"the model config stored in the checkpoint is invalid: {e}") from e
    if list(payload["class_names"]) != list(cfg.class_names):
        raise CheckpointError(
            f"{path}: class_names {list(payload['class_names'])} differ from its model config's "
            f"{list(cfg.class_names)}"
        )
    return {**payload, "model_config": cfg}


def config_differences(expected: ModelConfig, found: ModelConfig) -> list[str]:
    """Human-readable ``key: checkpoint X, expected Y`` lines for every differing setting (empty if equal)."""

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = v
        return out

    a, b = flat(model_config_to_dict(found)), flat(model_config_to_dict(expected))
    return [f"{k}: checkpoint {a.get(k)!r}, expected {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def load_checkpoint(
    path: str | Path,
    expected_config: ModelConfig | None = None,
    map_location: str | torch.device = "cpu",
    cache_size: int = 4,
) -> StudentDetector:
    """Build the student from a checkpoint's own config and load its weights (strict), in eval mode.

    ``expected_config``: when given (e.g. the node's configured model), any difference to the checkpoint's
    config is an error listing the differing keys (the name is ignored).
    """
    payload = read_checkpoint(path)
    cfg: ModelConfig = payload["model_config"]
    if expected_config is not None:
        diffs = [d for d in config_differences(expected_config, cfg) if not d.startswith("name:")]
        if diffs:
            raise CheckpointError(f"{path}: the checkpoint's model config differs from the expected one: "
                                  + "; ".join(diffs))
    model = StudentDetector.from_config(cfg, cache_size=cache_size)
    load_state_dict_checked(model, payload["state_dict"], str(path))
    return model.to(map_location).eval()


def load_state_dict_checked(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists missing/unexpected keys and shape mismatches."""
    problems = state_dict_problems(model.state_dict(), state_dict)
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the model: " + " | ".join(problems))
    model.load_state_dict(state_dict, strict=True)
