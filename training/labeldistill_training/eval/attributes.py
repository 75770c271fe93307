"""nuScenes attributes and the default rule that picks one from the class and the speed of a box.

The rule is the one CenterPoint/BEVDepth use when a detector has no attribute head; the synthetic world assigns
its ground-truth attributes with the same rule, so ground truth submitted as results scores mAAE = 0.
"""
from __future__ import annotations

import numpy as np

ATTRIBUTE_NAMES: tuple[str, ...] = (
    "vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
    "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving",
)
"""The eight nuScenes attribute names."""

MOVING_SPEED = 0.2
"""m/s; a box faster than this is 'moving'."""

# class -> (attribute when moving, attribute when not moving); '' = class has no attribute.
DEFAULT_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "car": ("vehicle.moving", "vehicle.parked"),
    "truck": ("vehicle.moving", "vehicle.parked"),
    "construction_vehicle": ("vehicle.moving", "vehicle.parked"),
    "bus": ("vehicle.moving", "vehicle.stopped"),
    "trailer": ("vehicle.moving", "vehicle.parked"),
    "barrier": ("", ""),
    "motorcycle": ("cycle.with_rider", "cycle.without_rider"),
    "bicycle": ("cycle.with_rider", "cycle.without_rider"),
    "pedestrian": ("pedestrian.moving", "pedestrian.standing"),
    "traffic_cone": ("", ""),
}


def default_attribute(name: str, speed: float) -> str:
    """Attribute name for a box of detection class ``name`` moving at ``speed`` m/s ('' for cones/barriers)."""
    moving, still = DEFAULT_ATTRIBUTES[name]
    return moving if float(speed) > MOVING_SPEED else still


def default_attributes(names, velocities) -> list[str]:
    """Vectorised :func:`default_attribute`: names ``(N,)``, velocities ``(N, 2)`` m/s -> ``N`` attribute names."""
    v = np.asarray(velocities, dtype=np.float64).reshape(-1, 2)
    speed = np.nan_to_num(np.hypot(v[:, 0], v[:, 1]))
    return [default_attribute(n, s) for n, s in zip(names, speed)]
