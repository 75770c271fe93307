"""torch.export of the inference graph: the saved .pt2 program agrees with eager mode within 1e-4."""
from pathlib import Path

import pytest
import torch

from labeldistill_ros.model import StudentDetector, export_student, load_exported, load_model_config, unflatten_head_outputs
from labeldistill_ros.model.export import HEAD_OUTPUT_ORDER, example_inputs

SMALL = Path(__file__).resolve().parents[1] / "config" / "model" / "r18_128x352_cpu.yaml"


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
    with pytest.raises(AssertionError, match=r"Guard failed: images.size\(\)\[1\] == 6"):
        program(images[:, :5], K[:, :5], cam2ego[:, :5], ida[:, :5], bda)


def test_exported_temporal_program_matches_eager_over_a_sequence(tmp_path):
    """A temporal student (2 previous frames) exported with prev2curr and prev_bev as inputs: over three frames,
    each call fed the previous calls' exported ``bev_current`` as ``prev_bev`` (a BevHistory, as the node keeps
    them) with the ego motion in ``prev2curr``, agrees with eager mode given the eager ``bev_current``s."""
    import dataclasses


    from labeldistill_ros import geometry as g
    from labeldistill_ros.temporal_buffer import BevHistory, fill_missing

    base = load_model_config(SMALL)
    cfg = dataclasses.replace(base, temporal=dataclasses.replace(base.temporal, num_prev_frames=2,
                                                                 prev_offsets_s=(0.5, 1.0)))
    torch.manual_seed(0)
    model = StudentDetector.from_config(cfg).eval()
    inputs = example_inputs(cfg, num_cameras=2)
    assert inputs[5].shape == (1, 2, 4, 4) and inputs[6].shape == (1, 2, 32, 64, 64)
    export_student(model, inputs, tmp_path / "temporal.pt2")
    program = load_exported(tmp_path / "temporal.pt2")
    images, K, cam2ego, ida, bda = inputs[:5]
    C, ntask = cfg.depth_net.context_channels, len(cfg.head.task_groups)
    offsets = cfg.temporal.effective_offsets_s
    exported_hist, eager_hist = BevHistory.for_config(cfg), BevHistory.for_config(cfg)
    gen = torch.Generator().manual_seed(3)
    for i in range(3):
        stamp = i * 500_000_000
        pose = g.make_transform(g.yaw_to_quat(0.1 * i), [3.0 * i, 0.5 * i, 0.0])
        frame = torch.randn(images.shape, generator=gen)
        with torch.no_grad():
            sel = exported_hist.select(stamp, pose, offsets, 0.25)
            flat = program(frame, K, cam2ego, ida, bda, sel.prev2curr, sel.prev_bev)
            if any(sel.missing):  # the current frame stands in for missing ones (training's start of a scene)
                flat = program(frame, K, cam2ego, ida, bda, sel.prev2curr,
                               fill_missing(sel.prev_bev, sel.missing, flat[0]))
            esel = eager_hist.select(stamp, pose, offsets, 0.25)
            eager = model(frame, K, cam2ego, ida, bda, prev2curr=esel.prev2curr, prev_bev=esel.prev_bev)
            if any(esel.missing):
                eager = model(frame, K, cam2ego, ida, bda, prev2curr=esel.prev2curr,
                              prev_bev=fill_missing(esel.prev_bev, esel.missing, eager.bev_input[:, :C]))
        assert sel.missing == [i < 1, i < 2]
        torch.testing.assert_close(sel.prev2curr, esel.prev2curr)
        torch.testing.assert_close(flat[0], eager.bev_input[:, :C], atol=1e-4, rtol=1e-4)
        for got, want in zip(unflatten_head_outputs(flat[1:], ntask), eager.head_outputs):
            for k in want:
                torch.testing.assert_close(got[k], want[k], atol=1e-4, rtol=1e-4)
        exported_hist.push(stamp, pose, flat[0])
        eager_hist.push(stamp, pose, eager.bev_input[:, :C])
    assert not torch.equal(sel.prev2curr[0, 0], torch.eye(4))  # the last frame really warped its history
