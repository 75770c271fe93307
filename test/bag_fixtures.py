"""Shared fixtures of the bag tests (imported by the test_bag_* modules; no tests here).

The dataset is the ``tiny`` synthetic nuScenes set (generated once per session in a tmp dir), or any
nuScenes-format dataset named by ``LABELDISTILL_BAG_TEST_DATASET=DATAROOT:VERSION`` (e.g. real v1.0-mini).
Bags made from it are cached per session too.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SYNTH_SIZE = "tiny"
SYNTH_SEED = 0


@pytest.fixture(scope="session")
def nusc_dataset(tmp_path_factory) -> tuple[Path, str]:
    """(dataroot, version) of the test dataset."""
    env = os.environ.get("LABELDISTILL_BAG_TEST_DATASET")
    if env:
        root, version = env.rsplit(":", 1)
        return Path(root), version
    from labeldistill_training.synth.config import SIZES

    root = tmp_path_factory.mktemp("synth_tiny")
    r = subprocess.run([sys.executable, "-m", "labeldistill_training.synth.cli", "--size", SYNTH_SIZE,
                        "--seed", str(SYNTH_SEED), "--out", str(root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return root, SIZES[SYNTH_SIZE].version


@pytest.fixture(scope="session")
def make_bag(nusc_dataset, tmp_path_factory):
    """``make_bag(name, **Options)`` -> bag path; converted once per (name) in this session."""
    from labeldistill_training.tools.nusc2bag import Options, convert

    base = tmp_path_factory.mktemp("bags")
    made: dict[str, Path] = {}

    def _make(name: str, **kw) -> Path:
        if name not in made:
            out = base / name
            convert(Options(dataroot=str(nusc_dataset[0]), version=nusc_dataset[1], out=str(out), progress=False,
                            **kw))
            made[name] = out
        return made[name]

    return _make


@pytest.fixture(scope="session")
def first_scene(nusc_dataset) -> str:
    """Name of the dataset's first scene (one-scene bags keep the tests short)."""
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version=nusc_dataset[1], dataroot=str(nusc_dataset[0]), verbose=False)
    return min(nusc.scene, key=lambda s: nusc.get("sample", s["first_sample_token"])["timestamp"])["name"]
