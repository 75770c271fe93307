"""Per-camera work as the images arrive: each open camera set gets a :class:`SetStage`, and a staging thread
converts and preprocesses a camera's image into the set's network input (:meth:`Detector.stage`) as soon as it
arrives, while the other cameras are still on their way or the model still runs the previous set. When the
inference thread takes the set, only what is not staged yet is left on its path (usually nothing, or the last
camera).

When a set is complete, its calibration (CameraInfo check, TF lookups, ego-motion compensation) is a job of its
own, after the cameras.

What gets staged on arrival (:class:`StagePolicy`): everything while the model keeps up with the cameras (it is
idle when images arrive); while it runs a set, only sets that will probably be the next one it takes: those
arriving within ``lookahead_periods`` camera periods of the end the running set is expected at (the running set's
start + the recent processing time). A CPU model at a few sets a second thus converts two or three of every
dozen sets instead of all of them (the rest are superseded before the model is free; they are never
deserialised, converted or resized), and the set it takes is usually ready.

Threads: the executor thread creates stages and queues staging jobs (:meth:`Stager.offer`, non-blocking); the
staging thread runs them; the inference thread finishes a set's stage (:meth:`SetStage.finish`), waiting for a
camera the staging thread is working on and staging the ones nobody started. A stage holds an input slot of the
detector from its first staged camera until it is released: by the inference thread after the set, or when the
set is dropped (incomplete, superseded, a reset), whichever comes last for a camera in progress.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

NOT_STAGED, STAGING, STAGED, FAILED = 0, 1, 2, 3


class SetStage:
    """One camera set's staging state: its raw items, the detector input slot, the state of each job.

    Jobs ``0 .. n-1`` are the cameras, job ``n`` (:attr:`calib_job`) the set's calibration (CameraInfo + TF), which
    needs every camera's image size and so runs after them. ``stage_fn(stage, job)`` does a job (a camera: convert
    + :meth:`Detector.stage` into ``stage.slot``; the calibration: into ``stage.calib``); it raises on bad input
    (reported by :meth:`finish`) and may return False for "not possible yet" (the job stays open).
    ``acquire(blocking) -> slot or None`` and ``release(slot)`` come from the detector.
    """

    def __init__(self, num_cameras: int, acquire: Callable[[bool], Any], release: Callable[[Any], None]):
        self.items: list[Any] = [None] * num_cameras
        self.calib_job = num_cameras
        self.state = [NOT_STAGED] * (num_cameras + 1)
        self.errors: list[BaseException | None] = [None] * (num_cameras + 1)
        self.staged_by_worker = [False] * (num_cameras + 1)
        self.cams: list[int] | None = None  # the cameras of the set once it is complete / emitted
        self.calib = None  # the set's calibration (the calibration job's result)
        self.slot = None
        self.first_received_ns: int | None = None  # middleware reception times of the set's first / last image
        self.last_received_ns: int | None = None
        self.ready_ns: int | None = None  # when the set was handed to the inference thread (wall ns)
        self._acquire, self._release = acquire, release
        self._cond = threading.Condition()
        self._dropped = False

    def _startable(self, job: int) -> bool:
        if job == self.calib_job:
            return self.cams is not None
        return self.items[job] is not None

    # -- staging thread ---------------------------------------------------------------------------------------
    def try_stage(self, job: int, stage_fn: Callable[["SetStage", int], bool | None]) -> bool:
        """Run ``job`` unless it is already done/started, the set was dropped, or no slot is free."""
        with self._cond:
            if self._dropped or self.state[job] != NOT_STAGED or not self._startable(job):
                return False
            if self.slot is None:
                self.slot = self._acquire(False)
                if self.slot is None:  # every slot busy: the inference thread will stage it
                    return False
            self.state[job] = STAGING
        return self._run(job, stage_fn)

    # -- inference thread -------------------------------------------------------------------------------------
    def finish(self, cams: list[int], stage_fn: Callable[["SetStage", int], bool | None]) -> None:
        """Make every camera of ``cams`` staged, then the calibration: stage here what nobody started (in parallel
        with the staging thread's current job), wait for what is in progress. Raises the first error (cameras in
        order, then the calibration)."""
        with self._cond:
            if self.slot is None:
                self.slot = self._acquire(True)
            self.cams = list(cams)
        for jobs in (list(cams), [self.calib_job]):
            while True:
                with self._cond:
                    job = next((j for j in jobs if self.state[j] == NOT_STAGED), None)
                    if job is None:
                        while any(self.state[j] == STAGING for j in jobs):
                            self._cond.wait()
                        break
                    self.state[job] = STAGING
                    self.staged_by_worker[job] = True
                if not self._run(job, stage_fn):
                    raise RuntimeError(f"staging job {job} could not run with every camera staged")
            for j in jobs:
                if self.errors[j] is not None:
                    raise self.errors[j]

    # -- either ---------------------------------------------------------------------------------------------
    def _run(self, job: int, stage_fn) -> bool:
        err, done = None, True
        try:
            done = stage_fn(self, job) is not False
        except BaseException as exc:  # noqa: BLE001 - reported by finish() in the inference thread
            err = exc
        with self._cond:
            self.errors[job] = err
            self.state[job] = FAILED if err is not None else (STAGED if done else NOT_STAGED)
            self._cond.notify_all()
            self._maybe_release()
        return done

    def drop(self) -> None:
        """The set is done with (processed, superseded, incomplete): its slot goes back once no job is running,
        and its raw images are let go."""
        with self._cond:
            self._dropped = True
            self._maybe_release()

    def _maybe_release(self) -> None:
        if self._dropped and self.slot is not None and STAGING not in self.state:
            self._release(self.slot)
            self.slot = None
            self.items = [None] * len(self.items)

    @property
    def staged_count(self) -> int:
        return sum(s == STAGED for s in self.state[: self.calib_job])


class StagePolicy:
    """Whether an arriving image is worth staging now (module docstring). Times are monotonic seconds."""

    def __init__(self, lookahead_periods: float = 2.0, ema: float = 0.2):
        self.lookahead_periods = lookahead_periods
        self.ema = ema
        self.period_s: float | None = None  # camera set period (between first images of consecutive sets)
        self.process_s: float | None = None  # the inference thread's time per set
        self._last_set_start: float | None = None
        self._busy_since: float | None = None

    def new_set(self, now: float) -> None:
        if self._last_set_start is not None:
            dt = now - self._last_set_start
            if 0.0 < dt < 5.0:
                self.period_s = dt if self.period_s is None else (1 - self.ema) * self.period_s + self.ema * dt
        self._last_set_start = now

    def started(self, now: float) -> None:
        self._busy_since = now

    def finished(self, now: float) -> None:
        if self._busy_since is not None:
            dt = now - self._busy_since
            self.process_s = dt if self.process_s is None else (1 - self.ema) * self.process_s + self.ema * dt
        self._busy_since = None

    def stage_now(self, now: float) -> bool:
        busy = self._busy_since
        if busy is None or self.process_s is None or self.period_s is None:
            return True
        remaining = busy + self.process_s - now
        return remaining < self.lookahead_periods * self.period_s + 0.1 * self.process_s


class Stager:
    """The staging thread: runs queued ``(stage, cam)`` jobs in arrival order (see the module docstring)."""

    def __init__(self, stage_fn: Callable[[SetStage, int], None], name: str = "labeldistill-staging",
                 still_wanted: Callable[[SetStage], bool] | None = None):
        """``still_wanted(stage)``: checked again when a queued job comes up (the model may have taken another set
        since it was queued: then the job would only compete with that set's decoding and publishing)."""
        self._fn = stage_fn
        self._wanted = still_wanted
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.staged = 0
        self.skipped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def offer(self, stage: SetStage, job: int) -> None:
        self._q.put((stage, job))

    def stop(self, timeout_s: float = 5.0) -> None:
        self._q.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            stage, cam = job
            if self._wanted is not None and not self._wanted(stage):
                self.skipped += 1
                continue
            if stage.try_stage(cam, self._fn):
                self.staged += 1
            else:
                self.skipped += 1


def wall_ns() -> int:
    """The system clock in ns: the clock of the middleware's ``received_timestamp``."""
    return time.time_ns()
