"""The node's hot path pieces without a running node: serialized images read without deserialising
(labeldistill_ros/node/raw_image.py), per-set staging shared by the staging and inference threads and the policy of
what to stage on arrival (labeldistill_ros/node/staging.py)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from labeldistill_ros.node import raw_image
from labeldistill_ros.node.ros_compat import ImageError, compressed_to_rgb, image_to_rgb
from labeldistill_ros.node.staging import SetStage, Stager, StagePolicy
from node_support import compressed_msg, image_msg

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (45, 80, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- raw images
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "bgra8", "mono8"])
def test_serialized_image_reads_like_the_message(rgb, encoding):
    from rclpy.serialization import serialize_message

    msg = image_msg(rgb, 1_700_000_123_456_789_012, "CAM_FRONT_optical", encoding)
    raw = serialize_message(msg)
    r = raw_image.parse(raw, compressed=False)
    assert (r.stamp_ns, r.frame_id, r.encoding) == (1_700_000_123_456_789_012, "CAM_FRONT_optical", encoding)
    assert (r.height, r.width, r.step, r.is_bigendian) == (msg.height, msg.width, msg.step, msg.is_bigendian)
    assert not r.data.flags.writeable and r.data.base is not None  # a view on the bytes, not a copy
    np.testing.assert_array_equal(image_to_rgb(r), image_to_rgb(msg))
    if encoding == "rgb8":
        np.testing.assert_array_equal(image_to_rgb(r), rgb)
    again = raw_image.from_message(raw, compressed=False)  # the deserialising path (big-endian payloads)
    assert (again.stamp_ns, again.frame_id, again.step) == (r.stamp_ns, r.frame_id, r.step)
    np.testing.assert_array_equal(image_to_rgb(again), image_to_rgb(r))
    assert r.message().header.frame_id == "CAM_FRONT_optical"  # what cv_bridge gets on a vehicle


def test_serialized_compressed_image(rgb):
    from rclpy.serialization import serialize_message

    msg = compressed_msg(rgb, 42, "cam")
    r = raw_image.parse(serialize_message(msg), compressed=True)
    assert r.compressed and (r.stamp_ns, r.frame_id, r.format) == (42, "cam", "jpeg")
    np.testing.assert_array_equal(compressed_to_rgb(r), compressed_to_rgb(msg))


def test_truncated_or_inconsistent_bytes_are_rejected(rgb):
    from rclpy.serialization import serialize_message

    raw = serialize_message(image_msg(rgb, 1, "cam"))
    with pytest.raises(raw_image.RawImageError, match="data has"):
        raw_image.parse(raw[:-10], compressed=False)
    with pytest.raises(raw_image.RawImageError):
        raw_image.parse(raw[:9], compressed=False)
    r = raw_image.parse(serialize_message(image_msg(rgb, 1, "cam")), compressed=False)
    r.height += 1  # a header that disagrees with the data is the converter's ImageError, as for messages
    with pytest.raises(ImageError, match="step\\*height"):
        image_to_rgb(r)


# ----------------------------------------------------------------------------------------------- set staging
class Slots:
    def __init__(self, n: int):
        self.free = list(range(n))
        self.released: list[int] = []

    def acquire(self, blocking: bool):
        if self.free:
            return self.free.pop(0)
        return 99 if blocking else None

    def release(self, slot):
        self.released.append(slot)


def test_staging_thread_and_inference_thread_share_a_set():
    slots = Slots(1)
    done: list[tuple[str, int]] = []
    gate = threading.Event()

    def stage_fn(st, job):
        if job == st.calib_job:  # the set's calibration: after its cameras
            done.append(("calib", tuple(st.cams)))
            return True
        if job == 1 and threading.current_thread().name == "labeldistill-staging":
            gate.wait(5)  # camera 1 is still being staged when the inference thread takes the set
        if job == 2:
            raise ImageError("camera 2: bad")
        done.append((threading.current_thread().name, job))

    st = SetStage(4, slots.acquire, slots.release)
    st.items = ["a", "b", "c", None]
    stager = Stager(stage_fn)
    try:
        stager.offer(st, 0)
        stager.offer(st, 1)
        time.sleep(0.1)
        assert st.slot == 0 and st.state[0] == 2 and st.state[1] == 1
        threading.Timer(0.2, gate.set).start()
        with pytest.raises(ImageError, match="camera 2"):
            st.finish([0, 1, 2], stage_fn)  # waits for camera 1, stages camera 2 itself, reports its error
        assert [c for _, c in done] == [0, 1]  # a camera error stops the set before its calibration
        assert st.staged_by_worker == [False, False, True, False, False]
        assert slots.released == []
        st.drop()
        assert slots.released == [0] and st.items == [None] * 4
        assert not st.try_stage(3, stage_fn)  # a dropped set takes no more work
    finally:
        stager.stop()


def test_a_set_dropped_while_a_camera_is_staged_gives_its_slot_back_after():
    slots = Slots(2)
    gate = threading.Event()
    st = SetStage(2, slots.acquire, slots.release)
    st.items = ["a", "b"]
    stager = Stager(lambda s, c: gate.wait(5))
    try:
        stager.offer(st, 0)
        time.sleep(0.1)
        st.drop()  # superseded while camera 0 is in progress
        assert slots.released == []
        gate.set()
        time.sleep(0.1)
        assert slots.released == [0]
    finally:
        stager.stop()


def test_no_free_slot_leaves_the_work_to_the_inference_thread():
    slots = Slots(0)
    st = SetStage(1, slots.acquire, slots.release)
    st.items = ["a"]
    assert not st.try_stage(0, lambda s, c: None)
    st.finish([0], lambda s, c: None)  # the inference thread always gets a slot
    assert st.slot == 99 and st.staged_by_worker == [True, True]


def test_calibration_runs_after_the_cameras_and_waits_for_their_sizes():
    """The calibration job needs every camera's image size: in the staging thread it stays open ("not possible
    yet") until the cameras are staged; the inference thread then finds it done or runs it last."""
    slots = Slots(2)
    order: list[str] = []

    def stage_fn(st, job):
        if job == st.calib_job:
            if not all(st.state[c] == 2 for c in st.cams):
                order.append("calib-not-yet")
                return False
            order.append("calib")
            st.calib = "K+TF"
            return True
        order.append(f"cam{job}")
        return True

    st = SetStage(2, slots.acquire, slots.release)
    st.items = ["a", "b"]
    st.cams = [0, 1]
    assert not st.try_stage(st.calib_job, stage_fn) and st.state[st.calib_job] == 0  # open again
    assert st.try_stage(0, stage_fn) and st.try_stage(1, stage_fn) and st.try_stage(st.calib_job, stage_fn)
    st.finish([0, 1], stage_fn)  # everything done ahead: nothing left for the inference thread
    assert order == ["calib-not-yet", "cam0", "cam1", "calib"] and st.calib == "K+TF"
    assert st.staged_by_worker == [False, False, False]
    st2 = SetStage(2, slots.acquire, slots.release)
    st2.items = ["a", "b"]
    order.clear()
    st2.finish([1, 0], stage_fn)  # a partial / unstaged set: cameras first, then its calibration
    assert order == ["cam1", "cam0", "calib"] and st2.cams == [1, 0]


def test_policy_stages_what_the_model_will_take():
    pol = StagePolicy(lookahead_periods=2.0)
    assert pol.stage_now(0.0)  # nothing known yet: stage
    t = 0.0
    for _ in range(5):  # sets every 83 ms
        pol.new_set(t)
        t += 0.083
    pol.started(10.0)
    pol.finished(10.4)  # the model takes 0.4 s per set
    assert pol.stage_now(10.5)  # idle: every image is staged on arrival
    pol.started(11.0)
    assert not pol.stage_now(11.05)  # 0.35 s left: these sets will be superseded
    assert pol.stage_now(11.25)  # 0.15 s left (< 2 periods + 10 %): probably the next set
