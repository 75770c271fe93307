"""What the trainer writes: each stage's weights files and its resumable training state, all in the one checkpoint
format of :mod:`labeldistill_ros.model.checkpoint` (written by its ``atomic_save``, read by its ``read_payload``).

* Teacher / label encoder weights: ``{"format_version", "kind": stage, "epoch", "state_dict", "train_config",
  "model_config", "class_names"}`` (:func:`weights_checkpoint`).
* Student weights: the runtime's own file (:func:`labeldistill_ros.model.checkpoint.save_checkpoint`, what the
  node loads) with the trainer's additions in its ``extra`` (:func:`save_student_weights`).
* Training state ``last.pt``: ``kind`` ``"<stage>_state"`` (:func:`training_state`).
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from labeldistill_ros.model.checkpoint import FORMAT_VERSION, atomic_save, read_payload
from labeldistill_training.config import TrainConfig, config_to_dict


def weights_checkpoint(kind: str, state_dict: dict, cfg: TrainConfig, model_cfg, epoch: int, **extra) -> dict:
    """A teacher or label encoder weights file's payload (``epoch``: 0-based index of the last epoch trained)."""
    from labeldistill_ros.model.config import model_config_to_dict

    return {"format_version": FORMAT_VERSION, "kind": kind, "epoch": epoch, "state_dict": state_dict,
            "train_config": config_to_dict(cfg), "model_config": model_config_to_dict(model_cfg),
            "class_names": list(model_cfg.class_names), **extra}


def save_student_weights(path: Path, trainable: nn.Module, cfg: TrainConfig, epoch: int) -> None:
    """The student stage's weights file, written by the runtime's own writer
    (:func:`labeldistill_ros.model.checkpoint.save_checkpoint`: what the node loads) with the trainer's
    additions in its ``extra``: ``stage``, ``method``, ``epoch`` (1-based, epochs completed), ``train_config`` and
    ``distiller`` (the distiller's trainable weights, e.g. LabelDistill's adaptors).

    ``trainable``: the stage's ``{"student": StudentDetector, "distiller": ...}`` ModuleDict (or its EMA copy)."""
    from labeldistill_ros.model.checkpoint import save_checkpoint

    distiller = {k: v.detach().cpu() for k, v in trainable["distiller"].state_dict().items()}
    save_checkpoint(path, trainable["student"], extra={
        "stage": "student", "method": cfg.distill.method, "epoch": epoch + 1, "train_config": config_to_dict(cfg),
        "distiller": distiller})


def save_weights(path: Path, stage: str, module: nn.Module, cfg: TrainConfig, model_cfg, epoch: int) -> None:
    """``stage``'s weights file at ``path``: the student's runtime file or a teacher / label encoder file."""
    if stage == "student":
        save_student_weights(path, module, cfg, epoch)
    else:
        atomic_save(weights_checkpoint(stage, module.state_dict(), cfg, model_cfg, epoch), path)


def trainable_state_from_checkpoint(ckpt: dict) -> dict:
    """Keys of the student stage's trainable ModuleDict (``student.*``, ``distiller.*``) from a student weights
    file (:func:`save_student_weights`, any runtime ``student.pt``) or an older trainer file (prefixed keys, or the
    distiller under a top-level ``distiller``)."""
    sd = ckpt["state_dict"]
    if any(k.startswith(("student.", "distiller.")) for k in sd):
        return dict(sd)
    out = {f"student.{k}": v for k, v in sd.items()}
    distiller = ckpt.get("distiller") or (ckpt.get("extra") or {}).get("distiller") or {}
    out.update({f"distiller.{k}": v for k, v in distiller.items()})
    return out


def init_state(path: Path, stage: str) -> dict:
    """The ``state_dict`` of ``stage.trainable()`` held by the weights file ``path`` (``init_checkpoint``)."""
    ckpt = read_payload(path)
    return trainable_state_from_checkpoint(ckpt) if stage == "student" else ckpt["state_dict"]


def training_state(stage: str, cfg: TrainConfig, epoch: int, iteration: Optional[int], global_step: int,
                   modules: dict, extra: Optional[dict] = None) -> dict:
    """``last.pt``'s payload. ``epoch``: the epoch it was written in; ``iteration``: batches of that epoch done
    (``None``: the epoch is complete, the run resumes at the next one). ``modules``: name -> object with a
    ``state_dict`` (model, optimizer, scheduler, ema, scaler) or ``None``."""
    return {"format_version": FORMAT_VERSION, "kind": f"{stage}_state", "epoch": epoch, "iteration": iteration,
            "global_step": global_step, **{k: (m.state_dict() if m is not None else None) for k, m in modules.items()},
            "train_config": config_to_dict(cfg), **(extra or {})}


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) random states, for a resume in the middle of an epoch (plain
    values and tensors: readable with ``weights_only=True``)."""
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out = {"python": [py[0], list(py[1]), py[2]],
           "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def link_or_copy(target: Path, link: Path, hard: bool = False) -> None:
    """``link`` -> ``target`` (same folder), replacing whatever ``link`` was: a relative symlink, or with ``hard``
    a hard link (the data stays on disk once, and ``link`` keeps it when ``target`` is later replaced); a copy
    where the file system has no such links."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.lnk")
    tmp.unlink(missing_ok=True)
    try:
        if hard:
            os.link(target, tmp)
        else:
            os.symlink(os.path.relpath(target, link.parent), tmp)
    except (OSError, NotImplementedError):
        shutil.copyfile(target, tmp)
    os.replace(tmp, link)


def prune_epochs(out_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` ``epoch_NNN.pt`` (after the new one and ``last.pt`` are on disk)."""
    epochs = sorted(p for p in Path(out_dir).glob("epoch_*.pt") if p.stem[len("epoch_"):].isdigit())
    for p in epochs[: max(0, len(epochs) - keep)]:
        p.unlink(missing_ok=True)
