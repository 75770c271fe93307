"""A ``rosbags`` typestore for ROS 2 Kilted with vision_msgs (and autoware_perception_msgs) registered.

rosbags ships the standard interfaces (sensor_msgs, tf2_msgs, visualization_msgs, std_msgs, rosgraph_msgs)
but not vision_msgs or autoware_perception_msgs. Their definitions are read from the ``.msg`` files of, in this
order:

1. an installed package (``<prefix>/share/<package>/msg`` for this Python prefix, then every prefix on
   ``AMENT_PREFIX_PATH``) - the definitions the running rclpy uses, so the type hashes recorded in a bag match
   what the node publishes;
2. the repository's ``interfaces/<package>/msg`` (source checkout without a built interface package).

vision_msgs is required; autoware_perception_msgs (the node's optional ``~/output/objects``) is registered when
found. The result is cached per process (building it parses ~20 files, a few ms).
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

VISION_MSGS = "vision_msgs"
AUTOWARE_PERCEPTION_MSGS = "autoware_perception_msgs"


def interface_dirs(package: str) -> list[Path]:
    """Candidate folders holding ``package``'s ``*.msg`` files, best first (existing ones only)."""
    cands = [Path(sys.prefix) / "share" / package / "msg"]
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        cands.append(Path(prefix) / "share" / package / "msg")
    cands.append(Path(__file__).resolve().parents[2] / "interfaces" / package / "msg")
    seen, out = set(), []
    for c in cands:
        if c.is_dir() and any(c.glob("*.msg")) and c.resolve() not in seen:
            seen.add(c.resolve())
            out.append(c)
    return out


def vision_msgs_dirs() -> list[Path]:
    """Candidate folders holding vision_msgs ``*.msg`` files, best first (existing ones only)."""
    return interface_dirs(VISION_MSGS)


def interface_types(package: str, msg_dir: Path | None = None) -> dict:
    """Parsed definitions ``{'<package>/msg/Name': fields}`` from ``msg_dir`` (default: the first of
    :func:`interface_dirs`); FileNotFoundError when there is none."""
    if msg_dir is None:
        dirs = interface_dirs(package)
        if not dirs:
            raise FileNotFoundError(
                f"{package} .msg definitions not found: looked in <prefix>/share/{package}/msg, "
                f"$AMENT_PREFIX_PATH and the repository's interfaces/{package}/msg. Install {package} "
                f"(a ROS install, or tools/setup_env.py here)."
            )
        msg_dir = dirs[0]
    types: dict = {}
    for f in sorted(Path(msg_dir).glob("*.msg")):
        types.update(get_types_from_msg(f.read_text(), f"{package}/msg/{f.stem}"))
    return types


def vision_msgs_types(msg_dir: Path | None = None) -> dict:
    """Parsed vision_msgs definitions ``{'vision_msgs/msg/Name': fields}`` from ``msg_dir`` (default: the
    first of :func:`vision_msgs_dirs`)."""
    return interface_types(VISION_MSGS, msg_dir)


@functools.lru_cache(maxsize=None)
def typestore() -> Typestore:
    """The ROS 2 Kilted typestore plus vision_msgs and, where found, autoware_perception_msgs (cached; treat it as
    read-only)."""
    ts = get_typestore(Stores.ROS2_KILTED)
    ts.register(vision_msgs_types())
    if interface_dirs(AUTOWARE_PERCEPTION_MSGS):
        ts.register(interface_types(AUTOWARE_PERCEPTION_MSGS))
    return ts
