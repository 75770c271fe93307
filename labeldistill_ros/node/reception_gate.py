"""Image reception yields to the output: the callback group of the node's image subscriptions, closed by the
inference thread from the end of a set's forward until its detections are published.

Why: in rclpy every image take runs in the executor thread and holds the interpreter lock for the whole copy of
the serialized message (a 1600x900 rgb8 image: 4.3 MB, about 2 ms on the benchmark machine; six per set within
about 50 ms). Decoding is many short torch/numpy calls that each give the lock up and must win it back, so a
decode that overlaps the next set's burst of takes waited up to 10 ms for the lock (measured with per-thread
CPU accounting: during a 31 ms decode the executor thread ran 16 ms). While the gate is closed the executor does
not take images: they wait in the middleware's reader queue (``input_depth`` deep; the window is a few ms, so at
most one image per camera arrives in it), and are taken as soon as the detections are out.

What it costs: an image that arrives inside the window is taken a few ms later. That delays nothing while the
model runs behind the cameras (the set it takes next is complete long before), and on a fast (GPU) model the
window is only the host decode and publish, after the device has finished (:meth:`Detector.detect_slot`).

rclpy's executors (Jazzy and Kilted, tested in test_reception_gate.py) leave an entity whose group
``can_execute`` is False out of the wait set and skip its handler when ``beginning_execution`` is False, so a
closed gate neither loses messages nor spins; :meth:`ReceptionGate.open` wakes the executor so that it waits on
the subscriptions again.
"""
from __future__ import annotations

import threading
from typing import Callable

try:  # rclpy is a runtime dependency of the node only (the package imports stay light)
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
except ImportError:  # pragma: no cover - the node module reports the missing ROS 2 environment
    MutuallyExclusiveCallbackGroup = object


class ReceptionGate(MutuallyExclusiveCallbackGroup):
    """A mutually exclusive callback group (like a node's default group: one of its callbacks at a time, also
    under a multi-threaded executor) that can be closed: no callback of the group starts while closed.

    ``wake``: called by :meth:`open` (the executor's ``wake``: it rebuilds its wait set with the group's
    entities). Thread-safe: :meth:`close` / :meth:`open` from any thread."""

    def __init__(self, wake: Callable[[], None] | None = None):
        super().__init__()
        self._open = threading.Event()
        self._open.set()
        self._wake = wake
        self.closures = 0  # how many times the gate was closed (diagnostics, tests)

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def close(self) -> None:
        """Hold back the group's callbacks (takes) until :meth:`open`."""
        if self._open.is_set():
            self._open.clear()
            self.closures += 1

    def open(self) -> None:
        """Let the group's callbacks run again and wake the executor (no-op when open)."""
        if self._open.is_set():
            return
        self._open.set()
        wake = self._wake
        if wake is not None:
            try:
                wake()
            except Exception:  # noqa: BLE001 - an executor shutting down: nothing left to wake
                pass

    # -- rclpy's CallbackGroup interface (called by the executor) ------------------------------------------------
    def can_execute(self, entity) -> bool:
        return self._open.is_set() and super().can_execute(entity)

    def beginning_execution(self, entity) -> bool:
        return self._open.is_set() and super().beginning_execution(entity)
