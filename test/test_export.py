"""torch.export of the inference graph: the saved .pt2 program agrees with eager mode within 1e-4."""
from pathlib import Path

import pytest
import torch

from labeldistill_ros.model import StudentDetector, export_student, load_exported, load_model_config, unflatten_head_outputs
from labeldistill_ros.model.export import HEAD_OUTPUT_ORDER, example_inputs

SMALL = Path(__file__).resolve().parents[1] / "config" / "model" / "r18_128x352_cpu.yaml"
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "real-nuscenes-sample" / "sample.json"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_exported_program_matches_eager(tmp_path):
    cfg = load_model_config(SMALL)
    torch.manual_seed(0)
    model = StudentDetector.from_config(cfg).eval()
    inputs = example_inputs(cfg, num_cameras=6)
    export_student(model, inputs, tmp_path / "student.pt2")
    program = load_exported(tmp_path / "student.pt2")

    # different images and a different calibration than the example: calibration is a graph input
    images = torch.randn_like(inputs[0])
    K, cam2ego, ida, bda = (t.clone() for t in inputs[1:5])
    K[..., 0, 0] *= 1.1
    cam2ego[..., 0, 3] += 0.3
    bda = torch.tensor([[[0.0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]])  # 90 deg BEV rotation
    with torch.no_grad():
        eager = model(images, K, cam2ego, ida, bda)
        flat = program(images, K, cam2ego, ida, bda)
    assert len(flat) == 1 + len(HEAD_OUTPUT_ORDER) * len(cfg.head.task_groups)
    torch.testing.assert_close(flat[0], eager.bev_input, atol=1e-4, rtol=1e-4)
    exported_heads = unflatten_head_outputs(flat[1:], len(cfg.head.task_groups))
    for got, want in zip(exported_heads, eager.head_outputs):
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-4, rtol=1e-4)
    # the same boxes come out of either path
    a, b = model.decode(exported_heads)[0], model.decode(eager.head_outputs)[0]
    n = min(len(a.scores), len(b.scores), 50)
    torch.testing.assert_close(a.scores[:n], b.scores[:n], atol=1e-4, rtol=1e-4)
    # shapes are checked: a different camera count is refused
    with pytest.raises(Exception):
        program(images[:, :5], K[:, :5], cam2ego[:, :5], ida[:, :5], bda)
