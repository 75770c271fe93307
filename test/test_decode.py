"""Decoding the head's outputs into boxes: the box coder's round trip, score and range filters, circle NMS against
a greedy reference, the batched top-k decode against a per-task reference, non-finite candidates."""
import dataclasses

import numpy as np
import pytest
import torch

from labeldistill_ros import geometry as g
from labeldistill_ros.model.box_coder import BoxCoder
from labeldistill_ros.model.decode import circle_nms, decode_detections
from labeldistill_ros.model.export import example_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_head_outputs(boxes, labels, cfg, logit=6.0):
    """Head outputs that contain exactly ``boxes`` (N, 9) with class ``labels`` as heatmap peaks."""
    cells, code = BoxCoder(cfg.bev_grid).encode(torch.tensor(boxes, dtype=torch.float32))
    H, W = cfg.bev_grid.ny, cfg.bev_grid.nx
    outs = []
    for group in cfg.head.task_groups:
        t = {"heatmap": torch.full((1, len(group), H, W), -8.0)}
        for name, n in (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2)):
            t[name] = torch.zeros(1, n, H, W)
        outs.append(t)
    for (ix, iy), c, lab in zip(cells.tolist(), code, labels):
        name = cfg.class_names[lab]
        ti = next(i for i, grp in enumerate(cfg.head.task_groups) if name in grp)
        t = outs[ti]
        t["heatmap"][0, cfg.head.task_groups[ti].index(name), iy, ix] = logit
        for name_, sl in (("reg", slice(0, 2)), ("height", slice(2, 3)), ("dim", slice(3, 6)), ("rot", slice(6, 8)),
                          ("vel", slice(8, 10))):
            t[name_][0, :, iy, ix] = c[sl]
    return outs


def test_box_encode_decode_round_trip(small_cfg):
    rng = np.random.default_rng(0)
    n = 12
    boxes = np.zeros((n, 9))
    # one box per distinct cell of a 1.6 m grid, away from each other (no NMS interaction)
    boxes[:, 0] = np.linspace(-45, 45, n) + rng.uniform(-0.5, 0.5, n)
    boxes[:, 1] = rng.uniform(-45, 45, n)
    boxes[:, 2] = rng.uniform(-2, 2, n)
    boxes[:, 3:6] = rng.uniform(0.3, 12, (n, 3))
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, n)
    boxes[:, 7:9] = rng.normal(0, 5, (n, 2))
    labels = list(range(10)) + [0, 8]
    outs = fake_head_outputs(boxes, labels, small_cfg)
    det = decode_detections(outs, small_cfg.head.task_groups, small_cfg.class_names, small_cfg.bev_grid,
                            small_cfg.decode)[0]
    assert len(det.boxes) == n
    order = torch.argsort(det.boxes[:, 0])
    got = det.boxes[order].numpy()
    np.testing.assert_allclose(got[:, [0, 1, 2, 3, 4, 5, 7, 8]], boxes[:, [0, 1, 2, 3, 4, 5, 7, 8]], atol=1e-4, rtol=1e-5)
    assert np.abs(g.wrap_angle(got[:, 6] - boxes[:, 6])).max() < 1e-5
    assert det.labels[order].tolist() == labels
    torch.testing.assert_close(det.scores, torch.full((n,), float(torch.sigmoid(torch.tensor(6.0)))))


def test_decode_filters_by_score_and_range(small_cfg):
    boxes = np.array([[10.0, 5, 0, 4, 2, 1.5, 0, 0, 0], [-20.0, 3, 0, 4, 2, 1.5, 0, 0, 0], [0, 0, 15.0, 1, 1, 1, 0, 0, 0]])
    outs = fake_head_outputs(boxes, [0, 0, 0], small_cfg)
    outs[0]["heatmap"][0, 0, 33, 19] = -3.0  # second box: sigmoid(-3) = 0.047 < 0.1 threshold
    det = decode_detections(outs, small_cfg.head.task_groups, small_cfg.class_names, small_cfg.bev_grid,
                            small_cfg.decode)[0]
    # box 2 has z = 15 m, outside post_center_range
    assert det.boxes.shape[0] == 1 and abs(det.boxes[0, 0].item() - 10.0) < 1e-4


def greedy_reference(xy, scores, labels, radius):
    order = np.argsort(-scores, kind="stable")
    keep = []
    for i in order:
        if all(labels[j] != labels[i] or np.linalg.norm(xy[i] - xy[j]) >= radius[labels[i]] for j in keep):
            keep.append(i)
    return keep


def random_nms_case(rng, n, half_width):
    """``n`` boxes uniform in a square of ``half_width`` m, random scores, labels 0-2 with radii 2, 1 and 0 m."""
    return (rng.uniform(-half_width, half_width, (n, 2)), rng.uniform(0, 1, n), rng.integers(0, 3, n),
            np.array([2.0, 1.0, 0.0]))


def test_circle_nms():
    xy = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.9, 0.0], [10.0, 0.0], [0.5, 0.0], [2.8, 0.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95, 0.5])
    labels = torch.tensor([0, 0, 0, 0, 8, 0])
    radius = torch.tensor([1.5] + [0.0] * 7 + [0.4, 0.0])
    keep = circle_nms(xy, scores, labels, radius).tolist()
    # pedestrian (label 8) never suppresses cars; car 1 is within 1.5 m of car 0; car 2 is 1.9 m from car 0 and
    # only near the suppressed car 1, so it survives (greedy, not transitive); car 5 is 0.9 m from car 2
    assert keep == [4, 0, 2, 3]
    rng = np.random.default_rng(0)
    for _ in range(5):
        xy, sc, lab, rad = random_nms_case(rng, 300, 20.0)
        ref = greedy_reference(xy, sc, lab, rad)
        got = circle_nms(torch.tensor(xy), torch.tensor(sc), torch.tensor(lab), torch.tensor(rad)).tolist()
        assert got == ref




def reference_decode(head_outputs, cfg, dec):
    """The per-task decoding the batched one replaced (torch, one task at a time): top-k of the task's sigmoid
    heatmap, gather, threshold, post-centre range, greedy per-class circle NMS (:func:`greedy_reference`), then the
    ``max_detections`` best. Returns (boxes, scores, labels) sorted by descending score."""
    from labeldistill_ros.model.head import REG_BRANCHES

    kept = []
    for task, group in zip(head_outputs, cfg.head.task_groups):
        heat = torch.sigmoid(task["heatmap"].float())[0]
        n_cls, H, W = heat.shape
        scores, idx = heat.reshape(-1).topk(min(dec.max_candidates_per_task, n_cls * H * W))
        pix = idx % (H * W)
        code = torch.cat([task[name].float()[0].reshape(c, H * W) for name, c in REG_BRANCHES])[:, pix].T
        boxes = BoxCoder(cfg.bev_grid).decode(code, pix % W, pix // W).double().numpy()
        labels = np.array([cfg.class_names.index(group[i]) for i in (idx // (H * W)).tolist()])
        scores = scores.double().numpy()
        lo, hi = np.array(dec.post_center_range[:3]), np.array(dec.post_center_range[3:])
        m = (scores > dec.score_threshold) & (boxes[:, :3] >= lo).all(1) & (boxes[:, :3] <= hi).all(1)
        boxes, scores, labels = boxes[m], scores[m], labels[m]
        keep = greedy_reference(boxes[:, :2], scores, labels, np.array(dec.nms_radius))
        kept += [(scores[i], labels[i], boxes[i]) for i in keep]
    kept.sort(key=lambda t: -t[0])
    kept = kept[: dec.max_detections]
    return (np.array([k[2] for k in kept]).reshape(-1, 9), np.array([k[0] for k in kept]),
            np.array([k[1] for k in kept], dtype=np.int64))


@pytest.mark.parametrize("threshold,max_det", [(0.05, 50), (0.05, 500), (0.1, 200), (0.0, 1000)])
def test_batched_decode_gives_the_per_task_boxes(small_cfg, small_model, threshold, max_det):
    """One top-k over all tasks, one transfer, numpy NMS stopping at max_detections: the boxes, scores and labels
    of the per-task decoding, on a random-weight student's real head outputs (crowded: every cell above 0.05)."""
    torch.manual_seed(1)
    inputs = list(example_inputs(small_cfg, 6))
    inputs[0] = torch.randn_like(inputs[0])
    with torch.inference_mode():
        heads = small_model(*inputs).head_outputs
    dec = dataclasses.replace(small_cfg.decode, score_threshold=threshold, max_detections=max_det)
    got = decode_detections(heads, small_cfg.head.task_groups, small_cfg.class_names, small_cfg.bev_grid, dec)[0]
    boxes, scores, labels = reference_decode(heads, small_cfg, dec)
    assert len(got.boxes) == len(boxes)
    np.testing.assert_allclose(got.scores.numpy(), scores, rtol=1e-6)
    # equal scores may come in either order; compare as sets keyed by (score, label, x)
    key = lambda s, lab, b: sorted(zip(np.round(np.float32(s), 5).tolist(), np.asarray(lab).tolist(),  # noqa: E731
                                       np.round(np.float32(b[:, 0]), 3).tolist()))
    assert key(got.scores.numpy(), got.labels.numpy(), got.boxes.numpy()) == key(scores, labels, boxes)
    order_got = np.lexsort((got.boxes[:, 0].numpy(), -got.scores.numpy()))
    order_ref = np.lexsort((boxes[:, 0], -scores))
    np.testing.assert_allclose(got.boxes.numpy()[order_got], boxes[order_ref], atol=1e-4)


def test_nonfinite_candidates_are_dropped_and_counted(small_cfg):
    """Non-finite values are looked at on the gathered candidates only: a NaN peak logit or a NaN/inf code value
    drops that candidate (counted); finite candidates decode as before."""
    from labeldistill_ros.model.decode import gather_candidates, select_detections

    boxes = np.array([[10.0, 5, 0, 4, 2, 1.5, 0, 0, 0], [-20.0, 3, 0, 4, 2, 1.5, 0, 0, 0],
                      [0.0, -30, 0, 0.8, 0.8, 1.7, 0, 0, 0]])
    outs = fake_head_outputs(boxes, [0, 0, 8], small_cfg)
    cell = ((boxes[:, :2] - [small_cfg.bev_grid.x[0], small_cfg.bev_grid.y[0]]) /
            [small_cfg.bev_grid.x[2], small_cfg.bev_grid.y[2]]).astype(int)
    outs[0]["dim"][0, 1, cell[1, 1], cell[1, 0]] = float("nan")  # the second car's width
    ped = next(i for i, grp in enumerate(small_cfg.head.task_groups) if "pedestrian" in grp)
    outs[ped]["heatmap"][0, 0, 3, 3] = float("nan")  # a NaN peak elsewhere in the pedestrian task
    cand = gather_candidates(outs, small_cfg.head.task_groups, small_cfg.class_names, small_cfg.bev_grid, 50)
    d = select_detections(cand[0].numpy(), small_cfg.decode)
    assert d.nonfinite == 2
    assert len(d.boxes) == 2 and np.isfinite(d.boxes).all()
    np.testing.assert_allclose(sorted(d.boxes[:, 0]), [0.0, 10.0], atol=1e-4)


def test_circle_nms_stops_at_max_keep_with_the_greedy_prefix():
    from labeldistill_ros.model.decode import circle_nms_np

    n = 700
    xy, sc, lab, rad = random_nms_case(np.random.default_rng(3), n, 15.0)
    full = greedy_reference(xy, sc, lab, rad)
    for k in (1, 17, 128, 129, 300, len(full), n):
        assert circle_nms_np(xy, sc, lab, rad, max_keep=k, chunk=64).tolist() == full[:k]
