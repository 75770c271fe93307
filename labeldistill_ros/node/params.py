"""Every parameter of the detector node, declared in one place and validated with errors that name the fix.

The table :data:`SPECS` is the single source: the ROS declarations (:func:`declare`), the reading back
(:func:`from_node`), the YAML loader used by tests and tools (:func:`load_params_file`) and the documentation
in ``config/detector.yaml`` / ``docs/node.md`` all follow it. Parameters are read-only at run time (a change
needs a restart: the model, the subscriptions and the synchroniser are built from them).

Units: seconds (``*_s``), milliseconds (``*_ms``); frames are TF frame ids.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

NODE_NAME = "labeldistill_detector"
NUSCENES_CAMERAS = ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK",
                    "CAM_BACK_RIGHT"]


class ParamError(ValueError):
    """A parameter value the node cannot run with; the message names the parameter and the fix."""


@dataclass(frozen=True)
class NodeParams:
    """Validated node parameters (see :data:`SPECS` for the meaning of each)."""

    camera_names: list[str] = field(default_factory=lambda: list(NUSCENES_CAMERAS))
    image_topics: list[str] = field(default_factory=lambda: [f"/{c}/image" for c in NUSCENES_CAMERAS])
    camera_info_topics: list[str] = field(
        default_factory=lambda: [f"/{c}/camera_info" for c in NUSCENES_CAMERAS])
    camera_frames: list[str] = field(default_factory=list)
    image_transport: str = "raw"
    checkpoint: str = ""
    device: str = "auto"
    precision: str = "fp32"
    backend: str = "eager"
    score_threshold: float = 0.3
    max_detections: int = 200
    target_frame: str = "base_link"
    fixed_frame: str = "map"
    sync_slop_s: float = 0.06
    sync_timeout_s: float = 0.5
    missing_camera_policy: str = "skip_camera"
    min_cameras: int = 1
    tf_timeout_s: float = 0.05
    input_reliability: str = "best_effort"
    input_depth: int = 5
    output_reliability: str = "reliable"
    output_depth: int = 10
    publish_objects: bool = False
    publish_markers: bool = True
    marker_lifetime_s: float = 0.25
    marker_text: bool = True
    diagnostics_period_s: float = 1.0
    rate_window_s: float = 5.0
    lag_warn_ratio: float = 0.8
    lag_error_ratio: float = 0.25
    max_processing_time_ms: float = 500.0
    cpu_threads: int = 0

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    def subscribed_image_topics(self) -> list[str]:
        """The image topics actually subscribed (``<topic>/compressed`` with ``image_transport: compressed``)."""
        if self.image_transport == "compressed":
            return [t.rstrip("/") + "/compressed" for t in self.image_topics]
        return list(self.image_topics)


@dataclass(frozen=True)
class Spec:
    """One parameter: its Python type, a check returning an error text (or None), and its description."""

    kind: type  # str, int, float, bool or list (of str)
    description: str
    check: Callable[[Any], str | None] = lambda v: None


def _choice(*options: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {list(options)}"


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[Any], str | None]:
    def check(v):
        if isinstance(v, float) and not math.isfinite(v):
            return "must be a finite number"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
        return None
    return check


def _nonempty_str(v) -> str | None:
    return None if v.strip() else "must not be empty"


def _device(v) -> str | None:
    return None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else "must be auto, cpu, cuda or cuda:N"


_TOPIC = re.compile(r"~?/?[A-Za-z_][A-Za-z0-9_/{}~]*")


def _topics(v) -> str | None:
    bad = [t for t in v if not _TOPIC.fullmatch(t) or "//" in t]
    return f"holds invalid topic names {bad}" if bad else None


def _names(v) -> str | None:
    if not v:
        return "must list at least one camera"
    if len(set(v)) != len(v):
        return "holds duplicate names"
    return None if all(isinstance(n, str) and n.strip() for n in v) else "holds empty names"


SPECS: dict[str, Spec] = {
    "camera_names": Spec(list, "Cameras in the order the model was trained with (nuScenes ring order).",
                         _names),
    "image_topics": Spec(list, "Image topic per camera (sensor_msgs/Image; remappable).", _topics),
    "camera_info_topics": Spec(list, "CameraInfo topic per camera (intrinsics K; latched or streamed).",
                               _topics),
    "camera_frames": Spec(list, "Optional TF frame per camera overriding the images' header.frame_id "
                                "(empty list: use header.frame_id, then CameraInfo's).", lambda v: None),
    "image_transport": Spec(str, "raw (sensor_msgs/Image) | compressed (sensor_msgs/CompressedImage on "
                                 "<image_topic>/compressed, JPEG/PNG).", _choice("raw", "compressed")),
    "checkpoint": Spec(str, "Student checkpoint (.pt) written by labeldistill-train; required (checked as a "
                            "file at start-up)."),
    "device": Spec(str, "auto (cuda if available; a CPU fallback is logged and a diagnostic WARN) | cpu | cuda | "
                        "cuda:N.", _device),
    "precision": Spec(str, "fp32 | fp16 (fp16 on cuda only).", _choice("fp32", "fp16")),
    "backend": Spec(str, "eager | compiled (torch.compile of the parts that pay for it: the image backbone on a CPU, "
                         "every convolutional part on CUDA; compiled and checked against eager during the start-up "
                         "warm-up, then faster sets).",
                    _choice("eager", "compiled")),
    "score_threshold": Spec(float, "Minimum detection score, [0, 1].", _range(0.0, 1.0)),
    "max_detections": Spec(int, "At most this many boxes per set (highest scores).", _range(1)),
    "target_frame": Spec(str, "Frame of the published boxes (x forward, y left, z up).", _nonempty_str),
    "fixed_frame": Spec(str, "World-fixed TF frame (map, or odom without localisation) through which each camera "
                             "is moved from its own stamp to the set's reference stamp (the latest camera's); "
                             "a frame not on TF: static extrinsics, WARN in /diagnostics; '': compensation off.", lambda v: None),
    "sync_slop_s": Spec(float, "Largest stamp spread within one camera set, s (nuScenes: ~42 ms; must be "
                               "below the camera period).", _range(0.0, 10.0, lo_open=True)),
    "sync_timeout_s": Spec(float, "A set still incomplete this long after its first image (receive time) is "
                                  "dropped, or run without the missing cameras (missing_camera_policy), s.",
                           _range(0.0, 60.0, lo_open=True)),
    "missing_camera_policy": Spec(str, "skip_camera (default: run on the cameras present, at least min_cameras; "
                                       "the missing ones are named in /diagnostics) | drop_set (no output "
                                       "while any camera is missing).", _choice("drop_set", "skip_camera")),
    "min_cameras": Spec(int, "skip_camera: fewest cameras a set may have to be run (fewer: the set is dropped).",
                        _range(1)),
    "tf_timeout_s": Spec(float, "How long one camera-to-target TF lookup may wait, s.", _range(0.0, 10.0)),
    "input_reliability": Spec(str, "best_effort (matches drivers and bag playback) | reliable.",
                              _choice("best_effort", "reliable")),
    "input_depth": Spec(int, "History depth of the image and CameraInfo subscriptions.", _range(1)),
    "output_reliability": Spec(str, "reliable | best_effort for detections and markers.",
                               _choice("best_effort", "reliable")),
    "output_depth": Spec(int, "History depth of the outputs.", _range(1)),
    "publish_objects": Spec(bool, "Also publish autoware_perception_msgs/DetectedObjects on ~/output/objects "
                                  "(Autoware labels, twist in the object frame: the velocity that "
                                  "Detection3DArray cannot carry)."),
    "publish_markers": Spec(bool, "Publish visualization_msgs/MarkerArray for RViz."),
    "marker_lifetime_s": Spec(float, "Shortest marker lifetime, s: the markers live max(this, 3 x the measured "
                                     "output period), so they do not blink at low output rates and vanish "
                                     "soon after the output stops (0 = forever; each array's DELETEALL "
                                     "replaces the previous boxes either way).", _range(0.0)),
    "marker_text": Spec(bool, "Add a text label (class and score) above each box."),
    "diagnostics_period_s": Spec(float, "Period of /diagnostics, s.", _range(0.05, 60.0)),
    "rate_window_s": Spec(float, "Window over which /diagnostics compares the sets run with the camera sets "
                                 "formed (lag) and names missing cameras, s (at least one diagnostics period).",
                          _range(0.0, 3600.0, lo_open=True)),
    "lag_warn_ratio": Spec(float, "Diagnostic WARN when fewer than this share of the camera sets is run over "
                                  "rate_window_s (the rest superseded: inference slower than the cameras); "
                                  "0 disables.", _range(0.0, 1.0)),
    "lag_error_ratio": Spec(float, "Diagnostic ERROR below this share (<= lag_warn_ratio; 0 disables).",
                            _range(0.0, 1.0)),
    "max_processing_time_ms": Spec(float, "Processing time above this raises a diagnostic WARN, ms.",
                                   _range(0.0, lo_open=True)),
    "cpu_threads": Spec(int, "torch intra-op CPU threads for this process (0 = torch's default, one per core). "
                             "On a CPU shared with camera drivers 1 is often much faster: parallel kernels "
                             "stall when their threads are preempted.", _range(0)),
}
assert set(SPECS) == {f.name for f in dataclasses.fields(NodeParams)}, "SPECS and NodeParams disagree"

_FIX = "set it in the parameters file (config/detector.yaml) or with --ros-args -p {name}:=<value>"


def _err(name: str, value: Any, why: str) -> ParamError:
    return ParamError(f"parameter '{name}' = {value!r} is invalid: {why}. Fix: {_FIX.format(name=name)}.")


def _coerce(name: str, value: Any) -> Any:
    spec = SPECS[name]
    if spec.kind is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise _err(name, value, "must be a list of strings, e.g. [a, b]")
        if not all(isinstance(v, str) for v in value):
            raise _err(name, value, "must be a list of strings")
        return list(value)
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise _err(name, value, "must be true or false")
        return value
    if spec.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _err(name, value, "must be an integer")
        return value
    if spec.kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _err(name, value, "must be a number")
        return float(value)
    if not isinstance(value, str):
        raise _err(name, value, "must be a string")
    return value


def from_dict(values: dict[str, Any], check_files: bool = True) -> NodeParams:
    """Validate a name -> value mapping (missing names take the defaults) into :class:`NodeParams`.

    Raises :class:`ParamError` for an unknown name, a wrong type, a value out of range, lists of different
    lengths, or (``check_files``) a checkpoint that does not exist.
    """
    unknown = sorted(set(values) - set(SPECS) - {"use_sim_time"})
    if unknown:
        raise ParamError(f"unknown parameter(s) {unknown}: the node has {sorted(SPECS)}. Fix: correct the "
                         f"name in the parameters file (a typo leaves the default in effect silently).")
    defaults = NodeParams()
    kw = {}
    for name, spec in SPECS.items():
        v = _coerce(name, values[name]) if name in values else getattr(defaults, name)
        why = spec.check(v)
        if why:
            raise _err(name, v, why)
        kw[name] = v
    p = NodeParams(**kw)
    n = p.num_cameras
    for name in ("image_topics", "camera_info_topics"):
        if len(getattr(p, name)) != n:
            raise _err(name, getattr(p, name), f"must have one entry per camera in camera_names ({n} cameras)")
    if p.camera_frames and len(p.camera_frames) != n:
        raise _err("camera_frames", p.camera_frames,
                   f"must be empty (use the images' frame ids) or have one entry per camera ({n})")
    if p.sync_timeout_s < p.sync_slop_s:
        raise _err("sync_timeout_s", p.sync_timeout_s, f"must be >= sync_slop_s ({p.sync_slop_s})")
    if p.lag_error_ratio > p.lag_warn_ratio:
        raise _err("lag_error_ratio", p.lag_error_ratio, f"must be <= lag_warn_ratio ({p.lag_warn_ratio})")
    if p.missing_camera_policy == "skip_camera" and p.min_cameras > n:
        raise _err("min_cameras", p.min_cameras, f"must be <= the number of cameras ({n})")
    if p.precision == "fp16" and p.device == "cpu":
        raise _err("precision", p.precision, "fp16 needs device cuda (use fp32 on cpu)")
    if check_files:
        if not p.checkpoint.strip():
            raise _err("checkpoint", p.checkpoint, "is required: the student checkpoint (.pt) to run")
        if not os.path.isfile(os.path.expanduser(p.checkpoint)):
            raise _err("checkpoint", p.checkpoint, "no such file (pass checkpoint:=/path/student.pt)")
    return p


def load_params_file(path: str | os.PathLike, node_name: str = NODE_NAME, overrides: dict | None = None,
                     check_files: bool = True) -> NodeParams:
    """Read a ROS 2 parameters YAML (``/**:`` or ``<node_name>:`` → ``ros__parameters``) and validate it."""
    with open(path) as fh:
        doc = yaml.safe_load(fh) or {}
    values: dict[str, Any] = {}
    for key in ("/**", node_name, "/" + node_name):
        section = doc.get(key)
        if isinstance(section, dict):
            values.update(section.get("ros__parameters") or {})
    if not values and doc:
        raise ParamError(f"{path}: no '/**:' or '{node_name}:' section with 'ros__parameters:'. Fix: use the "
                         f"layout of the shipped config/detector.yaml.")
    values.update(overrides or {})
    return from_dict(values, check_files=check_files)


# ---------------------------------------------------------------------------------------------------------------
# rclpy
# ---------------------------------------------------------------------------------------------------------------
def declare(node) -> None:
    """Declare every parameter on ``node`` (read-only, documented, default from :class:`NodeParams`).

    Types are checked by :func:`from_node` (dynamic typing here), so ``tf_timeout_s: 1`` in a YAML works and a
    wrong type gets this module's message instead of rclpy's.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    defaults = NodeParams()
    for name, spec in SPECS.items():
        desc = ParameterDescriptor(description=spec.description, read_only=True, dynamic_typing=True)
        node.declare_parameter(name, getattr(defaults, name), desc)


def from_node(node, check_files: bool = True) -> NodeParams:
    """Read the declared parameters back from ``node`` and validate them (raises :class:`ParamError`)."""
    values = {}
    for name in SPECS:
        v = node.get_parameter(name).value
        if v is None:  # not set: rcl reads an empty YAML list `[]` this way
            continue
        if SPECS[name].kind is list:
            v = list(v)
        values[name] = v
    return from_dict(values, check_files=check_files)
