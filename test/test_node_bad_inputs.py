"""Bad input never takes the node down and never poisons its output (node in its own process, real rclpy).

Each case sends something broken, checks the node's reaction (no output for that set, a counter, a diagnostic
WARN, a log line), then checks that the node still answers a good set."""
from __future__ import annotations

import pytest

from node_support import (CAMS, RESEND_SHIFT_NS, NodeHarness, camera_info_msg, diag_values, image_msg, make_checkpoint,
                          synthetic_sample)

from labeldistill_ros.ros_convert import NS_PER_S, stamp_to_ns

# One node per module (per xdist worker that runs tests of it: each test is self-contained).
pytestmark = [pytest.mark.timeout(240)]
S = NS_PER_S  # ns per second


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return synthetic_sample(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def node(tmp_path_factory, syn):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "student.pt", seed=2)
    h = NodeHarness(tmp_path_factory.mktemp("node"), ckpt, {"score_threshold": 0.05, "tf_timeout_s": 0.05,
                                                            "missing_camera_policy": "drop_set"}, name="bad")
    try:
        h.wait_log("ready:", 120)
        h.wait_connected()
        h.publish_calibration(syn)
        h.spin(0.3)
        h.request(syn, 120)  # warm-up: the node works before any bad input
        yield h
    finally:
        h.close()


class Clock:
    """Stamps that keep moving forward from test to test (like a live camera)."""

    def __init__(self):
        self.k = 1

    def next(self, syn):
        self.k += 1
        return syn.shifted(self.k * 2 * S)  # room for resends (RESEND_SHIFT_NS) in between


@pytest.fixture(scope="module")
def clock():
    return Clock()


def counter(node, key: str) -> int:
    """The counter's current value (after one diagnostics period, so earlier events are included)."""
    node.spin(0.35)
    return int(diag_values(node.diags[-1])[key]) if node.diags else 0


def wait_counter(node, key: str, above: int, timeout_s: float = 60.0, resend=None):
    """Until the diagnostics show ``key`` above ``above``; ``resend(attempt)`` re-publishes a (lost) set."""
    return node.until(lambda: next((d for d in node.diags if int(diag_values(d)[key]) > above), None), timeout_s,
                      f"diagnostic {key} > {above}", resend)


def still_answers(node, syn, clock):
    arr = node.request(clock.next(syn), 120)
    assert arr.header.frame_id == "base_link" and len(arr.detections) > 0


def broken_image(syn, i, stamp_ns, **fields):
    msg = image_msg(syn.images[i], stamp_ns, CAMS[i])
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


class Sender:
    """Publishes a (bad) set, again with new stamps when asked; remembers every set sent."""

    def __init__(self, node, sample, make_messages=None, cams=None):
        self.node, self.sample, self.make, self.cams, self.sent = node, sample, make_messages, cams, []

    def __call__(self, attempt: int) -> None:
        s = self.sample.shifted(attempt * RESEND_SHIFT_NS)
        self.sent.append(s)
        self.node.publish_set(s, cams=self.cams, messages=self.make(s) if self.make else None)

    def none_answered(self) -> bool:
        return all(self.node.detection_at(s.reference_stamp_ns) is None for s in self.sent)


@pytest.mark.parametrize("case,fields,log", [
    ("unknown encoding", {"encoding": "yuv422"}, "encoding 'yuv422' is not supported"),
    ("step smaller than a row", {"step": 100}, "step=100 is smaller than width*channels"),
    ("width/step mismatch", {"width": 500}, "is smaller than width*channels=500*3"),
    ("truncated data", "truncate", "(truncated)"),
])
def test_malformed_images_skip_the_set_and_the_node_keeps_running(node, syn, clock, case, fields, log):
    before = counter(node, "input_errors")

    def broken(s):
        if fields == "truncate":
            msg = image_msg(syn.images[2], s.stamps_ns[2], CAMS[2])
            del msg.data[len(msg.data) // 2:]
            return {2: msg}
        return {2: broken_image(syn, 2, s.stamps_ns[2], **fields)}
    send = Sender(node, clock.next(syn), broken)
    st = wait_counter(node, "input_errors", before, resend=send)
    assert st.level == b"\x01" and "bad input" in st.message
    assert log in node.output() and "CAM_FRONT_RIGHT image" in node.output()
    still_answers(node, syn, clock)
    assert send.none_answered()  # the broken set never produced output


def test_camera_info_with_zero_k_is_rejected_until_a_valid_one_arrives(node, syn, clock):
    before = counter(node, "calibration_errors")
    h, w = syn.images[0].shape[:2]
    node.pub_info[0].publish(camera_info_msg(syn.Ks[0] * 0.0, w, h, CAMS[0]))
    node.spin(0.3)
    send = Sender(node, clock.next(syn))
    st = wait_counter(node, "calibration_errors", before, resend=send)
    assert st.level == b"\x01" and "bad CameraInfo" in st.message
    assert "camera_info of CAM_FRONT_LEFT: k = [0.0" in node.output() and "must be > 0" in node.output()
    node.pub_info[0].publish(camera_info_msg(syn.Ks[0], w, h, CAMS[0]))
    node.spin(0.3)
    still_answers(node, syn, clock)
    assert send.none_answered()


def test_missing_tf_skips_the_frame_with_a_throttled_warning(node, syn, clock):
    """A camera whose frame has no transform to base_link (a driver with a wrong frame_id)."""
    before = counter(node, "tf_failures")
    sends = []
    for k in range(3):
        send = Sender(node, clock.next(syn), lambda s: {4: image_msg(syn.images[4], s.stamps_ns[4],
                                                                     "camera_without_tf")})
        sends.append(send)
        wait_counter(node, "tf_failures", before + k, resend=send)
    st = wait_counter(node, "tf_failures", before + 2)
    assert st.level == b"\x01" and "TF lookups failed" in st.message
    warnings = [ln for ln in node.lines if "TF to 'base_link' unavailable" in ln]
    assert len(warnings) == 1, "the TF warning must be throttled"
    assert '"camera_without_tf" passed to lookupTransform' in warnings[0]
    still_answers(node, syn, clock)
    assert all(s.none_answered() for s in sends)


def test_stamps_going_backwards_reset_and_the_looped_bag_is_answered(node, syn, clock):
    before = counter(node, "resets")
    node.request(clock.next(syn), 120)
    looped = syn.shifted(-10 * S)  # the bag starts again
    arr = node.request(looped, 120)
    assert stamp_to_ns(arr.header.stamp) == node.last_sample.reference_stamp_ns
    wait_counter(node, "resets", before)
    assert "stamp went backwards" in node.output()
    still_answers(node, syn.shifted(-10 * S), clock)  # the looped bag plays on


def test_a_camera_that_stops_drops_the_set_after_the_timeout(node, syn, clock):
    before = counter(node, "incomplete_sets")
    send = Sender(node, clock.next(syn), cams=[0, 1, 2, 3, 5])  # CAM_BACK is silent
    st = wait_counter(node, "incomplete_sets", before, resend=send)
    assert "incomplete sets dropped" in st.message and st.level == b"\x01"
    assert "CAM_BACK" in diag_values(st)["missing_by_camera"]
    still_answers(node, syn, clock)
    assert send.none_answered()
    assert node.proc.poll() is None
