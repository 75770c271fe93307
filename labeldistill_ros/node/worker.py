"""The inference thread: a one-slot mailbox where the latest submitted set wins.

Subscription callbacks (and the synchroniser, under its lock) only call :meth:`LatestWorker.submit`, which
stores the item and returns at once. The thread takes the newest item and runs the processing function outside
every lock. A set that is replaced before the thread took it is counted as *superseded* (the model was busy: this
is back-pressure, not loss). Exceptions of the processing function are counted and handed to ``on_error``; the
thread keeps running.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable


class LatestWorker:
    """Runs ``process(item)`` on a daemon thread for the most recent item submitted."""

    def __init__(self, process: Callable[[Any], None], on_error: Callable[[BaseException], None] | None = None,
                 name: str = "labeldistill-inference", on_discard: Callable[[Any], None] | None = None):
        """``on_discard(item)``: called for an item that will never be processed (superseded in the slot, or
        pending at :meth:`stop`), e.g. to free what it holds."""
        self._process = process
        self._on_error = on_error
        self._on_discard = on_discard
        self._cond = threading.Condition()
        self._item: Any = None
        self._has_item = False
        self._stop = False
        self._busy = False
        self.submitted = 0
        self.superseded = 0  # replaced in the slot by a newer item before processing started
        self.processed = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> None:
        """Hand ``item`` over (non-blocking). A not-yet-started older item is discarded."""
        old = None
        with self._cond:
            if self._has_item:
                self.superseded += 1
                old = self._item
            self._item, self._has_item = item, True
            self.submitted += 1
            self._cond.notify()
        if old is not None and self._on_discard is not None:
            self._on_discard(old)

    @property
    def busy(self) -> bool:
        """True while an item is being processed or waits in the slot."""
        with self._cond:
            return self._busy or self._has_item

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until nothing is pending or running (tests, shutdown); returns whether that happened."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.busy:
                return True
            time.sleep(0.005)
        return not self.busy

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread after the item in progress (a pending one is dropped)."""
        with self._cond:
            self._stop = True
            pending, self._item, self._has_item = (self._item if self._has_item else None), None, False
            self._cond.notify()
        if pending is not None and self._on_discard is not None:
            self._on_discard(pending)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._has_item and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item, self._item, self._has_item = self._item, None, False
                self._busy = True
            try:
                self._process(item)
                self.processed += 1
            except BaseException as exc:  # noqa: BLE001 - the thread must survive any processing error
                self.failed += 1
                if self._on_error is not None:
                    try:
                        self._on_error(exc)
                    except Exception:  # noqa: BLE001
                        pass
            finally:
                with self._cond:
                    self._busy = False
