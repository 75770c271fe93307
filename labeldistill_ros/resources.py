"""Locate files the package installs to ``share/labeldistill_ros`` (configs, DDS profiles, launch, RViz).

Works from a source checkout or editable install (the repository's folders), from a wheel or pip install
(``<prefix>/share/labeldistill_ros``) and from a colcon install (ament index), in that order.
"""
from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "labeldistill_ros"


def share_dir() -> Path:
    """The folder holding ``config/`` and ``launch/`` for this installation."""
    source = Path(__file__).resolve().parents[1]
    if (source / "package.xml").is_file() and (source / "config").is_dir():
        return source
    prefixed = Path(sys.prefix) / "share" / PACKAGE
    if prefixed.is_dir():
        return prefixed
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except Exception as exc:  # noqa: BLE001 - any lookup failure means "not installed"
        raise FileNotFoundError(
            f"cannot find share/{PACKAGE}: not a source checkout, not under {sys.prefix}/share, and the "
            f"ament index lookup failed ({exc}). Reinstall the package (pip install -e . or colcon build)."
        ) from exc


def share_file(*parts: str) -> Path:
    """A file under the share folder, e.g. ``share_file('config', 'detector.yaml')``; raises if missing."""
    path = share_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (package data '{'/'.join(parts)}')")
    return path
