"""The stage's DataLoader: seeded per epoch (the same order on every run and rank layout), sharded by a
``DistributedSampler`` under ``torchrun``, and able to start after the first ``skip_batches`` batches of the epoch
(a resume in the middle of an epoch sees exactly the batches the stopped run had left)."""
from __future__ import annotations

import itertools
import random

import numpy as np
import torch

from labeldistill_training.config import TrainConfig
from labeldistill_training.distributed import DistInfo


class SkipSampler(torch.utils.data.Sampler):
    """``sampler``'s indices without the first ``skip`` (drawn lazily: the same random draws as ``sampler``)."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def build_loader(ds, cfg: TrainConfig, dist: DistInfo, split: str, epoch: int, collate_fn, device: torch.device,
                 skip_batches: int = 0) -> torch.utils.data.DataLoader:
    """DataLoader of ``ds`` for ``split`` in ``epoch`` (training: shuffled, last partial batch dropped; capped
    at ``loader.max_train_samples`` / ``max_val_samples``), without its first ``skip_batches`` batches."""
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    train = split == "train"
    cap = cfg.loader.max_train_samples if train else cfg.loader.max_val_samples
    if cap is not None and len(ds) > cap:
        ds = torch.utils.data.Subset(ds, list(range(cap)))
    g = torch.Generator().manual_seed(cfg.trainer.seed * 100003 + epoch)
    if dist.world > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(
            ds, num_replicas=dist.world, rank=dist.rank, shuffle=train, seed=cfg.trainer.seed, drop_last=train)
        sampler.set_epoch(epoch)
    elif train:
        sampler = torch.utils.data.RandomSampler(ds, generator=g)
    else:
        sampler = torch.utils.data.SequentialSampler(ds)
    bs = cfg.loader.batch_size
    if skip_batches:
        sampler = SkipSampler(sampler, skip_batches * bs)
    nw = cfg.loader.num_workers
    return torch.utils.data.DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=nw, collate_fn=collate_fn,
                                       drop_last=train and len(ds) >= bs, generator=g, persistent_workers=False,
                                       worker_init_fn=_worker_init if nw else None,
                                       pin_memory=device.type == "cuda")


def _worker_init(worker_id: int) -> None:
    # One torch thread per loader worker. OpenCV's pool is not touched here: the dataset already set it to one
    # thread in the parent before the fork (a forked worker that reconfigures it can deadlock).
    torch.set_num_threads(1)
    s = torch.initial_seed() % (2 ** 32)
    np.random.seed(s)
    random.seed(s)
