"""A second node configuration in its own process: compressed images (`<topic>/compressed`, JPEG),
missing_camera_policy skip_camera, and a checkpoint whose car head outputs NaN: non-finite outputs are dropped
and reported as a diagnostic ERROR, the rest is still published (and equals the offline Detector's), a camera that
stops is skipped after the timeout, and the node keeps answering."""
from __future__ import annotations

import numpy as np
import pytest

from labeldistill_ros.inference import Detector
from labeldistill_ros.node.ros_compat import compressed_to_rgb
from labeldistill_ros.ros_convert import NS_PER_S
from node_support import (CAMS, RESEND_SHIFT_NS, NodeHarness, compressed_msg, diag_values, make_checkpoint,
                          synthetic_sample, tf_roundtrip)
from test_node_ros import assert_parity, boxes_of


# One node per module (per xdist worker that runs tests of it: each test is self-contained).
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(240)]
S = NS_PER_S  # ns per second


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return synthetic_sample(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "nan_car.pt", seed=3, poison_task=0)


@pytest.fixture(scope="module")
def node(tmp_path_factory, ckpt, syn):
    h = NodeHarness(tmp_path_factory.mktemp("node"), ckpt,
                    {"score_threshold": 0.05, "image_transport": "compressed", "missing_camera_policy": "skip_camera",
                     "min_cameras": 3, "sync_timeout_s": 1.0}, name="pol")
    try:
        h.wait_log("ready:", 120)
        h.spin_until(lambda: all(p.get_subscription_count() > 0 for p in h.pub_cimg), 30, "compressed subs")
        assert all(p.get_subscription_count() == 0 for p in h.pub_img), "raw topics must not be subscribed"
        h.publish_calibration(syn)
        h.spin(0.3)
        yield h
    finally:
        h.close()


def test_compressed_images_nonfinite_outputs_dropped_with_error_and_parity(node, ckpt, syn):
    n0 = len(node.diags)
    arr = node.request(syn.shifted(S), compressed=True)
    sample = node.last_sample
    boxes, scores, names = boxes_of(arr)
    assert len(boxes) > 0 and np.isfinite(boxes).all() and np.isfinite(scores).all()
    assert "car" not in names  # the poisoned head's boxes are gone, the other heads still detect
    decoded = [compressed_to_rgb(compressed_msg(sample.images[i], sample.stamps_ns[i], CAMS[i])) for i in range(6)]
    offline = Detector(ckpt, device="cpu", score_threshold=0.05).detect(decoded, sample.Ks, tf_roundtrip(sample))
    assert offline.nonfinite > 0
    assert_parity(arr, offline)
    st = node.diag_since(n0, lambda d: d.level == b"\x02")
    assert "non-finite model outputs dropped" in st.message and int(diag_values(st)["nonfinite"]) > 0
    assert "non-finite model outputs" in node.output()


def test_a_camera_that_stops_is_skipped_after_the_timeout(node, syn):
    n0 = len(node.diags)
    arr = node.request(syn.shifted(2 * S), cams=[0, 1, 2, 3, 4], compressed=True)  # CAM_BACK_RIGHT is silent
    assert arr.header.frame_id == "base_link"
    st = node.diag_since(n0, lambda d: int(diag_values(d)["partial_sets"]) >= 1, 60)
    assert "without some cameras" in st.message
    assert "CAM_BACK_RIGHT" in diag_values(st)["missing_by_camera"]
    # the camera stays silent: later sets are still answered (and no longer wait a timeout for it)
    node.request(syn.shifted(3 * S), cams=[0, 1, 2, 3, 4], compressed=True)
    # it comes back: whole sets again
    # (diagnostics are periodic: compare against the last status seen before the whole sets, and accept any
    # status after it, including one that arrived while the requests were answered)
    n1 = len(node.diags)
    before = int(diag_values(node.diags[-1])["complete_sets"])
    node.request(syn.shifted(4 * S), compressed=True)
    node.request(syn.shifted(5 * S), compressed=True)
    node.diag_since(n1, lambda d: int(diag_values(d)["complete_sets"]) > before, 60)
    assert node.proc.poll() is None


def test_a_corrupt_jpeg_is_rejected_and_the_node_goes_on(node, syn):
    sent = []

    def send(attempt):
        bad = syn.shifted(6 * S + attempt * RESEND_SHIFT_NS)
        sent.append(bad)
        broken = compressed_msg(bad.images[1], bad.stamps_ns[1], CAMS[1])
        broken.data = broken.data[:200]
        node.publish_set(bad, compressed=True, messages={1: broken})
    n0 = len(node.diags)
    st = node.until(lambda: next((d for d in node.diags[n0:] if int(diag_values(d)["input_errors"]) >= 1), None),
                    60, "input_errors", send)
    assert "bad input" in st.message
    assert "CAM_FRONT image: cannot decode compressed image (format 'jpeg', 200 bytes)" in node.output()
    node.request(syn.shifted(8 * S), compressed=True)
    assert all(node.detection_at(b.reference_stamp_ns) is None for b in sent)
