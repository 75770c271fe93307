"""The node's health: the level and one-line summary of each diagnostics period (:func:`diagnostic_level`), the
``diagnostic_msgs/DiagnosticArray`` that carries it on ``/diagnostics`` (:func:`diagnostic_array`), the counts over
the rate window (:class:`RateWindow`) and the throttle of repeated warnings (:class:`Throttle`)."""
from __future__ import annotations

from collections import Counter, deque
from typing import Mapping

# diagnostic_msgs/DiagnosticStatus levels
OK, WARN, ERROR, STALE = b"\x00", b"\x01", b"\x02", b"\x03"

MIN_LAG_SETS = 5  # fewer camera sets in the rate window: too few to judge the lag


def run_ratio(rates: Mapping[str, float]) -> float | None:
    """Share of the camera sets handed to inference over the rate window that were run, i.e. not superseded by a
    newer set while the model was busy (``rates``: ``sets``, ``superseded``); None below :data:`MIN_LAG_SETS`."""
    sets = rates.get("sets", 0)
    if sets < MIN_LAG_SETS:
        return None
    return max(0.0, sets - rates.get("superseded", 0)) / sets


def diagnostic_level(window: Mapping[str, float], model_ready: bool, *, rates: Mapping[str, float] | None = None,
                     lag_warn_ratio: float = 0.8, lag_error_ratio: float = 0.25, cpu_fallback: bool = False,
                     missing_cameras: Mapping[str, int] | None = None) -> tuple[bytes, str]:
    """Level and one-line summary of one diagnostics period.

    ``window`` holds counts since the previous report: ``nonfinite`` (boxes with NaN/inf dropped),
    ``failures`` (processing errors), ``tf_failures``, ``input_errors``, ``dropped`` (incomplete sets),
    ``partial`` (sets run without some cameras), ``late``, ``slow`` (sets above max_processing_time_ms),
    ``uncompensated_sets`` (cameras not moved to the reference stamp: no ``fixed_frame`` on TF),
    ``temporal_fallback_sets`` (a temporal model's previous frames without history),
    ``published`` and ``images``. ``rates`` holds counts over the longer rate window (``rate_window_s``):
    ``sets`` (camera sets handed to inference), ``superseded`` (of those, replaced by a newer set before the model
    took them), ``published`` and ``span_s``. ``missing_cameras``: camera name -> sets it was missing from over
    the rate window. ``cpu_fallback``: ``device: auto`` found no CUDA device.

    ERROR: no model, non-finite outputs, processing errors, or fewer than ``lag_error_ratio`` of the sets run
    (:func:`run_ratio`). WARN: TF failures, bad inputs, dropped/partial sets, slow processing, uncompensated or
    history-less sets, images arriving but nothing published, fewer than ``lag_warn_ratio`` of the sets run,
    missing cameras, the CPU fallback. A ratio of 0 disables its check. The summary lists every problem of the
    period (errors first).
    """
    g = lambda k: window.get(k, 0)  # noqa: E731
    if not model_ready:
        return ERROR, "model not loaded"
    errors = []
    if g("nonfinite"):
        errors.append(f"{g('nonfinite'):.0f} non-finite model outputs dropped")
    if g("failures"):
        errors.append(f"{g('failures'):.0f} processing failures")
    warns = []
    for key, text in (("tf_failures", "TF lookups failed"), ("input_errors", "bad input messages"),
                      ("calibration_errors", "bad CameraInfo"), ("dropped", "incomplete sets dropped"),
                      ("partial", "sets run without some cameras"), ("slow", "sets over max_processing_time_ms"),
                      ("uncompensated_sets", "sets without ego-motion compensation (fixed_frame not on TF: static "
                                             "extrinsics)"),
                      ("temporal_fallback_sets", "sets whose previous frames had no history (current frame used)")):
        if g(key):
            warns.append(f"{g(key):.0f} {text}")
    if g("images") and not g("published") and not warns and not errors:
        warns.append("images arrive but no set was published")
    ratio = run_ratio(rates or {})
    if ratio is not None and (ratio < lag_error_ratio or ratio < lag_warn_ratio):
        r = rates
        span = max(1e-3, r.get("span_s", 0.0))
        text = (f"inference lags the cameras: {ratio:.0%} of {r['sets']:.0f} sets run over {span:.1f} s "
                f"({r.get('superseded', 0):.0f} superseded by newer sets; output {r.get('published', 0) / span:.1f} "
                f"Hz, camera sets {r['sets'] / span:.1f} Hz)")
        (errors if ratio < lag_error_ratio else warns).append(text)
    if missing_cameras:
        span = (rates or {}).get("span_s", 0.0)
        names = ", ".join(f"{name} ({n:.0f})" for name, n in missing_cameras.items())
        warns.append(f"cameras missing from sets in the last {span:.1f} s (sets): {names}")
    if cpu_fallback:
        warns.append("device auto found no CUDA device: running on the CPU")
    if errors:
        return ERROR, "; ".join(errors + warns)
    if warns:
        return WARN, "; ".join(warns)
    if not g("images"):
        return OK, "waiting for images"
    return OK, "running"


def diagnostic_array(name: str, hardware_id: str, level: bytes, message: str, values: Mapping[str, object],
                     stamp):
    """``diagnostic_msgs/DiagnosticArray`` with one status; ``values`` become key/value strings."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from std_msgs.msg import Header

    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()])
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


class RateWindow:
    """Counts over the last ``window_s`` (at least one diagnostics period) from the node's cumulative counters:
    ``sets`` handed to inference (``submitted``), ``superseded``, ``published``, ``span_s``; and camera name ->
    sets it was missing from in that time."""

    def __init__(self, window_s: float, names: list[str], now: float):
        self.window_s, self.names = window_s, names
        self._history: deque = deque([(now, Counter(), {})])  # (time, cumulative counters, missing by camera index)

    def update(self, now: float, cum: Mapping[str, int],
               missing_by_camera: Mapping[int, int]) -> tuple[dict[str, float], dict[str, int]]:
        missing = dict(missing_by_camera)
        self._history.append((now, Counter(cum), missing))
        while len(self._history) > 2 and now - self._history[1][0] >= self.window_s:
            self._history.popleft()
        t0, base, base_missing = self._history[0]
        rates = {"sets": cum["submitted"] - base["submitted"], "superseded": cum["superseded"] - base["superseded"],
                 "published": cum["published"] - base["published"], "span_s": max(1e-3, now - t0)}
        gone = {self.names[i]: n - base_missing.get(i, 0) for i, n in sorted(missing.items())
                if n > base_missing.get(i, 0)}
        return rates, gone


class Throttle:
    """At most one log line per ``period_s`` for each kind of problem (a key), counting the ones suppressed."""

    def __init__(self, period_s: float):
        self.period_s = period_s
        self._last: dict[str, tuple[float, int]] = {}  # key -> (last time logged, suppressed since)

    def check(self, key: str, now: float) -> int | None:
        """None: suppress this line; else log it, with the number suppressed since the last one."""
        last, suppressed = self._last.get(key, (-1e9, 0))
        if now - last < self.period_s:
            self._last[key] = (last, suppressed + 1)
            return None
        self._last[key] = (now, 0)
        return suppressed
