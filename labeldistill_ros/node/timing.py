"""Where the time of a camera set went, from its first image's arrival to the published detections: the per-stage
breakdown the node publishes on ``~/debug/stage_times_ms`` and the overhead the node adds to the model forward
(``bench/bench_node.py`` reads both)."""
from __future__ import annotations


def stage_times(cs, st, det, t_pick: int, t_staged: int, t_calib: int, t_det: int, t_pub: int, t_end: int,
                free_ns: int | None) -> tuple[dict[str, float], dict[str, float]]:
    """Per-set times (ms), from the first image's arrival (the middleware's reception time) to the outputs:
    ``(times, timing)``: ``times`` every stage below (``~/debug/stage_times_ms``), ``timing`` the Autoware-style
    ``preprocess``, ``inference``, ``postprocess``, ``total`` (from the moment the inference thread took the set:
    ``~/debug/processing_time/*_ms``) with ``overhead`` and ``receive_to_publish``.

    Arguments: the set ``cs`` and its stage ``st``, the detections ``det`` (``timing_ms`` of the detector), the
    wall-clock ns when the inference thread picked the set up (``t_pick``), had it staged, calibrated, detected,
    published the detections and the other outputs (``t_end``), and when it was free of the previous set
    (``free_ns``, None before the first set).

    ``overhead`` = how much later the detections are published than by a node with no cost of its own, which
    would publish ``forward`` after both the set's inputs were in (its last image arrived; a partial set: the
    sync timeout closed it) and the inference thread was free of the previous set: ``publish - forward -
    max(inputs in, thread free)``. It holds the executor's delay in delivering the images and everything the
    inference thread does besides the forward (staging left over, calibration, decoding, publishing), but not
    the waits for the cameras (``transport``) or for the model (``queue``), which a node cannot shorten.
    Camera work done while waiting (staging on arrival) costs nothing here. ``receive_to_publish`` is the whole
    time from the first image's arrival."""
    ms = 1e-6
    first, last = st.first_received_ns or t_pick, st.last_received_ns or t_pick
    ready = getattr(st, "ready_ns", None) or t_pick
    inputs_in = last if cs.complete else max(last, ready)  # a partial set is in when the timeout closed it
    free = min(free_ns or 0, t_pick)
    fwd = det.timing_ms.get("forward", 0.0)
    times = {
        "transport": (last - first) * ms,
        "sync": max(0, ready - last) * ms,
        "queue": max(0, free - inputs_in) * ms,
        "pickup": (t_pick - max(ready, free)) * ms,
        "staging": (t_staged - t_pick) * ms,
        "calibration": getattr(st, "calib_ms", 0.0),
        "forward": fwd,
        "decode": det.timing_ms.get("postprocess", 0.0),
        "detect_other": max(0.0, (t_det - t_calib) * ms - fwd - det.timing_ms.get("postprocess", 0.0)),
        "publish": (t_pub - t_det) * ms,
        "other_outputs": (t_end - t_pub) * ms,
        "receive_to_publish": (t_pub - first) * ms,
    }
    times["overhead"] = (t_pub - max(inputs_in, free)) * ms - fwd
    times["staged_on_arrival"] = float(sum(1 for i in cs.present if not st.staged_by_worker[i]))
    times["calibrated_ahead"] = float(not st.staged_by_worker[st.calib_job])
    pre = times["staging"] + det.timing_ms.get("preprocess", 0.0)
    total = (t_end - t_pick) * ms
    timing = {"preprocess": pre, "inference": fwd, "postprocess": max(0.0, total - pre - fwd), "total": total,
              "overhead": times["overhead"], "receive_to_publish": times["receive_to_publish"]}
    return times, timing
