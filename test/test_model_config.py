"""Model configs: both shipped YAML files load; every kind of mistake gives an error naming the key and the fix."""
import copy
from pathlib import Path

import pytest
import yaml

from labeldistill_ros.model.config import (
    ConfigError,
    ModelConfig,
    load_model_config,
    model_config_from_dict,
    model_config_to_dict,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "model"


@pytest.fixture(scope="module")
def base() -> dict:
    return yaml.safe_load((CONFIG_DIR / "r18_128x352_cpu.yaml").read_text())


@pytest.mark.parametrize("name", ["r50_256x704.yaml", "r18_128x352_cpu.yaml"])
def test_shipped_configs_load_and_round_trip(name):
    cfg = load_model_config(CONFIG_DIR / name)
    assert isinstance(cfg, ModelConfig)
    assert model_config_from_dict(model_config_to_dict(cfg)) == cfg


def edit(base: dict, path: str, value) -> dict:
    d = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return d


DELETE = object()

BAD = [
    # (key path, value, substrings the message must contain)
    ("depth_net.num_bin", 112, ["unknown key 'depth_net.num_bin'", "did you mean 'depth_net.num_bins'"]),
    ("backbone.depth", "fifty", ["'backbone.depth' must be an integer", "'fifty'"]),
    ("backbone.depth", 101, ["backbone.depth = 101", "[18, 34, 50]"]),
    ("depth_net.use_dcn", 1, ["'depth_net.use_dcn' must be true or false"]),
    ("depth_net.mid_channels", 66, ["depth_net.mid_channels = 66", "multiple of 4", "use_dcn: false"]),
    ("depth_net.num_bins", 100, ["depth_net.num_bins = 100", "gives 112 bins", "set num_bins: 112"]),
    ("depth_net.depth_bound", [2.0, 58.0, 0.3], ["not a multiple of step 0.3"]),
    ("depth_net.depth_bound", [2.0, 58.0], ["'depth_net.depth_bound' must have 3 entries"]),
    ("depth_net.depth_bound", [0.0, 58.0, 0.5], ["depth_net.depth_bound", "min > 0"]),
    ("bev_grid.x", [-51.2, 51.2, 0.7], ["bev_grid.x", "not a multiple of the cell size 0.7"]),
    ("bev_grid.x", [-48.0, 48.0, 1.6], ["64x60", "divisible by 8"]),
    ("bev_grid.z", [-5.0, 3.0, 1.0], ["bev_grid.z", "single bin", "set its step to max - min = 8"]),
    ("input_size", [130, 352], ["input_size = [130, 352]", "multiples of 32"]),
    ("input_size", [128], ["'input_size' must have 2 entries"]),
    ("image_neck.upsample_strides", [0.25, 0.5, 1, 1], ["different strides", "[0.25, 0.5, 1, 2]"]),
    ("temporal.num_prev_frames", -1, ["temporal.num_prev_frames = -1", "[0, 8]"]),
    ("head.task_groups", [["car"], ["truck"]], ["head.task_groups", "exactly once"]),
    ("decode.nms_radius", [1.0, 2.0], ["decode.nms_radius", "per class (10)", "got 2"]),
    ("decode.score_threshold", 1.5, ["decode.score_threshold = 1.5", "[0, 1)"]),
    ("decode.post_center_range", [1, 2, 3, 0, 0, 0], ["decode.post_center_range", "min < max"]),
    ("bev_trunk", [1, 2], ["'bev_trunk' must be a mapping"]),
    ("bev_trunk.strides", [1, 3, 2], ["bev_trunk.strides entries must be 1 or 2"]),
    ("name", DELETE, ["missing required key 'name'"]),
]


@pytest.mark.parametrize("key,value,needles", BAD,
                         ids=[f"{k}=<deleted>" if v is DELETE else f"{k}={v!r}"[:40] for k, v, _ in BAD])
def test_bad_config_names_key_and_fix(base, key, value, needles):
    with pytest.raises(ConfigError) as err:
        model_config_from_dict(edit(base, key, value), source="cfg.yaml")
    msg = str(err.value)
    assert msg.startswith("cfg.yaml: ")
    for needle in needles:
        assert needle in msg, msg


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read model config"):
        load_model_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_model_config(tmp_path / "list.yaml")
