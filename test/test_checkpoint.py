"""Student checkpoints: round trip, and a clear error for every kind of mismatched or damaged file."""
import dataclasses
from pathlib import Path

import pytest
import torch

from labeldistill_ros.model import CheckpointError, StudentDetector, load_checkpoint, load_model_config, save_checkpoint
from labeldistill_ros.model.checkpoint import read_checkpoint
from labeldistill_ros.model.export import example_inputs

SMALL = Path(__file__).resolve().parents[1] / "config" / "model" / "r18_128x352_cpu.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = load_model_config(SMALL)
    torch.manual_seed(0)
    model = StudentDetector.from_config(cfg).eval()
    path = tmp_path_factory.mktemp("ckpt") / "student.pt"
    save_checkpoint(path, model, extra={"epoch": 3})
    return cfg, model, path


def rewrite(path: Path, out: Path, change) -> Path:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, out)
    return out


def test_round_trip_gives_the_same_outputs(saved):
    cfg, model, path = saved
    loaded = load_checkpoint(path, expected_config=cfg)
    assert not loaded.training and loaded.cfg == cfg
    assert read_checkpoint(path)["extra"] == {"epoch": 3}
    inputs = example_inputs(cfg, num_cameras=2)
    images = torch.randn_like(inputs[0])
    with torch.no_grad():
        a, b = model(images, *inputs[1:]), loaded(images, *inputs[1:])
    torch.testing.assert_close(a.head_outputs[0]["heatmap"], b.head_outputs[0]["heatmap"])
    # the name is not part of the comparison
    load_checkpoint(path, expected_config=dataclasses.replace(cfg, name="renamed"))


def test_mismatched_config_names_the_keys(saved):
    cfg, _, path = saved
    other = dataclasses.replace(cfg, bev_trunk=dataclasses.replace(cfg.bev_trunk, base_channels=64))
    with pytest.raises(CheckpointError, match=r"bev_trunk.base_channels: checkpoint 32, expected 64"):
        load_checkpoint(path, expected_config=other)


def test_damaged_files(saved, tmp_path):
    _, _, path = saved
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint .truncated, corrupted"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_not_a_student_checkpoint(saved, tmp_path):
    _, model, _ = saved
    plain = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), plain)  # a bare state_dict: no config, no classes, no version
    with pytest.raises(CheckpointError, match=r"not a labeldistill_ros student checkpoint: missing \['format_version'"):
        load_checkpoint(plain)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format_version": 1, "obj": Path("x")}, pickled)  # arbitrary objects are refused (weights_only)
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(pickled)


def test_mismatched_contents(saved, tmp_path):
    _, _, path = saved

    def version(p):
        p["format_version"] = 2

    with pytest.raises(CheckpointError, match="format_version 2, this code reads version 1"):
        load_checkpoint(rewrite(path, tmp_path / "v2.pt", version))

    def classes(p):
        p["class_names"] = p["class_names"][::-1]

    with pytest.raises(CheckpointError, match="class_names .* differ from its model config"):
        load_checkpoint(rewrite(path, tmp_path / "classes.pt", classes))

    def shape(p):
        p["state_dict"]["head.task_heads.0.branches.heatmap.1.weight"] = torch.zeros(2, 32, 3, 3)

    with pytest.raises(CheckpointError, match=r"head.task_heads.0.branches.heatmap.1.weight: checkpoint \(2, 32, 3, 3\), "
                                              r"model \(1, 32, 3, 3\)"):
        load_checkpoint(rewrite(path, tmp_path / "shape.pt", shape))

    def missing(p):
        del p["state_dict"]["backbone.conv1.weight"]

    with pytest.raises(CheckpointError, match=r"missing keys \['backbone.conv1.weight'\]"):
        load_checkpoint(rewrite(path, tmp_path / "missing_key.pt", missing))

    def bad_config(p):
        p["model_config"]["depth_net"]["num_bins"] = 7

    with pytest.raises(CheckpointError, match="model config stored in the checkpoint is invalid.*num_bins = 7"):
        load_checkpoint(rewrite(path, tmp_path / "bad_config.pt", bad_config))

    def teacher(p):
        p["kind"] = "teacher"

    with pytest.raises(CheckpointError, match="holds a 'teacher' checkpoint"):
        load_checkpoint(rewrite(path, tmp_path / "teacher.pt", teacher))
