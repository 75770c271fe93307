"""Small helpers for tests that use real rclpy."""
from __future__ import annotations

import time
import uuid


def unique_topic(stem: str) -> str:
    """A topic name no other test (or concurrent test run) uses."""
    return f"/ld_test_{uuid.uuid4().hex[:8]}/{stem}"


def spin_until(executor, predicate, timeout_s: float, step_s: float = 0.05, on_tick=None) -> bool:
    """Spin ``executor`` until ``predicate()`` is true or ``timeout_s`` passes; ``on_tick`` runs each step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if on_tick is not None:
            on_tick()
        executor.spin_once(timeout_sec=step_s)
        if predicate():
            return True
    return predicate()
