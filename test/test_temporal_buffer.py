"""Temporal students at run time: the BEV history (labeldistill_ros.temporal_buffer) and the parity of training's
previous-frame path (previous images lifted in their own ego frame + prev2curr) with the node's path (each frame's
own kept BEV + prev2curr), through the real model and its real warp."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from labeldistill_ros import geometry as g
from labeldistill_ros.model import StudentDetector, load_model_config
from labeldistill_ros.model.config import ConfigError, model_config_from_dict, model_config_to_dict
from labeldistill_ros.model.export import example_inputs
from labeldistill_ros.model.temporal import cur2prev_transform, warp_bev
from labeldistill_ros.temporal_buffer import BevHistory, fill_missing

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "config" / "model" / "r18_128x352_cpu.yaml"
R50 = REPO / "config" / "model" / "r50_256x704.yaml"
S = 1_000_000_000  # ns per second

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pose(x, y, yaw):
    """(4, 4) ego -> fixed frame: ego at (x, y) m heading ``yaw`` rad."""
    return g.make_transform(g.yaw_to_quat(yaw), [x, y, 0.0])


def small_temporal_cfg(T: int):
    cfg = load_model_config(SMALL)
    return dataclasses.replace(cfg, temporal=dataclasses.replace(
        cfg.temporal, num_prev_frames=T, prev_offsets_s=tuple(0.5 * (i + 1) for i in range(T))))


def stamp_history(stamps_s, shape=(1, 2, 2), max_frames=50, max_age_s=10.0):
    """A history whose frame at time t (s) holds the value t everywhere (so selections can be read back)."""
    h = BevHistory(max_frames, max_age_s, shape)
    for t in stamps_s:
        h.push(round(t * S), np.eye(4), torch.full(shape, float(t), dtype=torch.float64))
    return h


def picked(prev_bev):
    return [round(v, 6) for v in prev_bev[0, :, 0, 0, 0].tolist()]


# ------------------------------------------------------------------------------------------------ config
def test_temporal_config_offsets_and_validation():
    r50 = load_model_config(R50).temporal
    assert r50.prev_offsets_s == (1.0, 2.0, 3.0, 4.0) and r50.effective_offsets_s == (1.0, 2.0, 3.0, 4.0)
    assert r50.max_offset_error_s == 0.25
    base = model_config_to_dict(load_model_config(SMALL))
    # an old checkpoint (no offsets stored) means the key frames 0.5 s apart
    old = dict(base, temporal={"num_prev_frames": 3})
    assert model_config_from_dict(old).temporal.effective_offsets_s == (0.5, 1.0, 1.5)
    bad = [({"num_prev_frames": 2, "prev_offsets_s": [0.5]}, ["temporal.prev_offsets_s has 1 entries", "[0.5, 1.0]"]),
           ({"num_prev_frames": 2, "prev_offsets_s": [1.0, 0.5]}, ["strictly increasing", "[0.5, 1.0]"]),
           ({"num_prev_frames": 2, "prev_offsets_s": [0.0, 0.5]}, ["temporal.prev_offsets_s", "> 0"]),
           ({"num_prev_frames": 1, "max_offset_error_s": 0.0}, ["temporal.max_offset_error_s", "> 0"]),
           ({"num_prev_frames": 1, "max_offset_error_s": 0.5}, ["temporal.max_offset_error_s", "smaller than"]),
           ({"num_prev_frames": 1, "prev_offsets_s": ["x"]}, ["'temporal.prev_offsets_s[0]' must be a number"])]
    for temporal, needles in bad:
        with pytest.raises(ConfigError) as err:
            model_config_from_dict(dict(base, temporal=temporal), source="m.yaml")
        for n in needles:
            assert n in str(err.value), str(err.value)
    h = BevHistory.for_config(load_model_config(R50))
    assert (h.max_frames, h.max_age_s, h.bev_shape) == (19, 4.25, (150, 128, 128))


# ------------------------------------------------------------------------------------------------ history
def test_kept_frame_warped_into_the_current_ego_frame_lands_on_the_object():
    """A blob seen in an earlier frame, kept with that frame's pose and selected after the ego drove and turned,
    lands through the model's warp where the static object now is in the current ego frame."""
    grid = load_model_config(SMALL).bev_grid  # 64 x 64 cells of 1.6 m over +-51.2 m
    iy, ix = np.mgrid[0:64, 0:64]
    xs, ys = -51.2 + (ix + 0.5) * 1.6, -51.2 + (iy + 0.5) * 1.6
    obj_prev = np.array([8.0, -12.0, 0.0])  # the object in the earlier ego frame (m)
    blob = torch.tensor(np.exp(-((xs - obj_prev[0]) ** 2 + (ys - obj_prev[1]) ** 2) / (2 * 2.4 ** 2)),
                        dtype=torch.float32)
    bev = torch.stack([blob, 2 * blob])  # (C=2, ny, nx)
    p0, p1 = pose(120.0, 40.0, 0.3), pose(120.0 + 6 * np.cos(0.3), 40.0 + 6 * np.sin(0.3), 0.3 + np.deg2rad(35))
    h = BevHistory(8, 2.0)
    h.push(10 * S, p0, bev)
    prev_bev, prev2curr, missing = h.select(10 * S + S // 2, p1, (0.5,), 0.25)
    assert missing == [False] and prev_bev.shape == (1, 1, 2, 64, 64) and prev2curr.dtype == torch.float32
    np.testing.assert_allclose(prev2curr[0, 0].numpy(), g.invert_transform(p1) @ p0, atol=1e-5)
    assert torch.equal(prev_bev[0, 0], bev)
    warped = warp_bev(prev_bev[:, 0], cur2prev_transform(prev2curr[:, 0], torch.eye(4)[None]), grid)[0, 0].numpy()
    expected = g.transform_points(g.invert_transform(p1) @ p0, obj_prev[None])[0]
    w = warped / warped.sum()
    centroid = np.array([(w * xs).sum(), (w * ys).sum()])
    assert np.linalg.norm(centroid - expected[:2]) < 0.15, (centroid, expected)
    assert np.linalg.norm(expected[:2] - obj_prev[:2]) > 5  # the ego really moved the object across cells
    iy_max, ix_max = np.unravel_index(np.argmax(warped), warped.shape)
    assert abs(xs[0, ix_max] - expected[0]) <= 0.8 + 1e-6 and abs(ys[iy_max, 0] - expected[1]) <= 0.8 + 1e-6


def test_nearest_frame_per_offset_and_tolerance_fallback():
    h = stamp_history([i * 0.1 for i in range(21)])  # 0.0 .. 2.0 s, every 0.1 s
    prev_bev, prev2curr, missing = h.select(round(2.03 * S), np.eye(4), (0.5, 1.0), 0.25)
    assert picked(prev_bev) == [1.5, 1.0] and missing == [False, False]
    # nothing within the tolerance of 2.1 - 2.5 = -0.4 s: that slot is the current frame with the identity
    cur = torch.full((1, 2, 2), -7.0, dtype=torch.float64)
    prev_bev, prev2curr, missing = h.select(round(2.1 * S), pose(3, 0, 0), (0.5, 2.5), 0.25, current_bev=cur)
    assert missing == [False, True] and picked(prev_bev) == [1.6, -7.0]
    assert torch.equal(prev2curr[0, 1], torch.eye(4))
    np.testing.assert_allclose(prev2curr[0, 0].numpy(), g.invert_transform(pose(3, 0, 0)), atol=1e-6)
    # sparse history: 0 s and 1 s kept; at 1.5 s the 0.5 s offset finds 1 s, the 1 s offset (0.5 s) is 0.5 s off
    h = stamp_history([0.0, 1.0])
    prev_bev, _, missing = h.select(round(1.5 * S), np.eye(4), (0.5, 1.0), 0.25)
    assert missing == [False, True] and picked(prev_bev) == [1.0, 0.0]  # zeros to be filled in the missing slot
    filled = fill_missing(prev_bev, missing, torch.full((2, 2), 9.0, dtype=torch.float64)[None])
    assert picked(filled) == [1.0, 9.0] and picked(prev_bev) == [1.0, 0.0]
    # the same frame may serve two offsets
    prev_bev, _, missing = stamp_history([1.0]).select(round(1.6 * S), np.eye(4), (0.5, 0.7), 0.25)
    assert picked(prev_bev) == [1.0, 1.0] and missing == [False, False]


def test_unknown_poses_fall_back_to_the_current_frame():
    h = BevHistory(10, 5.0, (1, 2, 2))
    h.push(0, pose(0, 0, 0), torch.zeros(1, 2, 2))
    h.push(S // 2, None, torch.ones(1, 2, 2))  # kept without a pose: never selected
    _, prev2curr, missing = h.select(S, pose(1, 0, 0), (0.5, 1.0), 0.3)
    # 0.5 s back is the pose-less frame (skipped; the posed one at 0 s is 0.5 s off): missing; 1 s back is 0 s
    assert missing == [True, False] and torch.equal(prev2curr[0, 0], torch.eye(4))
    np.testing.assert_allclose(prev2curr[0, 1].numpy(), g.invert_transform(pose(1, 0, 0)), atol=1e-6)
    _, _, missing = h.select(S, None, (0.5, 1.0), 0.3)  # no current pose: nothing can be related to it
    assert missing == [True, True]


def test_stamps_going_backwards_never_select_a_future_frame():
    h = stamp_history([0.7, 1.3])
    # at 1.2 s, offset 0.1 s wants 1.1 s: 1.3 s is nearer but lies in this set's future; 0.7 s is too far
    _, _, missing = h.select(round(1.2 * S), np.eye(4), (0.1,), 0.25)
    assert missing == [True]
    h = stamp_history([i * 0.5 for i in range(5)])  # 0 .. 2 s
    h.push(round(0.6 * S), np.eye(4), torch.full((1, 2, 2), 0.6, dtype=torch.float64))  # a bag loop back to 0.6 s
    assert h.stamps_ns == [0, S // 2, round(0.6 * S)]
    h.push(round(0.6 * S), np.eye(4), torch.full((1, 2, 2), 0.61, dtype=torch.float64))  # the same stamp again
    assert h.stamps_ns == [0, S // 2, round(0.6 * S)] and h.frames[-1].bev[0, 0, 0].item() == 0.61


def test_clear_and_bounded_size():
    h = stamp_history([0.0, 0.5, 1.0])
    h.clear()
    assert len(h) == 0
    prev_bev, prev2curr, missing = h.select(2 * S, np.eye(4), (0.5,), 0.25)
    assert missing == [True] and prev_bev.shape == (1, 1, 1, 2, 2) and torch.equal(prev2curr[0, 0], torch.eye(4))
    # 30 Hz for 12 s with the r50 offsets (1-4 s): at most 19 frames, none older than 4.25 s, and once 4.25 s have
    # passed every offset finds a frame within 0.25 s (the history thins evenly instead of dropping the oldest)
    cfg = load_model_config(R50)
    sized = BevHistory.for_config(cfg)
    h = BevHistory(sized.max_frames, sized.max_age_s, (1, 2, 2))
    offsets, tol = cfg.temporal.effective_offsets_s, cfg.temporal.max_offset_error_s
    for i in range(360):
        t = i / 30
        if t > 4.3:
            prev_bev, _, missing = h.select(round(t * S), np.eye(4), offsets, tol)
            assert not any(missing)
            assert all(abs(v - (t - o)) <= tol + 1e-6 for v, o in zip(picked(prev_bev), offsets))
        h.push(round(t * S), np.eye(4), torch.full((1, 2, 2), t, dtype=torch.float64))
        assert len(h) <= 19 and h.stamps_ns[0] >= round(t * S) - round(4.25 * S)
    assert len(h) == 19
    # one frame only: the newest
    h1 = stamp_history([0.0, 0.1, 0.2], max_frames=1)
    assert h1.stamps_ns == [round(0.2 * S)]


def test_push_keeps_a_compact_feature_and_checks_shapes():
    out = torch.randn(1, 6, 4, 4)  # e.g. bev_input with C = 2 and two previous frames
    h = BevHistory(4, 2.0)
    h.push(0, np.eye(4), out[:, :2])
    kept = h.frames[0].bev
    assert kept.shape == (2, 4, 4) and torch.equal(kept, out[0, :2])
    assert kept.untyped_storage().nbytes() == kept.numel() * kept.element_size()  # not the whole bev_input
    with pytest.raises(ValueError, match="does not match"):
        h.push(1, np.eye(4), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="finite"):
        h.push(2, np.eye(3), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="shape is unknown"):
        BevHistory(4, 2.0).select(0, np.eye(4), (0.5,), 0.25)


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("bda_kind", ["identity", "augmented"])
def test_training_path_equals_the_node_path(bda_kind):
    """Training (previous images lifted in their own ego frame without gradients + prev2curr) and the node (each
    previous frame's own bev_input[:, :C] from its own forward, kept in a BevHistory, selected + prev2curr) give
    the same head outputs; with a BEV augmentation both paths use the same bda."""
    cfg = small_temporal_cfg(2)
    torch.manual_seed(0)
    model = StudentDetector.from_config(cfg).eval()
    C = cfg.depth_net.context_channels
    images, K, rig, ida, bda = example_inputs(cfg, num_cameras=2)[:5]
    if bda_kind == "augmented":
        bda = torch.tensor(g.bev_aug_matrix(0.4, 1.05, True), dtype=torch.float32)[None]
    gen = torch.Generator().manual_seed(1)
    frames = [torch.randn(images.shape, generator=gen) for _ in range(3)]  # t = 0, 0.5, 1.0 s; the last is current
    poses = [pose(50 + 4 * i, 20 + 1.0 * i, 0.2 + 0.15 * i) for i in range(3)]
    p2c = torch.tensor(np.stack([g.invert_transform(poses[2]) @ poses[1], g.invert_transform(poses[2]) @ poses[0]]),
                       dtype=torch.float32)[None]  # most recent first
    history = BevHistory.for_config(cfg)
    with torch.no_grad():
        for i in range(2):  # the node: each frame's own forward (its own previous frames do not change bev[:, :C])
            sel = history.select(i * S // 2, poses[i], cfg.temporal.effective_offsets_s, 0.25)
            own = model(frames[i], K, rig, ida, bda, prev2curr=sel.prev2curr, prev_bev=sel.prev_bev).bev_input[:, :C]
            history.push(i * S // 2, poses[i], own)
        prev_bev, prev2curr, missing = history.select(S, poses[2], cfg.temporal.effective_offsets_s, 0.25)
        assert missing == [False, False]
        torch.testing.assert_close(prev2curr, p2c, atol=1e-5, rtol=0)
        node = model(frames[2], K, rig, ida, bda, prev2curr=prev2curr, prev_bev=prev_bev)
        train = model(frames[2], K, rig, ida, bda, prev2curr=p2c,
                      prev_images=torch.stack([frames[1], frames[0]], dim=1),
                      prev_cam2ego=torch.stack([rig, rig], dim=1))  # each camera in its own frame's ego
    torch.testing.assert_close(node.bev_input, train.bev_input, atol=1e-5, rtol=1e-5)
    for a, b in zip(node.head_outputs, train.head_outputs):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    # the ego motion matters: the identity (the old convention) gives another input
    assert (node.bev_input[:, C:] - model(frames[2], K, rig, ida, bda, prev2curr=torch.eye(4).expand(1, 2, 4, 4),
                                          prev_bev=prev_bev).bev_input[:, C:]).abs().max() > 1e-2


def test_start_of_scene_missing_slots_equal_training_clamped_frames():
    """No history: the node's two-pass fill (the current frame's own BEV, identity) equals training's first sample
    of a scene (the previous frames clamped to the current one: its images, its cam2ego, identity prev2curr)."""
    cfg = small_temporal_cfg(2)
    torch.manual_seed(0)
    model = StudentDetector.from_config(cfg).eval()
    C = cfg.depth_net.context_channels
    images, K, rig, ida, bda = example_inputs(cfg, num_cameras=2)[:5]
    images = torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    history = BevHistory.for_config(cfg)
    with torch.no_grad():
        prev_bev, prev2curr, missing = history.select(0, pose(1, 2, 0.3), cfg.temporal.effective_offsets_s, 0.25)
        assert missing == [True, True]
        first = model(images, K, rig, ida, bda, prev2curr=prev2curr, prev_bev=prev_bev)
        node = model(images, K, rig, ida, bda, prev2curr=prev2curr,
                     prev_bev=fill_missing(prev_bev, missing, first.bev_input[:, :C]))
        train = model(images, K, rig, ida, bda, prev2curr=torch.eye(4).expand(1, 2, 4, 4),
                      prev_images=images[:, None].expand(1, 2, *images.shape[1:]),
                      prev_cam2ego=rig[:, None].expand(1, 2, *rig.shape[1:]))
    torch.testing.assert_close(first.bev_input[:, :C], node.bev_input[:, :C])
    for a, b in zip(node.head_outputs, train.head_outputs):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
