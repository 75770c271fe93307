"""One trainer for the three LabelDistill stages: ``teacher``, ``label_encoder`` and ``student``.

:meth:`Trainer.fit` reads as resume -> epochs -> finish. The pieces it puts together, one job per module:

* :mod:`~labeldistill_training.builders` (config -> networks and the stage module) and
  :mod:`~labeldistill_training.stages` (the three stage modules, :class:`~labeldistill_training.stages.Frozen`);
* :mod:`~labeldistill_training.batch` (the pipeline's batch keys), :mod:`~labeldistill_training.loaders`,
  :mod:`~labeldistill_training.stage_data` (the ``data:`` section for a stage, the model settings taken from it);
* :mod:`~labeldistill_training.optimization` (AdamW, lr scaling, ``MultiStepLR``), :mod:`~labeldistill_training.ema`
  (``AveragedModel`` with BEVDepth's ramp), fp16 autocast + GradScaler on CUDA, gradient clipping;
* :mod:`~labeldistill_training.checkpoints` (every file written here, in the one format of
  :mod:`labeldistill_ros.model.checkpoint`), :mod:`~labeldistill_training.stage_log`,
  :mod:`~labeldistill_training.stage_eval` (DetectionEval).

Outputs under ``<trainer.work_dir>/<stage>/``:

* ``last.pt``: the full training state (model, EMA, optimizer, lr scheduler, scaler, epoch, step, config) after
  every epoch, and where a run stops early (``trainer.max_steps`` or a step callback) also the position inside the
  epoch with the random states: a run that finds it continues exactly where it stopped (after a crash: after the
  last completed epoch). Resuming needs only it.
* ``epoch_NNN.pt``: the weights after epoch NNN (EMA weights when EMA is on); the newest
  ``trainer.keep_checkpoints`` (3) are kept. The last epoch's is a hard link to the deliverable (stored once).
* ``final.pt``: the deliverable weights (EMA when on) that later stages load: teacher or label encoder.
* Student stage: ``student.pt`` is the deliverable, written once by the runtime's own writer (what the ROS node
  loads) with the trainer's additions in its ``extra`` (``stage``, ``method``, ``epoch``, ``train_config``,
  ``distiller``); ``final.pt`` is a relative symlink to it, so ``<work_dir>/<stage>/final.pt`` names every
  stage's result. The student's ``epoch_NNN.pt`` use the same format, so the node can load any kept epoch.
* ``log.csv``, ``loss_curves.png``, TensorBoard scalars under ``tb/``, ``summary.json``, and ``metrics.json``
  (DetectionEval on the val split after the last epoch).

Distributed: launched by ``torchrun`` the trainer joins a process group (NCCL on CUDA, gloo on CPU), wraps the
stage module in DDP and shards the data with a ``DistributedSampler``; rank 0 writes checkpoints, logs, metrics.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from labeldistill_ros.model.checkpoint import atomic_save, read_payload
from labeldistill_training import optimization, stage_eval
from labeldistill_training.batch import batch_to
from labeldistill_training.builders import build_stage
from labeldistill_training.checkpoints import (init_state, link_or_copy, prune_epochs, rng_state, save_weights,
                                               set_rng_state, training_state)
from labeldistill_training.config import STAGES, TrainConfig, resolve_path
from labeldistill_training.distributed import init_distributed
from labeldistill_training.ema import ema_model, load_ema_state
from labeldistill_training.loaders import build_loader
from labeldistill_training.stage_data import (data_config_for_stage, default_datasets, with_data_image_transform,
                                              with_data_prev_offsets)
from labeldistill_training.stage_log import StageLog


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


@dataclass
class StepInfo:
    """What a step callback (``Trainer(on_step=...)``) sees after each optimizer step. ``epoch`` is 0-based,
    ``iteration`` counts the batches of this epoch done, ``step`` the optimizer steps of the stage in all."""

    stage: str
    epoch: int
    iteration: int
    step: int
    lr: float
    loss: float
    parts: dict


@dataclass
class _Run:
    """The state of one :meth:`Trainer.fit` (what ``last.pt`` saves, plus the log)."""

    stage: nn.Module
    trainable: nn.Module
    model: nn.Module  # the stage, or its DDP wrapper
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: Optional[torch.optim.swa_utils.AveragedModel]
    log: Optional[StageLog] = None
    epoch: int = 0  # the epoch to run next (or in progress)
    iteration: int = 0  # batches of that epoch already done
    step: int = 0
    sums: dict = field(default_factory=dict)  # per-epoch sums of the logged losses
    rng: Optional[list] = None  # per-rank random states of a run stopped mid-epoch
    step_times: list = field(default_factory=list)


def cpu_has_native_bf16() -> Optional[bool]:
    """Whether the CPU computes bfloat16 natively (Linux ``/proc/cpuinfo`` flags ``avx512_bf16`` or
    ``amx_bf16``); ``None`` where that cannot be read."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_amp_enabled(cpu_amp: bool | str) -> bool:
    """``stages.<stage>.cpu_amp``: true, false, or ``auto`` = on where the CPU has native bfloat16."""
    return bool(cpu_has_native_bf16()) if cpu_amp == "auto" else bool(cpu_amp)


class Trainer:
    """Trains one stage of a :class:`~labeldistill_training.config.TrainConfig`.

    Args:
        cfg: the validated config.
        stage: ``teacher`` | ``label_encoder`` | ``student``.
        dataset_factory: ``f(cfg, model_cfg, split: "train"|"val", stage) -> torch Dataset`` yielding samples the
            ``collate_fn`` batches (default: the project's nuScenes pipeline, from ``cfg.data``).
        collate_fn: batch collation (default: the pipeline's collate).
        device: default CUDA (``LOCAL_RANK``) when available, else CPU.
        on_step: called with a :class:`StepInfo` after every optimizer step; returning ``True`` stops the run
            cleanly like ``trainer.max_steps`` (a resumable ``last.pt`` at that step, no ``final.pt``).
    The data section is checked against the model config here, before any network is built.
    Entry point: :meth:`fit` -> summary dict (``stopped``: ended before the last epoch).
    """

    def __init__(self, cfg: TrainConfig, stage: str, dataset_factory: Optional[Callable] = None,
                 collate_fn: Optional[Callable] = None, device: Optional[torch.device] = None,
                 on_step: Optional[Callable[[StepInfo], Optional[bool]]] = None) -> None:
        from labeldistill_ros.model.config import load_model_config

        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
        self.cfg, self.stage, self.on_step = cfg, stage, on_step
        self.scfg = cfg.stage(stage)
        self.dist = init_distributed()
        if device is None:
            device = torch.device(f"cuda:{self.dist.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        self.device = device
        mpath = resolve_path(cfg, cfg.model_config)
        self.model_cfg = with_data_prev_offsets(cfg, with_data_image_transform(cfg, load_model_config(mpath)))
        self.data_config = None if cfg.data is None else \
            data_config_for_stage(cfg, self.model_cfg, stage, cfg.distill.method)
        self.grid = self.model_cfg.bev_grid
        self.out_dir = Path(resolve_path(cfg, cfg.trainer.work_dir)) / stage
        if dataset_factory is None or collate_fn is None:
            df, cf = default_datasets()
            dataset_factory = dataset_factory or df
            collate_fn = collate_fn or cf
        self.dataset_factory, self.collate_fn = dataset_factory, collate_fn
        self.use_amp = bool(self.scfg.amp and self.device.type == "cuda")
        # autocast dtype of a training step: fp16 + GradScaler on CUDA, bf16 on the CPU (stage's cpu_amp), or None
        self.autocast_dtype = torch.float16 if self.use_amp else \
            torch.bfloat16 if (cpu_amp_enabled(self.scfg.cpu_amp) and self.device.type == "cpu") else None

    # ------------------------------------------------------------------------------------------------ building
    def build_stage(self) -> nn.Module:
        return build_stage(self.cfg, self.model_cfg, self.stage, self._print)

    def build_optimizer(self, trainable: nn.Module) -> torch.optim.Optimizer:
        return optimization.build_optimizer(trainable, self.cfg, self.stage, self.dist.world)

    def base_lr(self) -> float:
        return optimization.base_lr(self.cfg, self.stage, self.dist.world)

    def grad_clip(self) -> Optional[float]:
        return optimization.grad_clip(self.cfg, self.stage)

    def describe_lr(self) -> str:
        return optimization.describe_lr(self.cfg, self.stage, self.dist.world)

    def loader(self, split: str, epoch: int, skip_batches: int = 0) -> torch.utils.data.DataLoader:
        ds = self.dataset_factory(self.cfg, self.model_cfg, split, self.stage)
        return build_loader(ds, self.cfg, self.dist, split, epoch, self.collate_fn, self.device, skip_batches)

    # ------------------------------------------------------------------------------------------------ training
    def fit(self) -> dict:
        """Train the stage: resume from ``last.pt`` if there is one, run the remaining epochs (or up to
        ``trainer.max_steps`` / a stop from ``on_step``), then write the deliverable and evaluate."""
        run = self._start()
        stopped = self._train(run)
        return self._finish(run, stopped)

    def _start(self) -> _Run:
        cfg, scfg = self.cfg, self.scfg
        seed_everything(cfg.trainer.seed)
        if cfg.trainer.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        stage = self.build_stage().to(self.device)
        trainable = stage.trainable()
        if scfg.init_checkpoint:
            sd = init_state(Path(resolve_path(cfg, scfg.init_checkpoint)), self.stage)
            missing, unexpected = trainable.load_state_dict(sd, strict=False)
            self._print(f"init from {scfg.init_checkpoint}: {len(missing)} missing, {len(unexpected)} unexpected keys")
        self._print(self.describe_lr())
        if self.autocast_dtype is not None:
            self._print(f"[{self.stage}] autocast {str(self.autocast_dtype).replace('torch.', '')} on {self.device}")
        if self.scfg.cpu_amp == "auto" and self.device.type == "cpu" and self.autocast_dtype is None:
            self._print(f"[{self.stage}] cpu_amp auto: fp32 (this CPU has no native bfloat16)")
        if self.autocast_dtype is torch.bfloat16 and cpu_has_native_bf16() is False:
            self._print(f"[{self.stage}] WARNING: stages.{self.stage}.cpu_amp is on but this CPU has no native "
                        "bfloat16 (no avx512_bf16 / amx_bf16 flag): bf16 is emulated and slower than fp32 here; "
                        f"set stages.{self.stage}.cpu_amp=false")
        opt = self.build_optimizer(trainable)
        run = _Run(stage, trainable, stage, opt, optimization.build_scheduler(opt, cfg, self.stage),
                   torch.amp.GradScaler("cuda", enabled=self.use_amp),
                   ema_model(trainable, cfg.trainer.ema_decay, cfg.trainer.ema_ramp) if scfg.ema else None)
        resumed = self._resume(run)
        if self.dist.world > 1:
            run.model = nn.parallel.DistributedDataParallel(
                stage, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.stage == "student")
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        run.log = StageLog(self.out_dir, self.dist.is_main, cfg.trainer.log_interval, cfg.trainer.progress,
                           resume_step=run.step if resumed else None)
        return run

    def _resume(self, run: _Run) -> bool:
        """Load ``last.pt`` into ``run`` when there is one: after a completed epoch the run goes on with the next,
        after a stop inside an epoch with the batch after the last one done."""
        last = self.out_dir / "last.pt"
        if not last.is_file():
            return False
        ck = read_payload(last, f"{self.stage}_state")
        run.trainable.load_state_dict(ck["model"])
        run.opt.load_state_dict(ck["optimizer"])
        if run.ema is not None and ck.get("ema") is not None:
            load_ema_state(run.ema, ck["ema"])
        if ck.get("scaler"):
            run.scaler.load_state_dict(ck["scaler"])
        run.iteration = int(ck.get("iteration") or 0)
        run.epoch = int(ck["epoch"]) + (0 if run.iteration else 1)
        optimization.restore_schedule(run.opt, run.sched, ck.get("scheduler"), epochs_done=run.epoch)
        run.step = int(ck["global_step"])
        run.sums, run.rng = dict(ck.get("epoch_sums") or {}), ck.get("rng")
        where = f"in epoch {run.epoch + 1} after {run.iteration} batches" if run.iteration \
            else f"after epoch {run.epoch}"
        self._print(f"[{self.stage}] resuming from {last} {where} (step {run.step})")
        return True

    def _train(self, run: _Run) -> bool:
        """The remaining epochs; ``True`` when the run stopped before the end (max_steps, ``on_step``)."""
        if run.epoch < self.scfg.epochs and self._at_max_steps(run):
            return True
        for epoch in range(run.epoch, self.scfg.epochs):
            if self._train_epoch(run, epoch) and run.epoch < self.scfg.epochs:  # a stop at the very end is no stop
                return True
        return False

    def _train_epoch(self, run: _Run, epoch: int) -> bool:
        """One epoch (from ``run.iteration`` on after a mid-epoch resume); ``True`` when asked to stop."""
        skip, cfg = run.iteration, self.cfg
        seed_everything(cfg.trainer.seed * 1000003 + epoch * 1009 + self.dist.rank)
        if skip and run.rng and self.dist.rank < len(run.rng):  # a rank the stopped run did not have: its seed
            set_rng_state(run.rng[self.dist.rank])
        elif not skip:
            run.sums = {}
        run.stage.train()
        loader = self.loader("train", epoch, skip_batches=skip)
        n_iter = len(loader) + skip
        if self.scfg.max_iters_per_epoch is not None:
            n_iter = min(n_iter, self.scfg.max_iters_per_epoch)
        run.log.start_epoch(n_iter, f"{self.stage} {epoch + 1}/{self.scfg.epochs}", done=skip)
        lr = run.opt.param_groups[0]["lr"]
        stop = False
        for it, batch in enumerate(loader, start=skip):
            if it >= n_iter:
                break
            stop = self._stop_requested(run, self._step(run, batch, epoch, it + 1, n_iter, lr))
            if stop and it + 1 < n_iter:
                run.log.end_epoch(None)
                self._save_state(run, epoch, iteration=it + 1)
                return True
            if stop:
                break
        self._end_epoch(run, epoch, n_iter, lr)
        return stop

    def _step(self, run: _Run, batch: dict, epoch: int, iteration: int, n_iter: int, lr: float) -> StepInfo:
        """One optimizer step on ``batch`` (forward, backward, clip, step, EMA) and its log row."""
        dev = self.device
        t0 = time.perf_counter()
        if hasattr(run.stage, "set_step"):
            run.stage.set_step(run.step)
        batch = batch_to(batch, dev)
        with torch.autocast(device_type=dev.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            loss, parts = run.model(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"[{self.stage}] non-finite loss at epoch {epoch} step {run.step}: "
                                     f"{ {k: float(v) for k, v in parts.items()} }")
        run.opt.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        gnorm, clip = float("nan"), self.grad_clip()
        if clip:
            run.scaler.unscale_(run.opt)
            gnorm = float(torch.nn.utils.clip_grad_norm_(run.trainable.parameters(), clip))
        run.scaler.step(run.opt)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update_parameters(run.trainable)
        run.step, run.iteration = run.step + 1, iteration
        dt = time.perf_counter() - t0
        run.step_times.append(dt)
        vals = {"loss": float(loss.detach())}
        vals.update({f"loss_{k}": float(v.detach() if torch.is_tensor(v) else v) for k, v in parts.items()})
        for k, v in vals.items():
            run.sums[k] = run.sums.get(k, 0.0) + v
        run.log.step({"epoch": epoch, "step": run.step, "lr": lr, "grad_norm": gnorm, "step_ms": dt * 1000, **vals},
                     last_of_epoch=iteration == n_iter)
        return StepInfo(self.stage, epoch, iteration, run.step, lr, vals["loss"],
                        {k[len("loss_"):]: v for k, v in vals.items() if k != "loss"})

    def _at_max_steps(self, run: _Run) -> bool:
        return self.cfg.trainer.max_steps is not None and run.step >= self.cfg.trainer.max_steps

    def _stop_requested(self, run: _Run, info: StepInfo) -> bool:
        """``trainer.max_steps`` reached, or ``on_step`` returned ``True`` (on any rank: all ranks stop)."""
        stop = bool(self.on_step(info)) if self.on_step is not None else False
        if self.on_step is not None and self.dist.world > 1:
            flag = torch.tensor([int(stop)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop or self._at_max_steps(run)

    def _end_epoch(self, run: _Run, epoch: int, n_iter: int, lr: float) -> None:
        """Step the lr schedule, write the epoch's weights and ``last.pt``, log the epoch's means."""
        run.sched.step()
        run.epoch, run.iteration = epoch + 1, 0
        if self.dist.is_main:
            self._save_epoch_weights(run, epoch)
        self._save_state(run, epoch, iteration=None)
        if self.dist.is_main:
            prune_epochs(self.out_dir, self.cfg.trainer.keep_checkpoints)
        run.log.end_epoch({"epoch": epoch, "step": run.step, "lr": lr,
                           **{k: v / max(1, n_iter) for k, v in run.sums.items()}})
        run.sums = {}
        if self.dist.world > 1:
            dist.barrier()

    def _finish(self, run: _Run, stopped: bool) -> dict:
        """Completed: the deliverable (if a resumed run had nothing left to train) and the evaluation. Stopped:
        only the summary (``last.pt`` holds where to go on)."""
        summary = {"stage": self.stage, "epochs": self.scfg.epochs, "global_step": run.step, "stopped": stopped,
                   "step_ms": 1000 * float(np.median(run.step_times)) if run.step_times else None}
        weights = run.ema.module if run.ema is not None else run.trainable
        if stopped:
            self._print(f"[{self.stage}] stopped after step {run.step}: run again (without trainer.max_steps or with "
                        f"a larger one) to continue from {self.out_dir / 'last.pt'}")
        elif self.dist.is_main:
            if not (self.out_dir / "final.pt").exists():
                self._save_final(weights, self.scfg.epochs - 1)
            if self.cfg.trainer.eval_at_end:
                if run.ema is not None:
                    run.trainable.load_state_dict(run.ema.module.state_dict())
                summary["metrics"] = self.evaluate(run.stage)
        if self.dist.is_main:
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if self.dist.world > 1:
            dist.barrier()
        return summary

    # ------------------------------------------------------------------------------------------------ saving
    def _save_state(self, run: _Run, epoch: int, iteration: Optional[int]) -> None:
        """``last.pt`` (rank 0 writes; inside an epoch every rank's random state goes in)."""
        extra = {}
        if iteration:
            states = [rng_state()]
            if self.dist.world > 1:
                states = [None] * self.dist.world
                dist.all_gather_object(states, rng_state())
            extra = {"rng": states, "epoch_sums": dict(run.sums)}
        if self.dist.is_main:
            modules = {"model": run.trainable, "optimizer": run.opt, "scheduler": run.sched, "ema": run.ema,
                       "scaler": run.scaler if self.use_amp else None}
            atomic_save(training_state(self.stage, self.cfg, epoch, iteration, run.step, modules, extra),
                        self.out_dir / "last.pt")
        if iteration and self.dist.world > 1:
            dist.barrier()

    def _save_epoch_weights(self, run: _Run, epoch: int) -> None:
        """``epoch_NNN.pt`` (when kept); the last epoch writes the deliverable and links its epoch file to it."""
        weights = run.ema.module if run.ema is not None else run.trainable
        epoch_file = self.out_dir / f"epoch_{epoch + 1:03d}.pt"
        keep = self.cfg.trainer.keep_checkpoints > 0
        if epoch == self.scfg.epochs - 1:
            final = self._save_final(weights, epoch)
            if keep:
                link_or_copy(final, epoch_file, hard=True)
        elif keep:
            save_weights(epoch_file, self.stage, weights, self.cfg, self.model_cfg, epoch)

    def _save_final(self, module: nn.Module, epoch: int) -> Path:
        """The deliverable: ``final.pt``; for the student ``student.pt`` (the node's file) and ``final.pt`` -> it."""
        path = self.out_dir / ("student.pt" if self.stage == "student" else "final.pt")
        save_weights(path, self.stage, module, self.cfg, self.model_cfg, epoch)
        if self.stage == "student":
            link_or_copy(path, self.out_dir / "final.pt")
        return path

    # ---------------------------------------------------------------------------------------------- evaluation
    def predict(self, stage: nn.Module, split: str = "val") -> list[dict]:
        """Decoded detections for every sample of ``split`` (see :func:`labeldistill_training.stage_eval.predict`)."""
        return stage_eval.predict(stage, self.loader(split, 0), self.model_cfg, self.device,
                                  self.cfg.loader.max_val_samples)

    def evaluate(self, stage: nn.Module) -> dict:
        """DetectionEval (nuscenes-devkit) on the val split; writes ``metrics.json`` and returns the metrics."""
        preds = self.predict(stage, "val")
        metrics = stage_eval.run_detection_eval(self.cfg, self.model_cfg, preds, self.out_dir / "eval")
        (self.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        self._print(f"[{self.stage}] val mAP {metrics.get('mAP', float('nan')):.4f} "
                    f"NDS {metrics.get('NDS', float('nan')):.4f}")
        return metrics

    def _print(self, msg: str) -> None:
        if self.dist.is_main:
            print(msg, flush=True)
