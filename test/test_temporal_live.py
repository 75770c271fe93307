"""A temporal (two-frame) student runs in the node exactly as the trainer evaluates it.

The student (small CPU config with ``temporal.num_prev_frames: 1`` at 0.5 s, random weights, low threshold) is
evaluated three ways on every key frame of the tiny synthetic world (two scenes of four key frames at 2 Hz):

* the trainer's path: the data pipeline with ``prev_key_offsets: [-1]`` (the previous key frame lifted in its own
  ego frame, warped with ``prev2curr``; the first frame of a scene is its own previous frame);
* offline bag replay (:func:`labeldistill_ros.bag.replay.run_offline`: the node's pipeline in one process, its
  BEV history fed set by set);
* the live ``detector_node`` on the bag played in lock-step through real rclpy (``labeldistill-bag-eval live``).

All three give the same boxes, so what the node runs on a vehicle is what the trainer scored.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch


pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("one_torch_thread")]
THRESHOLD = 0.05


@pytest.fixture(scope="module")
def bag(make_bag):
    return make_bag("all_keyframes", max_samples=4)


@pytest.fixture(scope="module")
def temporal_checkpoint(tmp_path_factory):
    from labeldistill_ros.model.checkpoint import save_checkpoint
    from labeldistill_ros.model.config import TemporalConfig, load_model_config
    from labeldistill_ros.model.student import StudentDetector
    from labeldistill_ros.resources import share_file

    cfg = load_model_config(share_file("config", "model", "r18_128x352_cpu.yaml"))
    cfg = dataclasses.replace(cfg, name="r18_two_frame", temporal=TemporalConfig(1, (0.5,)))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "two_frame.pt"
    save_checkpoint(path, StudentDetector.from_config(cfg).eval())
    return path


def trainer_path(root, version, checkpoint) -> dict[int, tuple[np.ndarray, list[str], np.ndarray]]:
    """Key-frame LiDAR stamp (ns) -> (boxes (N, 9) in the key ego frame, names, scores) by the trainer's path."""
    from labeldistill_ros.model.checkpoint import load_checkpoint
    from labeldistill_training.data.collate import collate_batch
    from labeldistill_training.data.config import preset
    from labeldistill_training.data.dataset import NuScenesDataset
    from labeldistill_training.batch import student_inputs

    model = load_checkpoint(checkpoint)
    dc = preset("small_128x352", str(root), version=version, load_points=False, prev_key_offsets=(-1,))
    dc = dc.replace(depth=dataclasses.replace(dc.depth, enabled=False))
    assert model.cfg.image == dc.image_transform_config()
    ds = NuScenesDataset.from_config(dc, "synth_all", training=False)
    dec = dataclasses.replace(model.cfg.decode, score_threshold=THRESHOLD, max_detections=200)
    out = {}
    with torch.inference_mode():
        for i in range(len(ds)):
            batch = collate_batch([ds[i]])
            heads = model(**student_inputs(batch)).head_outputs
            from labeldistill_ros.model.decode import decode_detections

            d = decode_detections(heads, model.cfg.head.task_groups, model.cfg.class_names, model.cfg.bev_grid,
                                  dec)[0]
            out[ds.infos[i]["timestamp"] * 1000] = (d.boxes.double().numpy(),
                                                    [model.cfg.class_names[k] for k in d.labels.tolist()],
                                                    d.scores.double().numpy())
    return out


def assert_same(frame, boxes, names, scores, what: str) -> None:
    assert frame.names == names, what
    np.testing.assert_allclose(frame.scores, scores, atol=1e-4, err_msg=what)
    np.testing.assert_allclose(frame.boxes[:, :6], boxes[:, :6], atol=1e-3, err_msg=what)
    dyaw = np.angle(np.exp(1j * (frame.boxes[:, 6] - boxes[:, 6])))
    np.testing.assert_allclose(dyaw, 0.0, atol=1e-3, err_msg=what)


def test_temporal_student_gives_the_trainers_boxes_offline_and_live(bag, temporal_checkpoint, nusc_dataset,
                                                                    tmp_path):
    from labeldistill_ros.bag.replay import run_offline
    from labeldistill_training.tools.bag_eval import run_live, score

    expected = trainer_path(nusc_dataset[0], nusc_dataset[1], temporal_checkpoint)
    assert len(expected) == 8 and all(len(v[0]) > 0 for v in expected.values())
    offline = run_offline(bag, str(temporal_checkpoint), device="cpu", score_threshold=THRESHOLD, progress=False)
    assert sorted(f.stamp_ns for f in offline.frames) == sorted(expected)  # cameras fire with the LiDAR here
    for f in offline.frames:
        assert_same(f, *expected[f.stamp_ns], what=f"offline replay at {f.stamp_ns}")
    assert offline.info["uncompensated_sets"] == 0

    log = tmp_path / "node.log"
    live = run_live(bag, str(temporal_checkpoint), device="cpu", score_threshold=THRESHOLD, lockstep=True,
                    log_path=log)
    assert len(live.frames) == 8, log.read_text()[-3000:]
    for f in live.frames:
        assert_same(f, *expected[f.stamp_ns], what=f"live node at {f.stamp_ns}")
    text = log.read_text()
    assert "1 previous frame(s) at [0.5] s" in text  # the node runs the temporal model (start-up line)
    rep = score(bag, live, str(nusc_dataset[0]), nusc_dataset[1], tmp_path / "live", bev=0)
    assert rep["drop_rate"] == 0.0 and rep["matched_key_frames"] == 8


def test_a_second_pass_over_the_same_scene_needs_no_recomputation(temporal_checkpoint, nusc_dataset):
    """The history keeps each set's BEV once; replaying a set (stamps going back) drops the later history, so the
    first set of a scene again falls back to itself and gives the same boxes as the first time."""
    from labeldistill_ros.inference import Detector
    from labeldistill_training.data.config import preset
    from labeldistill_training.data.dataset import NuScenesDataset

    dc = preset("small_128x352", str(nusc_dataset[0]), version=nusc_dataset[1], load_points=False)
    ds = NuScenesDataset.from_config(dc, "synth_all", training=False)
    det = Detector(temporal_checkpoint, device="cpu", score_threshold=THRESHOLD)
    infos = ds.infos[:2]
    calls = []
    lift = det.model.lift

    def counting_lift(*a, **k):
        calls.append(1)
        return lift(*a, **k)

    det.model.lift = counting_lift
    outs = []
    for info in infos + infos[:1]:
        imgs = [ds.load_image(info["cams"][c]["path"]) for c in dc.cameras]
        Ks = [info["cams"][c]["K"] for c in dc.cameras]
        c2e = [info["cams"][c]["cam2ego"] for c in dc.cameras]
        outs.append(det.detect(imgs, Ks, c2e, stamp_ns=info["timestamp"] * 1000, ego_pose=info["ego2global"]))
    assert len(calls) == 3  # one lift per set, none for the previous frames
    assert [o.missing_prev for o in outs] == [1, 0, 1]
    np.testing.assert_allclose(outs[2].boxes, outs[0].boxes, atol=1e-5)
    assert len(det.history) == 1
