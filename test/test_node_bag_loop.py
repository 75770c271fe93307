"""A bag loop in the live node (own process, real rclpy): six cameras at 2 Hz whose images of a set arrive in a
different order every set, then the stamps jump back 30 s and the stream goes on in varying order. The node resets
once (one log line, one ``resets``), and answers as many sets after the loop as before it."""
from __future__ import annotations

import random
import re
import time
from dataclasses import replace

import pytest

from node_support import RESEND_SHIFT_NS, NodeHarness, diag_values, make_checkpoint, synthetic_sample
from labeldistill_ros.ros_convert import NS_PER_S, stamp_to_ns

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(240)]
S = NS_PER_S  # ns per second
MS = 1_000_000
PERIOD = S // 2  # 2 Hz
SETS = 6  # per epoch (the counts compared before and after the loop do not depend on how many)
JUMP_S = 30.0
WAIT_S = 8.0  # per set: sync timeout (2 s) + inference on a loaded 2-core machine, with room


def epoch_sets(syn, base_ns: int, rng: random.Random) -> list:
    """SETS camera sets at 2 Hz from ``base_ns``, each camera stamp jittered by 0..40 ms (within the 60 ms slop)."""
    out = []
    for k in range(SETS):
        s = syn.shifted(base_ns + k * PERIOD - min(syn.stamps_ns))
        out.append(replace(s, stamps_ns=[t + rng.randrange(0, 41) * MS for t in s.stamps_ns]))
    return out


def answer_of(node, sample):
    """The Detection3DArray of ``sample`` (its stamp is one of the set's camera stamps)."""
    lo, hi = min(sample.stamps_ns), max(sample.stamps_ns)
    for d in node.detections:
        t = stamp_to_ns(d.header.stamp)
        if lo <= t <= hi:
            return d
    return None


def play(node, sets: list, rng: random.Random, orders: list) -> tuple[int, int]:
    """Publish each set in a shuffled camera order once the previous one was answered (a set lost in transport is
    sent once more, 200 ms later, like the harness's ``request``). Returns (sets answered, resends)."""
    answered = resends = 0
    for sample in sets:
        for attempt in range(2):
            s = sample.shifted(attempt * RESEND_SHIFT_NS)
            order = list(range(6))
            rng.shuffle(order)
            orders.append(order)
            node.publish_set(s, cams=order)
            deadline = time.monotonic() + WAIT_S
            done = lambda sample=sample, s=s: answer_of(node, sample) or answer_of(node, s)  # noqa: E731
            while not done() and time.monotonic() < deadline:
                assert node.proc.poll() is None, f"node exited:\n{node.output()}"
                node.ex.spin_once(timeout_sec=0.02)
            if done():
                answered += 1
                break
            resends += 1
    return answered, resends


def test_a_bag_loop_resets_once_and_the_node_answers_as_many_sets_after_it(tmp_path):
    t_start = time.monotonic()
    syn = synthetic_sample(tmp_path / "synth")
    (tmp_path / "node").mkdir()
    node = NodeHarness(tmp_path / "node", make_checkpoint(tmp_path / "student.pt", seed=5),
                       {"score_threshold": 0.05}, name="loop")
    try:
        node.wait_log("ready:", 120)
        node.wait_connected()
        node.publish_calibration(syn)
        node.spin(0.3)
        base = 1_700_000_000 * S
        node.request(syn.shifted(base - 10 * S - min(syn.stamps_ns)), 120)  # warm-up, well before the bag
        rng = random.Random(2024)
        before_sets = epoch_sets(syn, base, rng)
        after_sets = epoch_sets(syn, base + (SETS - 1) * PERIOD - int(JUMP_S * S), rng)  # the loop: 30 s back
        n0 = len(node.detections)
        orders: list = []
        before, resends_before = play(node, before_sets, rng, orders)
        n1 = len(node.detections)
        after, resends_after = play(node, after_sets, rng, orders)
        node.spin(0.6)  # stray outputs and a diagnostics period
        n2 = len(node.detections)
        assert len({tuple(o) for o in orders}) > 1, "the camera order must vary"
        assert before == SETS, f"{SETS - before} of {SETS} sets before the loop unanswered:\n{node.output()[-3000:]}"
        assert after == before, (f"{after} sets answered after the loop, {before} before (resends {resends_before}"
                                 f", {resends_after}):\n{node.output()[-3000:]}")
        assert n1 - n0 == n2 - n1 == SETS, "one Detection3DArray per set, as many after the loop as before"
        resets = [ln for ln in node.lines if "stamp went backwards" in ln]
        assert len(resets) == 1, "one reset line per loop:\n" + "".join(resets[:5])
        jump = float(re.search(r"went backwards by (\d+\.\d+) s", resets[0]).group(1))
        assert jump == pytest.approx(JUMP_S, abs=0.05)
        st = node.diag_since(0, lambda d: int(diag_values(d)["resets"]) >= 1)
        assert int(diag_values(node.diags[-1])["resets"]) == 1 and int(diag_values(st)["resets"]) == 1
        assert node.proc.poll() is None
    finally:
        node.close()
    print(f"bag loop test: {time.monotonic() - t_start:.1f} s wall")
