"""The detector node as its own process (real rclpy, loopback DDS), fed from this process like a camera driver
or `ros2 bag play` would (reliable publishers; the node subscribes best effort): the real nuScenes key frame and a
synthetic sample in, Detection3DArray / markers / LabelInfo / diagnostics / timing topics out; the node's boxes
equal the offline Detector's on the same inputs; new CameraInfo and /tf_static are picked up (pooling indices
rebuilt)."""
from __future__ import annotations

import numpy as np
import pytest

from labeldistill_ros.geometry import pose_to_box
from labeldistill_ros.inference import Detector
from node_support import NodeHarness, diag_values, make_checkpoint, real_sample, synthetic_sample, tf_roundtrip
from labeldistill_ros.ros_convert import stamp_to_ns


# One node process per module (`make test` runs `--dist loadfile`: a module stays on one worker); every test still
# sets up the calibration it needs, so that a test runs alone too.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(240)]
THRESHOLD = 0.05  # random weights score ~0.1: a low threshold gives boxes to compare


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "student.pt", seed=1)


@pytest.fixture(scope="module")
def node(tmp_path_factory, ckpt):
    h = NodeHarness(tmp_path_factory.mktemp("node"), ckpt, {"score_threshold": THRESHOLD, "max_detections": 60})
    try:
        h.wait_log("ready:", 120)
        h.wait_connected()
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def offline(ckpt):
    return Detector(ckpt, device="cpu", score_threshold=THRESHOLD, max_detections=60)


@pytest.fixture(scope="module")
def real(real_sample_dir):
    return real_sample(real_sample_dir)


def boxes_of(arr) -> tuple[np.ndarray, np.ndarray, list[str]]:
    boxes, scores, names = [], [], []
    for d in arr.detections:
        c, s = d.bbox.center, d.bbox.size
        boxes.append(pose_to_box([c.position.x, c.position.y, c.position.z],
                                 [c.orientation.x, c.orientation.y, c.orientation.z, c.orientation.w],
                                 [s.x, s.y, s.z]))
        scores.append(d.results[0].hypothesis.score)
        names.append(d.results[0].hypothesis.class_id)
    return np.array(boxes).reshape(-1, 9), np.array(scores), names


def assert_parity(arr, expected) -> None:
    boxes, scores, names = boxes_of(arr)
    assert len(boxes) == len(expected) > 0
    assert names == expected.names
    np.testing.assert_allclose(scores, expected.scores, atol=1e-6)
    np.testing.assert_allclose(boxes[:, :6], expected.boxes[:, :6], atol=1e-5)
    np.testing.assert_allclose(np.cos(boxes[:, 6] - expected.boxes[:, 6]), 1.0, atol=1e-6)


def test_label_info_is_latched(node):
    li = node.spin_until(lambda: node.labels, 20, "LabelInfo")[0]
    assert [c.class_name for c in li.class_map][:2] == ["car", "truck"] and len(li.class_map) == 10
    assert li.threshold == pytest.approx(THRESHOLD)


def test_real_keyframe_gives_detections_with_the_set_stamp_and_parity(node, offline, real):
    """1600x900 images, real calibration, cameras stamped 7-49 ms apart; boxes equal the offline pipeline's."""
    node.use_calibration(real)
    arr = node.request(real, 120)
    assert arr.header.frame_id == "base_link"
    stamp = stamp_to_ns(arr.header.stamp)
    sent = node.last_sample
    assert stamp == max(sent.stamps_ns) == sent.reference_stamp_ns  # the latest camera: never now()
    assert all(d.header == arr.header for d in arr.detections)
    assert all(len(d.results) == 1 and d.results[0].pose.pose == d.bbox.center for d in arr.detections)
    assert_parity(arr, offline.detect(real.images, real.Ks, tf_roundtrip(real)))
    markers = node.spin_until(lambda: [m for m in node.markers if m.markers[0].header.stamp == arr.header.stamp],
                              20, "markers")[0]
    assert markers.markers[0].action == 3  # DELETEALL
    assert len(markers.markers) == 1 + 2 * len(arr.detections)


def test_a_second_set_and_the_debug_topics(node, real):
    node.use_calibration(real)
    node.request(real.shifted(1_000_000_000), 120)
    later = real.shifted(2_000_000_000)
    node.request(later, 120)
    node.spin_until(lambda: all(len(node.timings.get(k, [])) >= 2 for k in
                                ("preprocess", "inference", "postprocess", "total", "latency")), 20, "timings")
    t = {k: v[-1] for k, v in node.timings.items()}
    assert t["total"] >= t["inference"] > 0 and t["preprocess"] > 0 and t["postprocess"] >= 0
    assert t["latency"] > 0  # node clock now - set stamp (the 2018 stamps make it large here)


def test_diagnostics_report_rate_counters_and_model(node, real):
    node.use_calibration(real)
    n0 = len(node.diags)
    node.request(real.shifted(3_000_000_000), 120)
    st = node.diag_since(n0, lambda d: int(diag_values(d)["published"]) >= 1)
    v = diag_values(st)
    assert st.level == b"\x00", st.message
    assert "r18_128x352_cpu on cpu fp32" in v["model"] and v["tf_backend"] == "fallback"
    for key in ("rate_hz", "complete_sets", "incomplete_sets", "late_images", "superseded", "tf_failures",
                "input_errors", "nonfinite", "resets", "last_total_ms"):
        assert key in v
    assert int(v["complete_sets"]) >= 1 and int(v["tf_failures"]) == 0
    # every set's decode + publish held the image takes back once (reception_gate.py), and the gate let go
    assert int(v["published"]) <= int(v["reception_holds"]) <= int(v["published"]) + int(v["failures"]), v


def test_synthetic_sample_after_new_calibration(node, offline, tmp_path_factory):
    """A different rig (400x225, other K and extrinsics): CameraInfo and /tf_static change, the pooling index is
    rebuilt, and the boxes again equal the offline pipeline's."""
    syn = synthetic_sample(tmp_path_factory.mktemp("synth"))
    node.spin(0.3)
    n0 = len(node.diags)
    before = int(diag_values(node.diags[-1])["calibration_changes"]) if node.diags else 0
    node.use_calibration(syn)
    arr = node.request(syn.shifted(2_000_000_000), 120)
    stamp = stamp_to_ns(arr.header.stamp)
    assert stamp == node.last_sample.reference_stamp_ns and arr.header.frame_id == "base_link"
    assert_parity(arr, offline.detect(syn.images, syn.Ks, tf_roundtrip(syn)))
    st = node.diag_since(n0, lambda d: int(diag_values(d)["calibration_changes"]) > before)
    assert int(diag_values(st)["calibration_errors"]) == 0
