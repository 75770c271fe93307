"""What a vehicle user hits first, with the node's own defaults (node in its own process, real rclpy): `device: auto`
on a machine without CUDA warns once at start-up and in /diagnostics; `fixed_frame: map` absent from TF falls back
to the static extrinsics and says so; a dead camera does not stop the output
(missing_camera_policy skip_camera) and is named in /diagnostics; markers are built only for subscribers and live
about three output periods; inference slower than the cameras is reported against the camera set rate."""
from __future__ import annotations

import statistics
import time

import pytest

from node_support import NodeHarness, diag_values, make_checkpoint, synthetic_sample
from labeldistill_ros.ros_convert import NS_PER_S, stamp_to_ns

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(90)]
S = NS_PER_S  # ns per second
WARN, ERROR = b"\x01", b"\x02"


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return synthetic_sample(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def node(tmp_path_factory, syn):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "student.pt", seed=4)
    # device, missing_camera_policy and fixed_frame: None = the node's defaults (auto, skip_camera, map); no CUDA
    # device visible, so auto falls back to the CPU on any machine; no map frame on TF. A short rate window keeps
    # the lag test short.
    h = NodeHarness(tmp_path_factory.mktemp("node"), ckpt,
                    {"device": None, "missing_camera_policy": None, "fixed_frame": None, "score_threshold": 0.05,
                     "rate_window_s": 2.0},
                    name="veh", env={"CUDA_VISIBLE_DEVICES": ""})
    try:
        h.wait_log("ready:", 60)
        h.wait_connected()
        h.publish_calibration(syn)
        h.spin(0.3)
        yield h
    finally:
        h.close()


class Stamps:
    """Set stamps that keep moving forward from test to test (like a live camera)."""

    def __init__(self):
        self.k = 0

    def next(self, syn, step_ns: int = S):
        self.k += 1
        return syn.shifted(self.k * step_ns)


@pytest.fixture(scope="module")
def stamps():
    return Stamps()


def answer(node, sample, cams=None, timeout_s: float = 25.0):
    """Publish the set (``cams``: those cameras only) and wait for the detections of it (a stamp within the set's
    stamps: the node stamps outputs with one of its cameras' stamps)."""
    node.publish_set(sample, cams=cams)
    sent = [sample.stamps_ns[i] for i in (range(6) if cams is None else cams)]
    lo, hi = min(sent), max(sent)

    def found():
        return next((d for d in node.detections
                     if lo <= stamp_to_ns(d.header.stamp) <= hi), None)
    return node.spin_until(found, timeout_s, f"detections of the set at {lo}")


def latest_diag(node, pred, timeout_s: float = 10.0):
    n0 = len(node.diags)
    return node.diag_since(n0, pred, timeout_s)


def test_device_auto_without_cuda_warns_once_and_in_diagnostics(node, syn, stamps):
    answer(node, stamps.next(syn))
    st = latest_diag(node, lambda d: int(diag_values(d)["published"]) >= 1)
    v = diag_values(st)
    assert (v["device"], v["device_requested"], v["cpu_fallback"]) == ("cpu", "auto", "True")
    assert st.level >= WARN and "device auto found no CUDA device: running on the CPU" in st.message
    lines = [ln for ln in node.lines if "device 'auto' found no CUDA device" in ln]
    assert len(lines) == 1 and "set device: cpu" in lines[0] and "WARN" in lines[0], node.output()[-2000:]


def test_a_dead_camera_does_not_stop_the_output_and_is_named(node, syn, stamps):
    alive = [0, 1, 2, 3, 4]  # CAM_BACK_RIGHT is dead
    t0 = time.monotonic()
    answer(node, stamps.next(syn), cams=alive)  # the first set waits sync_timeout_s (2 s) for it
    st = latest_diag(node, lambda d: "CAM_BACK_RIGHT" in diag_values(d)["missing_cameras"])
    v = diag_values(st)
    assert st.level >= WARN and "cameras missing from sets in the last" in st.message
    assert "CAM_BACK_RIGHT (" in st.message and v["missing_camera_policy"] == "skip_camera"
    assert v["missing_cameras"] == "CAM_BACK_RIGHT" and int(v["partial_sets"]) >= 1
    # it stays dead: the next sets are answered without waiting for it again
    t1 = time.monotonic()
    answer(node, stamps.next(syn), cams=alive)
    answer(node, stamps.next(syn), cams=alive)
    assert time.monotonic() - t1 < 25 and time.monotonic() - t0 < 30
    # it comes back: whole sets again, and once the rate window has passed it is no longer named
    answer(node, stamps.next(syn))
    node.spin(2.5)
    answer(node, stamps.next(syn))
    st = latest_diag(node, lambda d: True)
    assert diag_values(st)["missing_cameras"] == "" and "cameras missing" not in st.message


def test_markers_live_three_output_periods_and_are_built_only_for_subscribers(node, syn, stamps):
    arrivals = []
    for _ in range(6):  # one set about every second, well below the camera rate like a CPU: 5 of the 8 intervals
        t = time.monotonic()  # the node's median is taken over, so earlier tests' outputs do not matter
        answer(node, stamps.next(syn))
        arrivals.append(time.monotonic())
        node.spin(max(0.0, 1.0 - (time.monotonic() - t)))
    period = statistics.median(b - a for a, b in zip(arrivals, arrivals[1:]))
    marker = node.spin_until(lambda: [m for m in node.markers if m.markers[1:]
                                      and m.markers[0].header.stamp == node.detections[-1].header.stamp], 10,
                             "markers of the last set")[0]
    life = [x.lifetime.sec + x.lifetime.nanosec / 1e9 for x in marker.markers[1:]]
    assert len(set(life)) == 1, "every marker of an array has the same lifetime"
    assert life[0] > 2.0 and life[0] == pytest.approx(3 * period, rel=0.3), (life[0], period)
    assert marker.markers[0].action == 3  # DELETEALL: the next array replaces the boxes at once

    node.node.destroy_subscription(node.sub_markers)  # nobody watches: no marker is built
    st = latest_diag(node, lambda d: diag_values(d)["marker_subscribers"] == "0")
    built, skipped, received = (int(diag_values(st)["markers_published"]),
                                int(diag_values(st)["markers_unsubscribed"]), len(node.markers))
    answer(node, stamps.next(syn))
    answer(node, stamps.next(syn))
    st = latest_diag(node, lambda d: int(diag_values(d)["markers_unsubscribed"]) >= skipped + 2)
    assert int(diag_values(st)["markers_published"]) == built and len(node.markers) == received


def test_inference_slower_than_the_cameras_is_reported(node, syn, stamps):
    """Sets arrive far faster than the model runs them (up to 30 set/s for 3 s): most are superseded; the status
    says so against the camera set rate with the level its thresholds give (WARN < 80 %, ERROR < 25 % run)."""
    node.spin(2.5)
    n0 = len(node.diags)
    base = stamps.next(syn, 10 * S)
    t0 = time.monotonic()
    k = 0
    while time.monotonic() - t0 < 3.0:
        k += 1
        node.publish_set(base.shifted(k * S // 10))  # stamps 100 ms apart: distinct sets
        node.spin(max(0.0, t0 + k / 30 - time.monotonic()))
    st = node.diag_since(n0, lambda d: "inference lags the cameras" in d.message, 10)
    v = diag_values(st)
    ratio = float(v["run_ratio"])
    assert ratio < 0.8 and int(v["superseded_in_window"]) > 0
    assert float(v["input_set_rate_hz"]) > float(v["output_rate_hz"]) * 1.25
    assert st.level >= (ERROR if ratio < 0.25 else WARN), st.message
    # the window passes without sets: the lag is no longer reported
    node.spin(3.0)
    st = latest_diag(node, lambda d: True)
    assert "inference lags" not in st.message and diag_values(st)["run_ratio"] == "n/a"


def test_without_the_fixed_frame_on_tf_the_static_extrinsics_are_used_and_reported(node, syn, stamps):
    """The default fixed_frame (map) is not on TF here: the node still answers every set (static extrinsics, as if
    the cameras fired at once), warns in its log (throttled) and in /diagnostics, and counts the sets."""
    n0 = len(node.diags)
    answer(node, stamps.next(syn))
    st = node.diag_since(n0, lambda d: "without ego-motion compensation" in d.message, 10)
    assert st.level >= WARN and int(diag_values(st)["uncompensated_sets"]) >= 1
    assert any("not compensated" in ln and "'map'" in ln for ln in node.lines), node.output()[-2000:]
