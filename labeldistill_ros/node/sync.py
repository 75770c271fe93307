"""Approximate-time collector of N-camera sets (pure Python, no ROS; not thread-safe: the node holds a lock).

Why not ``message_filters.ApproximateTimeSynchronizer``: it calls the user callback while holding its lock,
its cost grows as queue_size^(N-1), and it has neither a timeout nor a way to run without a camera that stopped.
This collector is what mature multi-camera nodes converged to:

* an image joins the open set whose stamps stay within ``slop_s`` of each other with it (max - min <= slop) and
  that lacks its camera; otherwise it opens a new set;
* a set is **complete** when every camera is in it; older open sets are then closed as *incomplete*;
* an open set older than ``timeout_s`` (receive time, monotonic seconds) is closed: dropped
  (``policy='drop_set'``) or emitted as a **partial** set with the cameras present (``policy='skip_camera'``,
  at least ``min_cameras``);
* under ``skip_camera``, a camera missing from a set closed by the timeout is *stale* until it delivers again:
  later sets no longer wait for it and are emitted as soon as every other camera is in (a dead camera costs one
  timeout, not one per set; independent of the frame rate, so slow bag playback behaves the same);
* an image that belongs to an already closed set (its stamp is not newer than the last closed set) is *late*;
* a camera's stamp going backwards by more than ``slop_s`` from its newest stamp of the current *epoch* (bag loop,
  replay restart) starts a new epoch: a **reset**, once per loop. The open sets are dropped (counted incomplete:
  the set in progress at the loop is lost) and every camera starts fresh in the new epoch.

Images still in flight from the old epoch when the loop starts (other cameras' images of the last sets before the
jump, arriving after the first image of the new one) must neither open sets nor reset a second time. Each camera's
own images arrive in order (one publisher per topic; DDS keeps per-writer order, best effort drops rather than
reorders), so after a reset every camera but the one that triggered it is *pending* until its first image of the
new epoch. A pending camera's image is in the new epoch when its stamp goes back from that camera's last one by
more than the slop (its own jump). Otherwise it continues the camera's old stream, and it is a *leftover* (counted
late, dropped) when it is closer to the old epoch's newest stamp ``H`` than to the new epoch's newest stamp ``N``
(``stamp > (H + N) / 2``), as long as ``N < H``; else it counts as the camera's first image of the new epoch (a
camera that lagged or was silent before the loop). Once the new epoch's stamps reach ``H`` (a small jump back, a
replay restart 0.3 s back: soon) stamps no longer tell the epochs apart and every camera counts as fresh. An image of
a camera that already delivered in the new epoch is never a leftover. Large jumps (30 s) and small ones (less than
a few frame periods) are both classified by that rule; resets come from a camera of the current epoch only. A
leftover so late that the new stream already passed ``H`` is taken as new: it is late or opens a set that stays
incomplete, and the camera's next stamps are not far enough behind it to reset again.

Stamps are integers in nanoseconds (header stamps), receive times floats in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


@dataclass
class CameraSet:
    """A set handed to inference. ``items[i]`` / ``stamps_ns[i]`` are ``None`` for a camera not in the set."""

    items: list[Any]
    stamps_ns: list[int | None]
    first_receive_s: float
    complete: bool
    ctx: Any = None  # the owner's per-set context (``new_ctx``), created with the set's first image

    @property
    def present(self) -> list[int]:
        """Indices of the cameras in the set."""
        return [i for i, s in enumerate(self.stamps_ns) if s is not None]

    @property
    def stamp_ns(self) -> int:
        """The set's stamp: the earliest camera stamp in it (the output header stamp)."""
        return min(s for s in self.stamps_ns if s is not None)


@dataclass
class SyncCounters:
    """Cumulative counters (since construction; resets of the stream do not clear them)."""

    images: int = 0
    complete_sets: int = 0
    partial_sets: int = 0  # emitted without some cameras (skip_camera)
    incomplete_sets: int = 0  # closed without being emitted (timeout under drop_set, superseded, too few cameras)
    late_images: int = 0  # arrived after their set was closed, a duplicate camera stamp, or a pre-loop leftover
    resets: int = 0  # stamps went backwards (bag loop): one per loop
    missing_by_camera: dict[int, int] = field(default_factory=dict)  # camera index -> sets it was missing from

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "missing_by_camera"}


@dataclass
class _Open:
    items: list[Any]
    stamps: list[int | None]
    first_receive_s: float
    lo: int
    hi: int
    ctx: Any = None


@dataclass
class _Closed:
    lo: int
    hi: int
    cameras: frozenset[int]


class SetCollector:
    """Collects per-camera messages into sets. ``add`` and ``poll`` return the sets ready for inference."""

    def __init__(self, num_cameras: int, slop_s: float, timeout_s: float, policy: str = "drop_set",
                 min_cameras: int = 1, max_open: int = 8, new_ctx: Callable[[], Any] | None = None,
                 on_drop: Callable[[Any], None] | None = None):
        """``new_ctx()``: a context object for each new set (``CameraSet.ctx``; :attr:`last_ctx` names the set the
        last image joined); ``on_drop(ctx)``: called for a set closed without being emitted (incomplete,
        superseded by a complete newer set, a reset)."""
        if num_cameras < 1:
            raise ValueError("num_cameras must be >= 1")
        if policy not in ("drop_set", "skip_camera"):
            raise ValueError(f"policy '{policy}' is unknown: use drop_set or skip_camera")
        self.n = num_cameras
        self.slop_ns = int(round(slop_s * 1e9))
        self.timeout_s = float(timeout_s)
        self.policy = policy
        self.min_cameras = max(1, min(int(min_cameras), num_cameras))
        self.max_open = max_open
        self.counters = SyncCounters()
        self._open: list[_Open] = []
        self._last_closed: _Closed | None = None
        self._last_stamp: list[int | None] = [None] * num_cameras  # newest stamp per camera, current epoch
        self._hi: int | None = None  # newest stamp of the current epoch (N)
        self._old_hi: int | None = None  # newest stamp of the previous epoch (H) while leftovers may arrive
        self._pending: dict[int, int | None] = {}  # camera not yet in the new epoch -> its last old stamp
        self._stale: set[int] = set()  # cameras missing from the last timed-out set and silent since
        self.reset_pending = False  # set on a reset; the owner clears it after acting (e.g. clearing TF)
        self.last_jump_ns = 0  # size of the last jump back: previous epoch's newest stamp - the new stamp
        self._new_ctx, self._on_drop = new_ctx, on_drop
        self.last_ctx: Any = None  # context of the set the last added image joined (None: late / dropped)

    # -- public -------------------------------------------------------------------------------------------------
    def add(self, cam: int, stamp_ns: int, item: Any, receive_s: float) -> list[CameraSet]:
        """Offer camera ``cam``'s message stamped ``stamp_ns``; returns the sets that became ready (0 or more)."""
        if not 0 <= cam < self.n:
            raise IndexError(f"camera index {cam} out of range 0..{self.n - 1}")
        self.counters.images += 1
        self.last_ctx = None
        if cam in self._pending:
            if self._is_leftover(cam, stamp_ns):
                self.counters.late_images += 1
                return []
            del self._pending[cam]  # its first image of the new epoch
        else:
            last = self._last_stamp[cam]
            if last is not None and stamp_ns < last - self.slop_ns:
                self._new_epoch(cam, stamp_ns)
        last = self._last_stamp[cam]
        self._last_stamp[cam] = stamp_ns if last is None else max(last, stamp_ns)
        self._hi = stamp_ns if self._hi is None else max(self._hi, stamp_ns)
        if self._old_hi is not None and (self._hi >= self._old_hi or not self._pending):
            self._old_hi = None  # the new epoch caught up with the old one (or every camera is in it)
            self._pending.clear()
        self._stale.discard(cam)

        if self._is_late(cam, stamp_ns):
            self.counters.late_images += 1
            return []
        target = self._best_open(cam, stamp_ns)
        if target is None:
            if any(s.stamps[cam] == stamp_ns for s in self._open):  # duplicate delivery
                self.counters.late_images += 1
                return []
            target = _Open([None] * self.n, [None] * self.n, receive_s, stamp_ns, stamp_ns,
                           self._new_ctx() if self._new_ctx is not None else None)
            self._open.append(target)
            self._open.sort(key=lambda s: s.lo)
        target.items[cam] = item
        target.stamps[cam] = stamp_ns
        target.lo, target.hi = min(target.lo, stamp_ns), max(target.hi, stamp_ns)
        self.last_ctx = target.ctx
        out: list[CameraSet] = []
        if all(s is not None for s in target.stamps):
            # Everything older than a complete set is stale: close it without emitting.
            for old in [s for s in self._open if s is not target and s.lo <= target.lo]:
                self._close(old, emitted=False)
            self._close(target, emitted=True)
            out.append(CameraSet(target.items, target.stamps, target.first_receive_s, True, target.ctx))
            self.counters.complete_sets += 1
        elif self.policy == "skip_camera" and self._live_present(target):
            for old in [s for s in self._open if s is not target and s.lo <= target.lo]:
                self._close(old, emitted=False)
            out += self._expire(target)
        while len(self._open) > self.max_open:  # bounded memory when a camera never arrives
            out += self._expire(self._open[0])
        return out

    def poll(self, now_s: float) -> list[CameraSet]:
        """Close the open sets whose first image arrived more than ``timeout_s`` before ``now_s``."""
        out: list[CameraSet] = []
        for s in [s for s in self._open if now_s - s.first_receive_s > self.timeout_s]:
            out += self._expire(s)
        return out

    def reset(self) -> None:
        """Forget all open sets and the history (stamps went backwards: a bag loop or a replay restart). Called by
        ``add`` once per loop; called directly, nothing of the old stream is remembered (no leftover rule)."""
        self.counters.incomplete_sets += len(self._open)
        for s in self._open:
            self._dropped(s)
        self._open.clear()
        self._last_closed = None
        self._last_stamp = [None] * self.n
        self._hi = None
        self._old_hi = None
        self._pending = {}
        self._stale.clear()
        self.counters.resets += 1
        self.reset_pending = True

    @property
    def open_sets(self) -> int:
        return len(self._open)

    # -- internals ----------------------------------------------------------------------------------------------
    def _new_epoch(self, cam: int, stamp: int) -> None:
        """Camera ``cam`` went back to ``stamp``: reset; the other cameras are pending until they follow."""
        old_hi = self._hi if self._hi is not None else stamp
        pending = {}
        for j in range(self.n):
            if j != cam:  # a camera still pending from an earlier loop keeps its last stamp before that one
                pending[j] = self._last_stamp[j] if self._last_stamp[j] is not None else self._pending.get(j)
        self.reset()
        self.last_jump_ns = old_hi - stamp
        self._old_hi, self._pending = old_hi, pending

    def _is_leftover(self, cam: int, stamp: int) -> bool:
        """A pending camera's image belongs to the previous epoch (see the module docstring)."""
        old = self._pending[cam]
        if old is not None and stamp < old - self.slop_ns:
            return False  # the camera's own jump back: it is in the new epoch
        if self._old_hi is None or self._hi is None or self._hi >= self._old_hi:
            return False
        return 2 * stamp > self._old_hi + self._hi  # closer to the old epoch's end than to the new stream

    def _live_present(self, s: _Open) -> bool:
        """Every camera that is not stale is in ``s``, and there are at least min_cameras."""
        present = [x is not None for x in s.stamps]
        if sum(present) < self.min_cameras:
            return False
        return all(present[c] or c in self._stale for c in range(self.n))

    def _is_late(self, cam: int, stamp: int) -> bool:
        c = self._last_closed
        if c is None:
            return False
        if stamp <= c.hi:
            return True
        # Newer than the last closed set but it would have fitted in it, and its camera was missing there.
        return cam not in c.cameras and stamp - c.lo <= self.slop_ns

    def _best_open(self, cam: int, stamp: int) -> _Open | None:
        best, best_span = None, None
        for s in self._open:
            if s.stamps[cam] is not None:
                continue
            span = max(s.hi, stamp) - min(s.lo, stamp)
            if span <= self.slop_ns and (best_span is None or span < best_span):
                best, best_span = s, span
        return best

    def _expire(self, s: _Open) -> list[CameraSet]:
        present = sum(x is not None for x in s.stamps)
        emit = self.policy == "skip_camera" and present >= self.min_cameras
        for i, x in enumerate(s.stamps):
            if x is None:
                self.counters.missing_by_camera[i] = self.counters.missing_by_camera.get(i, 0) + 1
                self._stale.add(i)
        self._close(s, emitted=emit)
        if not emit:
            return []
        self.counters.partial_sets += 1
        return [CameraSet(s.items, s.stamps, s.first_receive_s, False, s.ctx)]

    def _dropped(self, s: _Open) -> None:
        if self._on_drop is not None and s.ctx is not None:
            self._on_drop(s.ctx)

    def _close(self, s: _Open, emitted: bool) -> None:
        self._open.remove(s)
        if not emitted:
            self.counters.incomplete_sets += 1
            self._dropped(s)
        cams = frozenset(i for i, x in enumerate(s.stamps) if x is not None)
        if self._last_closed is None or s.hi >= self._last_closed.hi:
            self._last_closed = _Closed(s.lo, s.hi, cams)


def spread_ms(stamps_ns: Sequence[int | None]) -> float:
    """Spread (max - min) of the present stamps in milliseconds."""
    xs = [s for s in stamps_ns if s is not None]
    return (max(xs) - min(xs)) / 1e6 if xs else 0.0
