"""The inference thread: submit never blocks, the latest set wins, errors do not kill the thread."""
from __future__ import annotations

import threading
import time

import pytest

from labeldistill_ros.node.worker import LatestWorker

pytestmark = pytest.mark.timeout(30)


def test_latest_item_wins_while_busy_and_submit_does_not_block():
    gate = threading.Event()
    seen = []

    def process(item):
        seen.append(item)
        gate.wait(5)

    w = LatestWorker(process)
    w.submit(0)
    while not seen:
        time.sleep(0.001)
    t = time.perf_counter()
    for i in range(1, 50):
        w.submit(i)  # the thread is busy with item 0
    assert time.perf_counter() - t < 0.05
    gate.set()
    assert w.wait_idle(5)
    assert seen == [0, 49]
    assert w.superseded == 48 and w.processed == 2 and w.submitted == 50
    w.stop()


def test_errors_are_counted_and_the_thread_survives():
    errors = []

    def process(item):
        if item == "bad":
            raise RuntimeError("boom")

    w = LatestWorker(process, on_error=errors.append)
    w.submit("bad")
    assert w.wait_idle(5)
    w.submit("good")
    assert w.wait_idle(5)
    assert w.failed == 1 and w.processed == 1 and isinstance(errors[0], RuntimeError)
    w.stop()
    assert not w._thread.is_alive()
