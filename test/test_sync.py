"""The N-camera set collector (pure Python): staggered cameras, timeouts, drop/skip policies, late images,
bag loops, bounded memory."""
from __future__ import annotations

import pytest

from labeldistill_ros.node.sync import SetCollector, spread_ms

pytestmark = pytest.mark.timeout(30)

MS = 1_000_000
# nuScenes trigger offsets after the LiDAR stamp (ms): FL, F, FR, BL, B, BR
OFFSETS = [7, 15, 22, 49, 40, 31]
PERIOD = 83 * MS  # 12 Hz


def frame_stamps(k: int, t0: int = 1_000_000 * MS) -> list[int]:
    return [t0 + k * PERIOD + o * MS for o in OFFSETS]


def feed(c: SetCollector, k: int, cams=range(6), recv: float = 0.0, order=None):
    stamps = frame_stamps(k)
    out = []
    for i in (order or cams):
        if i in cams:
            out += c.add(i, stamps[i], f"f{k}c{i}", recv)
    return out


def test_staggered_cameras_form_one_complete_set_per_frame():
    c = SetCollector(6, slop_s=0.06, timeout_s=0.5)
    sets = []
    for k in range(5):
        sets += feed(c, k, recv=k * 0.083)
    assert len(sets) == 5 and all(s.complete for s in sets)
    assert [s.items[0] for s in sets] == [f"f{k}c0" for k in range(5)]
    assert all(s.items == [f"f{k}c{i}" for i in range(6)] for k, s in enumerate(sets))
    assert sets[2].stamp_ns == frame_stamps(2)[0]  # earliest camera stamp of the set
    assert spread_ms(sets[0].stamps_ns) == pytest.approx(42.0)
    assert c.counters.complete_sets == 5 and c.counters.incomplete_sets == 0 and c.open_sets == 0


def test_arrival_order_within_a_set_does_not_matter():
    c = SetCollector(6, slop_s=0.06, timeout_s=0.5)
    out = feed(c, 0, order=[3, 5, 0, 4, 1, 2])
    assert len(out) == 1 and out[0].items == [f"f0c{i}" for i in range(6)]


def test_interleaved_frames_are_kept_apart():
    """Frame k+1's first cameras arrive before frame k's last ones (transport jitter)."""
    c = SetCollector(6, slop_s=0.06, timeout_s=0.5)
    s0, s1 = frame_stamps(0), frame_stamps(1)
    out = []
    for i in range(4):
        out += c.add(i, s0[i], f"f0c{i}", 0.0)
    for i in range(3):
        out += c.add(i, s1[i], f"f1c{i}", 0.0)
    for i in range(4, 6):
        out += c.add(i, s0[i], f"f0c{i}", 0.0)
    assert len(out) == 1 and out[0].items == [f"f0c{i}" for i in range(6)]
    for i in range(3, 6):
        out += c.add(i, s1[i], f"f1c{i}", 0.0)
    assert len(out) == 2 and out[1].items == [f"f1c{i}" for i in range(6)]


def test_a_stopped_camera_drops_sets_after_the_timeout_under_drop_set():
    c = SetCollector(6, slop_s=0.06, timeout_s=0.3, policy="drop_set")
    assert feed(c, 0, cams=[0, 1, 2, 3, 4], recv=10.0) == []
    assert c.poll(10.2) == []  # not yet timed out
    assert c.poll(10.31) == []  # timed out: dropped, nothing emitted
    assert c.counters.incomplete_sets == 1 and c.counters.missing_by_camera == {5: 1}
    assert c.open_sets == 0


def test_a_stopped_camera_is_skipped_after_the_timeout_under_skip_camera():
    c = SetCollector(6, slop_s=0.06, timeout_s=0.3, policy="skip_camera", min_cameras=3)
    feed(c, 0, cams=[0, 1, 2, 3, 4], recv=10.0)
    out = c.poll(10.31)
    assert len(out) == 1 and not out[0].complete
    assert out[0].present == [0, 1, 2, 3, 4] and out[0].items[5] is None and out[0].stamps_ns[5] is None
    assert c.counters.partial_sets == 1 and c.counters.incomplete_sets == 0
    # too few cameras: dropped even under skip_camera
    feed(c, 1, cams=[0, 1], recv=11.0)
    assert c.poll(11.5) == [] and c.counters.incomplete_sets == 1


def test_a_stale_camera_is_not_waited_for_under_skip_camera():
    """Camera 5 dies after frame 0: the first set without it waits for the timeout, later ones do not."""
    c = SetCollector(6, slop_s=0.06, timeout_s=0.3, policy="skip_camera", min_cameras=3)
    assert len(feed(c, 0, recv=10.0)) == 1
    assert feed(c, 1, cams=[0, 1, 2, 3, 4], recv=10.1) == []  # camera 5 may still come: wait
    assert len(c.poll(10.41)) == 1  # timed out: run without it; it is stale now
    out = feed(c, 2, cams=[0, 1, 2, 3, 4], recv=15.0)  # any later time (slow bag playback too)
    assert len(out) == 1 and out[0].present == [0, 1, 2, 3, 4] and out[0].items[0] == "f2c0"
    assert c.counters.partial_sets == 2 and c.open_sets == 0
    # It comes back: in its first frame the others arrive before it (still stale: that set runs without it and
    # its image is late); from the next frame on it is waited for again.
    assert len(feed(c, 3, recv=15.1)) == 1 and c.counters.late_images == 1
    assert feed(c, 4, cams=[0, 1, 2, 3, 4], recv=15.2) == []  # waits for camera 5 again
    assert len(c.add(5, frame_stamps(4)[5], "f4c5", 15.3)) == 1 and c.counters.complete_sets == 2
    # drop_set never runs partial sets
    d = SetCollector(6, slop_s=0.06, timeout_s=0.3, policy="drop_set")
    feed(d, 0, cams=[0, 1, 2, 3, 4], recv=10.0)
    d.poll(10.4)
    assert feed(d, 2, cams=[0, 1, 2, 3, 4], recv=15.0) == [] and d.open_sets == 1


def test_cameras_not_yet_seen_are_waited_for_after_start_up():
    c = SetCollector(6, slop_s=0.06, timeout_s=0.3, policy="skip_camera", min_cameras=3)
    assert feed(c, 0, cams=[0, 1, 2, 3], recv=10.0) == []  # 4 and 5 never seen yet: wait
    assert len(c.poll(10.31)) == 1
    assert len(feed(c, 1, cams=[0, 1, 2, 3], recv=10.35)) == 1  # now they count as stale


def test_a_camera_that_comes_back_after_its_set_closed_is_late_not_a_new_set():
    c = SetCollector(6, slop_s=0.06, timeout_s=0.3, policy="skip_camera")
    feed(c, 0, cams=[0, 1, 2, 3, 4], recv=10.0)
    assert len(c.poll(10.4)) == 1
    assert c.add(5, frame_stamps(0)[5], "late", 10.5) == []
    assert c.counters.late_images == 1 and c.open_sets == 0
    assert len(feed(c, 1, recv=10.6)) == 1  # the next frame is whole again


def test_an_older_incomplete_set_is_closed_when_a_newer_one_completes():
    c = SetCollector(6, slop_s=0.06, timeout_s=5.0)
    feed(c, 0, cams=[0, 1, 2])  # lost images (best effort)
    out = feed(c, 1)
    assert len(out) == 1 and out[0].items[0] == "f1c0"
    assert c.counters.incomplete_sets == 1 and c.open_sets == 0 and c.counters.resets == 0


def test_stamps_going_backwards_reset_the_collector():
    c = SetCollector(6, slop_s=0.06, timeout_s=0.5)
    for k in range(3):
        feed(c, k)
    feed(c, 3, cams=[0, 1])
    assert c.open_sets == 1
    out = feed(c, 0)  # the bag loops: frame 0 again
    assert c.counters.resets == 1 and c.reset_pending
    assert len(out) == 1 and out[0].items[0] == "f0c0" and c.counters.late_images == 0
    assert c.counters.incomplete_sets == 1  # the open set of frame 3 was discarded


def test_small_reordering_is_not_a_reset_and_duplicates_are_counted_late():
    c = SetCollector(6, slop_s=0.06, timeout_s=0.5)
    s = frame_stamps(0)
    c.add(0, s[0], "a", 0.0)
    assert c.add(0, s[0], "dup", 0.0) == []
    assert c.counters.late_images == 1 and c.counters.resets == 0


def test_stamps_further_apart_than_slop_do_not_join():
    c = SetCollector(2, slop_s=0.02, timeout_s=0.5)
    assert c.add(0, 0, "a", 0.0) == []
    assert c.add(1, 30 * MS, "b", 0.0) == []  # 30 ms > 20 ms slop: a set of its own
    assert c.open_sets == 2
    assert len(c.add(1, 15 * MS, "c", 0.0)) == 1  # fits with "a"


def test_open_sets_are_bounded_when_a_camera_never_arrives():
    c = SetCollector(6, slop_s=0.06, timeout_s=100.0, policy="drop_set", max_open=4)
    for k in range(20):
        feed(c, k, cams=[0, 1, 2, 3, 4])
    assert c.open_sets <= 4 and c.counters.incomplete_sets >= 15


def test_invalid_arguments():
    with pytest.raises(ValueError, match="policy"):
        SetCollector(6, 0.06, 0.5, policy="wait")
    c = SetCollector(2, 0.06, 0.5)
    with pytest.raises(IndexError):
        c.add(2, 0, "x", 0.0)
