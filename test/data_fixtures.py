"""Session fixtures: one synthetic ``tiny`` dataset (seed 0, with instance masks) per test process, loaded through
nuscenes-devkit, and its infos. Import with ``from data_fixtures import *`` (or register as a pytest plugin)."""
from __future__ import annotations

import pytest

TINY_SEED = 0
TINY_VERSION = "v1.0-synth"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """Dataroot of the generated tiny set (2 scenes x 4 key frames, 400x225, masks): ~4 s once per process."""
    from labeldistill_training.synth.generate import generate

    root = tmp_path_factory.mktemp("synth_tiny")
    generate("tiny", TINY_SEED, str(root), workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_nusc(tiny_root):
    """``NuScenes`` over the tiny set."""
    from labeldistill_training.data.infos import load_nuscenes

    return load_nuscenes(str(tiny_root), TINY_VERSION)


@pytest.fixture(scope="session")
def tiny_infos(tiny_nusc):
    """``{split: infos}`` for synth_train, synth_val and synth_all."""
    from labeldistill_training.data.infos import create_infos

    return {s: create_infos(tiny_nusc, s) for s in ("synth_train", "synth_val", "synth_all")}


@pytest.fixture(scope="session")
def tiny_instances(tiny_root):
    """``{scene name: [instance token per mask value - 1]}`` of the tiny set's instance masks."""
    import json

    with open(tiny_root / "synth_masks" / "instances.json") as f:
        return json.load(f)


__all__ = ["tiny_root", "tiny_nusc", "tiny_infos", "tiny_instances", "TINY_SEED", "TINY_VERSION"]
