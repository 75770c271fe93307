"""Generate a whole synthetic nuScenes-format dataset (scenes in parallel processes, tables at the end)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from .config import SIZES, SynthConfig
from .sensors import SceneRecord, simulate_scene
from .tables import build_tables, instance_token, split_scene_names, write_dataset_files


@dataclass(frozen=True)
class GenerationSummary:
    """What :func:`generate` wrote: dataroot, version, counts, split names and the wall time (s)."""

    dataroot: str
    version: str
    num_scenes: int
    num_samples: int
    num_annotations: int
    splits: dict
    seconds: float


def _scene_job(args) -> SceneRecord:
    config, seed, index, dataroot = args
    return simulate_scene(config, seed, index, dataroot)


def generate(config: SynthConfig | str, seed: int, dataroot: str, workers: int | None = None) -> GenerationSummary:
    """Write a synthetic dataset to ``dataroot`` (created if needed).

    Args:
        config: a :class:`SynthConfig` or the name of a preset in :data:`SIZES` ('tiny', 'demo', 'bench').
        seed: master seed; the same seed gives byte-identical files whatever ``workers`` is.
        dataroot: output folder (nuScenes dataroot: ``samples/``, ``sweeps/``, ``maps/``, ``<version>/``).
        workers: parallel processes (default: min(2, CPU count, scenes)); 1 = in this process.
    Returns:
        A :class:`GenerationSummary`.
    """
    cfg = SIZES[config] if isinstance(config, str) else config
    t0 = time.perf_counter()
    os.makedirs(dataroot, exist_ok=True)
    if workers is None:
        workers = min(2, os.cpu_count() or 1, cfg.num_scenes)
    jobs = [(cfg, int(seed), i, dataroot) for i in range(cfg.num_scenes)]
    if workers <= 1:
        records = [_scene_job(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as ex:
            records = list(ex.map(_scene_job, jobs))
    tables = build_tables(records, cfg, int(seed))
    splits = split_scene_names([r.scene.name for r in records], cfg.val_fraction)
    write_dataset_files(dataroot, cfg.version, tables, splits)
    if cfg.write_masks:  # mask value i + 1 = actor i -> its instance token ('' if never annotated)
        known = {r["token"] for r in tables["instance"]}
        inst = {}
        for r in records:
            toks = [instance_token(int(seed), r.scene.index, a) for a in range(len(r.scene.actors))]
            inst[r.scene.name] = [t if t in known else "" for t in toks]
        with open(os.path.join(dataroot, "synth_masks", "instances.json"), "w") as f:
            json.dump(inst, f, indent=1)
    return GenerationSummary(dataroot, cfg.version, len(records), len(tables["sample"]),
                             len(tables["sample_annotation"]), {k: len(v) for k, v in splits.items()},
                             time.perf_counter() - t0)
