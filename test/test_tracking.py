"""Velocity from tracking (labeldistill_ros.tracking, decode.velocity: tracked): the Kalman tracker on simulated
detections with noise, its frames (a moving, turning ego vehicle), its resets, the Detector and the trainer's
evaluation through nuscenes-devkit on the synthetic world."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labeldistill_ros import geometry as geo
from labeldistill_ros.tracking import TrackerConfig, VelocityTracker, apply_tracked_velocity

CLASSES = geo.CLASS_NAMES
CAR, PED, BARRIER = CLASSES.index("car"), CLASSES.index("pedestrian"), CLASSES.index("barrier")
S = 1_000_000_000  # ns per second


def drive(tracker, objects, labels, sets: int, dt: float, noise: float, seed: int = 0):
    """``objects``: (M, 4) x, y, vx, vy in the fixed frame; each set detects them all with Gaussian centre noise.
    Returns the velocities and ``known`` flags of every set."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(sets):
        t = k * dt
        xy = objects[:, :2] + t * objects[:, 2:] + rng.normal(0, noise, (len(objects), 2))
        out.append(tracker.update(int(t * S) + S, xy, labels, np.ones(len(objects))))
    return out


def test_moving_cars_get_their_velocity_and_static_objects_stay_still():
    objects = np.array([[10.0, 0.0, 12.0, 0.0],   # a fast car (6 m in one 0.5 s set: its first association)
                        [0.0, 20.0, -5.0, 3.0],   # a car driving diagonally
                        [5.0, -5.0, 0.0, 0.0],    # a parked car
                        [-8.0, 3.0, 0.0, 0.0],    # a barrier
                        [-3.0, -9.0, 1.2, 0.0]])  # a walking pedestrian
    labels = np.array([CAR, CAR, CAR, BARRIER, PED])
    out = drive(VelocityTracker(CLASSES), objects, labels, sets=8, dt=0.5, noise=0.3)
    vel0, known0 = out[0]
    assert not known0.any() and np.all(vel0 == 0)  # a new track has no velocity of its own
    vel, known = out[-1]
    assert known.all()
    err = np.linalg.norm(vel - objects[:, 2:], axis=1)
    assert np.all(err[:2] < 1.0), err  # moving cars: within 1 m/s of 12 and 5.8 m/s
    assert err[2] < 0.6 and err[3] < 0.2 and err[4] < 0.6, err  # parked car, barrier (tight prior), pedestrian
    zero = np.linalg.norm(objects[:, 2:], axis=1)
    assert err.sum() < 0.2 * zero.sum()


def test_classes_are_not_mixed_and_lost_tracks_expire():
    tr = VelocityTracker(CLASSES, TrackerConfig(max_gap_s=1.0))
    tr.update(1 * S, np.array([[0.0, 0.0]]), np.array([CAR]))
    vel, known = tr.update(S + S // 2, np.array([[0.5, 0.0]]), np.array([PED]))  # near, but another class
    assert not known.any() and len(tr) == 2
    tr.update(4 * S, np.zeros((0, 2)), np.zeros(0, dtype=int))  # 2.5 s later: both tracks gone
    assert len(tr) == 0


def test_time_going_back_resets_the_tracks():
    tr = VelocityTracker(CLASSES)
    tr.update(10 * S, np.array([[0.0, 0.0]]), np.array([CAR]))
    tr.update(10 * S + S // 2, np.array([[5.0, 0.0]]), np.array([CAR]))
    vel, known = tr.update(9 * S, np.array([[5.5, 0.0]]), np.array([CAR]))  # a bag loop
    assert not known.any() and len(tr) == 1


def test_apply_tracked_velocity_works_in_the_fixed_frame_and_answers_in_the_target_frame():
    """The ego drives at 10 m/s while turning; a parked car must come out still (not -10 m/s: the velocity is the
    object's own), a car crossing at 8 m/s along the fixed y axis must come out as that vector in base_link."""
    tr = VelocityTracker(CLASSES)
    parked, crossing = np.array([30.0, 5.0]), np.array([40.0, -20.0])
    for k in range(8):
        t = 0.5 * k
        yaw = 0.2 * t
        T = geo.make_transform(geo.quat_to_matrix(geo.yaw_to_quat(yaw)), [10.0 * t, 0.0, 0.0])  # base_link -> map
        inv = np.linalg.inv(T)
        fixed = np.array([parked, crossing + [0.0, 8.0 * t]])
        target = (inv[:2, :2] @ fixed.T).T + inv[:2, 3]
        boxes = np.zeros((2, 9))
        boxes[:, :2], boxes[:, 3:6] = target, [4.5, 1.9, 1.6]
        boxes[:, 7:9] = [0.1, 0.1]  # the model's (single-frame) guess
        out = apply_tracked_velocity(tr, boxes, np.array([CAR, CAR]), np.array([0.9, 0.8]), int(t * S) + S, T)
        assert out is not boxes and np.array_equal(out[:, :7], boxes[:, :7])
        if k == 0:
            np.testing.assert_array_equal(out[:, 7:9], boxes[:, 7:9])  # new tracks keep the model's velocity
    v_fixed = np.array([[0.0, 0.0], [0.0, 8.0]])
    expected = (T[:2, :2].T @ v_fixed.T).T
    np.testing.assert_allclose(out[:, 7:9], expected, atol=0.3)
    assert abs(np.linalg.norm(out[1, 7:9]) - 8.0) < 0.3
    # without an ego pose the boxes come back unchanged and the tracks are left alone
    n = len(tr)
    np.testing.assert_array_equal(apply_tracked_velocity(tr, boxes, np.array([CAR, CAR]), np.ones(2), 99 * S,
                                                         None), boxes)
    assert len(tr) == n


def test_detector_of_a_tracked_config_tracks_across_sets_and_resets_with_its_history(tmp_path):
    """decode.velocity: tracked in the checkpoint's config: the Detector (node, bag replay) replaces the boxes' vx, vy
    once a track has been seen twice, and forgets its tracks with the temporal history; the default (model) has no
    tracker."""
    from labeldistill_ros.inference import Detector
    from node_support import CPU_CONFIG, make_checkpoint, real_sample, tf_roundtrip

    cfg = tmp_path / "tracked.yaml"
    cfg.write_text(CPU_CONFIG.read_text().replace("velocity: model", "velocity: tracked"))
    plain = Detector(make_checkpoint(tmp_path / "m.pt"), device="cpu", score_threshold=0.05)  # same weights
    det = Detector(make_checkpoint(tmp_path / "t.pt", config=cfg), device="cpu", score_threshold=0.05)
    assert plain.tracker is None and det.cfg.decode.velocity == "tracked" and det.tracker is not None
    sample = real_sample(Path(__file__).resolve().parents[2] / "shared" / "real-nuscenes-sample")
    Ks, T = sample.Ks, tf_roundtrip(sample)
    poses = [np.eye(4), geo.make_transform(np.eye(3), [2.0, 0.0, 0.0])]  # 0.5 s later the ego is 2 m further on
    ref = VelocityTracker(det.class_names)
    for k, pose in enumerate(poses):
        stamp = S + k * S // 2
        got = det.detect(sample.images, Ks, T, stamp_ns=stamp, ego_pose=pose)
        m = plain.detect(sample.images, Ks, T, stamp_ns=stamp, ego_pose=pose)
        want = apply_tracked_velocity(ref, m.boxes, m.labels, m.scores, stamp, pose)
        np.testing.assert_allclose(got.boxes, want, rtol=0, atol=1e-9)
    assert len(got) > 0 and np.any(np.abs(got.boxes[:, 7:9] - m.boxes[:, 7:9]) > 1.0)  # replaced, not the head's
    det.reset_history()
    assert len(det.tracker) == 0


def test_trainer_evaluation_scores_tracked_velocity(tiny_nusc, tiny_infos, tmp_path):
    """Ground-truth boxes with centre noise and zero velocity (a single-frame model's), scored by the devkit:
    tracked through each scene in time order they get most of their velocity error back."""
    from nuscenes.eval.common.config import config_factory

    from labeldistill_training.eval.evaluate import evaluate_results
    from labeldistill_training.eval.results import detections_to_results, infos_to_detections
    from labeldistill_training.stage_eval import track_velocities

    dets = infos_to_detections(tiny_infos["synth_val"], class_range=config_factory("detection_cvpr_2019").class_range,
                               with_attributes=False)
    rng = np.random.default_rng(0)
    plain = []
    for d in dets:
        boxes = np.array(d.boxes, dtype=np.float64)
        boxes[:, :2] += rng.normal(0, 0.2, (len(boxes), 2))
        boxes[:, 7:9] = 0.0
        plain.append({"sample_token": d.sample_token, "boxes": boxes, "scores": np.asarray(d.scores),
                      "labels": np.asarray(d.labels), "ego2global": d.ego2global})
    tracked = track_velocities(plain, tiny_nusc, CLASSES)
    assert [d["sample_token"] for d in tracked] == [d["sample_token"] for d in plain]
    assert all(np.array_equal(a["boxes"][:, :7], b["boxes"][:, :7]) for a, b in zip(tracked, plain))
    r_plain = evaluate_results(detections_to_results(plain), tiny_nusc, "synth_val", tmp_path / "plain")
    r_tracked = evaluate_results(detections_to_results(tracked), tiny_nusc, "synth_val", tmp_path / "tracked")
    assert r_tracked.mAP == pytest.approx(r_plain.mAP)
    assert r_plain.tp_errors["vel_err"] > 1.0
    assert r_tracked.tp_errors["vel_err"] < 0.6 * r_plain.tp_errors["vel_err"], (r_plain.tp_errors,
                                                                                   r_tracked.tp_errors)
