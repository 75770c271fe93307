"""The N-camera set collector (pure Python): staggered cameras, timeouts, drop/skip policies, late images,
bag loops, bounded memory."""
from __future__ import annotations

import random

import pytest

from labeldistill_ros.node.sync import SetCollector, spread_ms
from labeldistill_ros.ros_convert import NS_PER_S

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



# ---------------------------------------------------------------------------------------------- bag loops
# Six cameras whose images of a set arrive in varying order (independent drivers, a bag), per-camera stamp jitter
# within the slop, then the stamps jump back (a bag loop, a replay restart) and the stream goes on.
S = NS_PER_S  # ns per second
SETS = 120


def loop_stream(rate_hz: float, jumps_s: list[float], seed: int, sets: int = SETS, straddle: int = 0,
                cams: int = 6) -> list[tuple]:
    """Arrival-ordered images ``(cam, stamp_ns, (epoch, k), receive_s)`` of ``len(jumps_s) + 1`` epochs of ``sets``
    sets each; epoch e+1 starts ``jumps_s[e]`` before epoch e's last set. Each set's camera order is shuffled and
    each camera stamp jittered by 0..44 ms. With ``straddle`` m > 0, the last m images of each epoch's last set
    arrive after the first images of the next epoch's first set (those of the other cameras: each camera's own
    images stay in order, as over DDS). Receive time: the set's wall-clock time, non-decreasing."""
    rng = random.Random(seed)
    period = int(round(S / rate_hz))
    rows: list[tuple] = []
    base = 1_700_000_000 * S
    for e in range(len(jumps_s) + 1):
        if e:
            base = base + (sets - 1) * period - int(round(jumps_s[e - 1] * S))
        for k in range(sets):
            order = list(range(cams))
            rng.shuffle(order)
            row = [(i, base + k * period + rng.randrange(0, 45) * MS, (e, k)) for i in order]
            if straddle and e and k == 0:
                held = rows[-straddle:]
                del rows[-straddle:]
                held_cams = {r[0] for r in held}
                row = [r for r in row if r[0] not in held_cams] + held + [r for r in row if r[0] in held_cams]
            rows += row
    out, recv = [], 0.0
    for cam, st, (e, k) in rows:
        recv = max(recv + 0.001, (e * sets + k) / rate_hz)
        out.append((cam, st, (e, k), recv))
    return out


def run_stream(events, policy: str, timeout_s: float = 0.5):
    """Feed a collector the way the node does (poll on its timer, reset_pending consumed after each image)."""
    c = SetCollector(6, slop_s=0.06, timeout_s=timeout_s, policy=policy, min_cameras=3)
    out, resets_seen = [], []
    c.timed_out = 0  # sets emitted by poll (test bookkeeping)
    for cam, st, tag, recv in events:
        polled = c.poll(recv)
        c.timed_out += len(polled)
        out += polled
        out += c.add(cam, st, tag, recv)
        if c.reset_pending:
            c.reset_pending = False
            resets_seen.append((tag, c.last_jump_ns))
    out += c.poll(1e9)
    return c, out, resets_seen


def sets_per_epoch(out, epochs: int) -> list[int]:
    """Checks that no set mixes images of two sets (so of two epochs) and that the emitted stamps increase within
    each epoch; returns the number of sets emitted per epoch."""
    by_epoch: dict[int, list[int]] = {e: [] for e in range(epochs)}
    for s in out:
        tags = {t for t in s.items if t is not None}
        assert len(tags) == 1, f"a set mixes images of {sorted(tags)}"
        (e, _k), = tags
        by_epoch[e].append(s.stamp_ns)
    for e, stamps in by_epoch.items():
        assert all(a < b for a, b in zip(stamps, stamps[1:])), f"epoch {e}: emitted stamps do not increase"
    return [len(by_epoch[e]) for e in range(epochs)]


@pytest.mark.parametrize("policy", ["drop_set", "skip_camera"])
@pytest.mark.parametrize("rate_hz", [2.0, 12.0])
@pytest.mark.parametrize("jump_s", [30.0, 0.3])
def test_a_bag_loop_resets_once_and_every_set_after_it_is_emitted(policy, rate_hz, jump_s):
    events = loop_stream(rate_hz, [jump_s], seed=int(rate_hz * 10 + jump_s * 100))
    c, out, resets = run_stream(events, policy)
    assert c.counters.resets == 1 and len(resets) == 1
    assert resets[0][0] == (1, 0)  # at the first image of the new epoch
    assert resets[0][1] == pytest.approx(jump_s * S, abs=0.05 * S)  # the jump size, for the node's log line
    assert sets_per_epoch(out, 2) == [SETS, SETS]
    assert all(s.complete for s in out)
    assert c.counters.complete_sets == 2 * SETS and c.counters.incomplete_sets == 0
    assert c.counters.late_images == 0 and c.open_sets == 0


@pytest.mark.parametrize("policy", ["drop_set", "skip_camera"])
@pytest.mark.parametrize("rate_hz", [2.0, 12.0])
@pytest.mark.parametrize("jump_s", [30.0, 0.3])
@pytest.mark.parametrize("straddle", [1, 3, 5])
def test_leftovers_of_the_old_epoch_after_the_loop_are_late_and_reset_nothing(policy, rate_hz, jump_s, straddle):
    """The old epoch's last set is still incomplete when the first image of the new one arrives: the loop cuts it
    (dropped, counted incomplete); its images arriving after that are late: they open no set, reset nothing, and
    every set of the new epoch is emitted."""
    events = loop_stream(rate_hz, [jump_s], seed=straddle, straddle=straddle)
    first_new = next(n for n, ev in enumerate(events) if ev[2][0] == 1)
    assert sum(ev[2] == (0, SETS - 1) for ev in events[first_new:]) == straddle  # the case is there
    c, out, resets = run_stream(events, policy)
    assert c.counters.resets == 1 and [t for t, _ in resets] == [(1, 0)]
    assert sets_per_epoch(out, 2) == [SETS - 1, SETS]
    assert c.counters.incomplete_sets == 1 and c.counters.late_images == straddle
    assert c.counters.complete_sets == 2 * SETS - 1 and c.open_sets == 0


@pytest.mark.parametrize("policy", ["drop_set", "skip_camera"])
@pytest.mark.parametrize("rate_hz", [2.0, 12.0])
def test_two_loops_reset_twice(policy, rate_hz):
    events = loop_stream(rate_hz, [30.0, 0.3], seed=7, straddle=2)
    c, out, resets = run_stream(events, policy)
    assert c.counters.resets == 2 and [t for t, _ in resets] == [(1, 0), (2, 0)]
    assert [j / S for _, j in resets] == [pytest.approx(30.0, abs=0.05), pytest.approx(0.3, abs=0.05)]
    assert sets_per_epoch(out, 3) == [SETS - 1, SETS - 1, SETS]
    assert c.counters.late_images == 4 and c.counters.incomplete_sets == 2


def test_two_loops_without_leftovers_emit_every_set():
    c, out, resets = run_stream(loop_stream(2.0, [30.0, 30.0], seed=11), "drop_set")
    assert c.counters.resets == 2 and len(resets) == 2
    assert sets_per_epoch(out, 3) == [SETS, SETS, SETS]


def test_a_dead_camera_across_a_loop_costs_one_timeout_under_skip_camera():
    events = [ev for ev in loop_stream(2.0, [30.0], seed=3) if ev[0] != 5]
    c, out, resets = run_stream(events, "skip_camera", timeout_s=0.3)
    assert c.counters.resets == 1 and sets_per_epoch(out, 2) == [SETS, SETS]
    assert all(s.present == [0, 1, 2, 3, 4] for s in out)
    assert c.counters.missing_by_camera == {5: 2 * SETS} and c.counters.partial_sets == 2 * SETS
    assert c.timed_out == 2  # one timeout before the loop, one after: then camera 5 is stale again


def test_the_leftover_rule_on_hand_made_stamps():
    """Three cameras at 12 Hz, slop 60 ms, a replay restart 0.3 s back, then a 10 s loop."""
    p = 83 * MS
    c = SetCollector(3, slop_s=0.06, timeout_s=0.5)
    h = 100 * S
    camera_2_last = h - 5 * S  # camera 2 lagged before the loop
    c.add(2, camera_2_last, "old", 0.0)
    for i in range(2):
        c.add(i, h + i * MS, "old", 0.0)
    assert c.add(0, h - 300 * MS, "new0", 0.1) == [] and c.counters.resets == 1 and c.reset_pending
    assert c.last_jump_ns == 301 * MS
    # camera 1's leftover (after its last stamp, near H): late, no set, no reset; a duplicate of its last too
    assert c.add(1, h + p, "leftover", 0.1) == [] and c.add(1, h + MS, "dup", 0.1) == []
    assert c.counters.late_images == 2 and c.open_sets == 1 and c.counters.resets == 1
    # camera 1 goes back by itself: in the new epoch. Camera 2's stamp is newer than its last one but closer to
    # the new stream than to H: in the new epoch too
    c.add(1, h - 300 * MS, "new1", 0.1)
    out = c.add(2, h - 290 * MS, "new2", 0.1)
    assert len(out) == 1 and out[0].items == ["new0", "new1", "new2"]
    # the new stream moves past H: no camera is pending any more; a camera going back is a loop again
    for k in range(1, 6):
        for i in range(3):
            c.add(i, h - 300 * MS + k * p + i * MS, "n", 0.2)
    assert c.counters.resets == 1 and c.counters.late_images == 2 and c.counters.complete_sets == 6
    assert c.add(2, h - 10 * S, "loop2", 0.3) == [] and c.counters.resets == 2
    assert c.last_jump_ns == 10 * S + 117 * MS


def test_an_image_of_a_camera_already_in_the_new_epoch_is_never_a_leftover():
    """After a 0.3 s jump at 12 Hz the new stream soon comes close to H: a camera already in the new epoch that runs
    ahead of the others (a stamp closer to H than to the new stream) still opens its set."""
    p = 83 * MS
    c = SetCollector(2, slop_s=0.06, timeout_s=0.5)
    h = 100 * S
    c.add(0, h, "a", 0.0)
    c.add(1, h, "b", 0.0)
    c.add(0, h - 300 * MS, "n0", 0.1)  # loop; camera 1 pending
    c.add(0, h - 300 * MS + 3 * p, "n3", 0.1)  # camera 0 runs ahead, stamp near H
    assert c.counters.late_images == 0 and c.open_sets == 2
    assert [s.items for s in c.add(1, h - 300 * MS, "m0", 0.1)] == [["n0", "m0"]]
    assert [s.items for s in c.add(1, h - 300 * MS + 3 * p, "m3", 0.1)] == [["n3", "m3"]]
    assert c.counters.resets == 1 and c.counters.late_images == 0
