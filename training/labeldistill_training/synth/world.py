"""Scenes of the synthetic world: a straight urban road, a moving ego car and actors of the ten classes.

Road frame (per scene, metres): x along the road, y to the left, z up, ground at z = 0. Layout across the road::

    |y| < 7.0     four driving lanes, centres at -5.25, -1.75 (traffic towards +x) and 1.75, 5.25 (towards -x)
    7.0..8.5      parking / bus-stop strip (the kerb-side lane), kerb at |y| = 8.5
    8.5..12       sidewalks (pedestrians, parked two-wheelers, barriers at the kerb)
    > 12          open ground (construction vehicles, parked trailers, work zones)

The ego drives along +x in a right-hand lane at constant speed (or stands still), heading 0 in the road frame, so
directions in the road frame equal directions in the ego frame. Each scene maps the road frame into the global
frame with a random heading and offset. Actors move at constant velocity (lane traffic, cyclists, walking and
crossing pedestrians) or are static (parked vehicles, standing pedestrians, cones, barriers); placements are
rejection-sampled so that no two actors (nor an actor and the ego) ever overlap during the scene. Every scene
holds at least one actor of each class near the ego, so every split scores all ten classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labeldistill_ros import geometry as geo

from ..eval.attributes import default_attribute
from .cameras import CameraSpec, LidarSpec, camera_rig, lidar_rig
from .classes import CLASS_SPECS, Parts, make_parts, sample_size
from .config import SynthConfig

KEY_INTERVAL_S = 0.5
"""Key frames are at 2 Hz, like nuScenes."""

LANE_Y = (-5.25, -1.75, 1.75, 5.25)
PARKING_Y = 7.4
KERB_Y = 8.5
SIDEWALK_Y = (9.0, 11.6)
OFFROAD_Y = (13.5, 22.0)
ANNOTATION_RANGE = 65.0
"""Actors are annotated in a key frame when their centre is within this xy distance (m) of the ego."""

# Ground surface codes of :func:`road_surface`.
SURF_ASPHALT, SURF_MARKING, SURF_CENTRE_LINE, SURF_KERB, SURF_SIDEWALK, SURF_GRASS = range(6)

LOCATIONS = ("singapore-onenorth", "boston-seaport", "singapore-queenstown", "singapore-hollandvillage")

# Extra-actor class frequencies (roughly nuScenes-like, with the rare classes boosted).
_EXTRA_WEIGHTS = {
    "car": 0.30, "pedestrian": 0.18, "barrier": 0.10, "traffic_cone": 0.10, "truck": 0.07, "bicycle": 0.05,
    "motorcycle": 0.05, "bus": 0.05, "trailer": 0.04, "construction_vehicle": 0.04,
}
# Placement slots per class with probabilities.
_SLOTS = {
    "car": {"lane": 0.65, "parking": 0.35},
    "truck": {"lane": 0.5, "parking": 0.5},
    "bus": {"lane": 0.6, "parking": 0.4},
    "trailer": {"parking": 0.6, "offroad": 0.4},
    "construction_vehicle": {"offroad": 0.8, "parking": 0.2},
    "pedestrian": {"walk": 0.55, "stand": 0.3, "cross": 0.15},
    "motorcycle": {"lane": 0.6, "sidewalk_parked": 0.4},
    "bicycle": {"bikelane": 0.5, "sidewalk_parked": 0.5},
    "traffic_cone": {"lane_edge": 0.6, "sidewalk": 0.15, "offroad": 0.25},
    "barrier": {"kerb": 0.65, "offroad": 0.35},
}
# Max distance (m) from the ego at mid-scene of the one guaranteed actor per class.
_NEAR_RANGE = {
    "car": 28.0, "truck": 32.0, "bus": 32.0, "trailer": 32.0, "construction_vehicle": 32.0,
    "pedestrian": 20.0, "motorcycle": 22.0, "bicycle": 22.0, "traffic_cone": 16.0, "barrier": 16.0,
}


@dataclass
class Actor:
    """One object of the scene (constant velocity in the road frame).

    Attributes:
        name: detection class name; category: nuScenes category name.
        lwh: ``(3,)`` box extents (m). yaw: heading in the road frame (rad).
        p0: ``(2,)`` box centre xy at scene time 0 (road frame, m). vel: ``(2,)`` velocity (road frame, m/s).
        attribute: nuScenes attribute name ('' for cones and barriers).
        parts: cuboid parts (shape and looks).
    """

    name: str
    category: str
    lwh: np.ndarray
    yaw: float
    p0: np.ndarray
    vel: np.ndarray
    attribute: str
    parts: Parts


@dataclass
class SceneLook:
    """Scene-wide appearance: lighting, colours (RGB in [0, 1]) and camera imperfections."""

    sun_dir: np.ndarray  # (3,) unit vector towards the sun in the road/ego frame
    ambient: float
    exposure: float
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    asphalt: np.ndarray
    sidewalk: np.ndarray
    grass: np.ndarray
    marking: np.ndarray
    noise_sigma: float  # image noise, in 8-bit grey levels
    blur: bool
    haze_m: float  # distance at which haze reaches 63 %


@dataclass
class Scene:
    """One scene: ego motion, actors, sensors, timing and looks.

    Attributes:
        index: scene index in the dataset; name: scene name.
        road2global: ``(4, 4)`` road frame -> global.
        ego_y: ego lateral position in the road frame (m); ego_speed: m/s along +x; ego x at t = 0 is 0.
        key_times: ``(K,)`` key-frame times (s from scene start); sweep_times: ``(S,)`` non-key LiDAR times.
        start_us: timestamp (microseconds) of scene time 0.
        actors: the actors; cameras, lidar: calibrated sensors of this scene's log.
        look: appearance; location, vehicle, logfile, date: log fields; seed: master seed.
    """

    index: int
    name: str
    road2global: np.ndarray
    ego_y: float
    ego_speed: float
    key_times: np.ndarray
    sweep_times: np.ndarray
    start_us: int
    actors: list[Actor]
    cameras: list[CameraSpec]
    lidar: LidarSpec
    look: SceneLook
    location: str
    vehicle: str
    logfile: str
    date: str
    seed: int = 0

    def timestamp_us(self, t: float) -> int:
        """Microsecond timestamp of scene time ``t`` (s)."""
        return int(self.start_us + round(t * 1e6))

    def ego_x(self, t: float) -> float:
        """Ego x in the road frame at time ``t`` (m)."""
        return self.ego_speed * t

    def ego2global(self, t: float) -> np.ndarray:
        """``(4, 4)`` ego -> global at time ``t`` (the ego heads +x of the road frame, z = 0)."""
        return self.road2global @ geo.make_transform(np.eye(3), [self.ego_x(t), self.ego_y, 0.0])

    def boxes_road(self, t: float) -> np.ndarray:
        """``(N, 9)`` actor boxes in the road frame at time ``t`` (centre z = h / 2)."""
        out = np.zeros((len(self.actors), 9))
        for i, a in enumerate(self.actors):
            out[i, :2] = a.p0 + a.vel * t
            out[i, 2] = a.lwh[2] / 2
            out[i, 3:6] = a.lwh
            out[i, 6] = a.yaw
            out[i, 7:9] = a.vel
        return out

    def boxes_ego(self, t: float) -> np.ndarray:
        """``(N, 9)`` actor boxes in the ego frame at time ``t`` (velocities are absolute, in ego axes)."""
        b = self.boxes_road(t)
        b[:, 0] -= self.ego_x(t)
        b[:, 1] -= self.ego_y
        return b

    def annotated(self, t: float) -> np.ndarray:
        """``(N,)`` bool: actor is annotated at time ``t`` (within :data:`ANNOTATION_RANGE` of the ego)."""
        b = self.boxes_ego(t)
        return np.hypot(b[:, 0], b[:, 1]) < ANNOTATION_RANGE


def road_surface(xr: np.ndarray, yr: np.ndarray) -> np.ndarray:
    """Ground surface code (``SURF_*``, int8) at road-frame points ``xr, yr`` (m), any equal shapes.

    Dashed white lane lines at |y| = 3.5 (3 m dash, 9 m period), solid white edge lines at |y| = 7.0, a double
    yellow centre line at |y| = 0.14, kerb stones from 8.5 to 8.75, sidewalk to 12 m, grass beyond.
    """
    ay = np.abs(yr)
    out = np.full(np.shape(ay), SURF_ASPHALT, dtype=np.int8)
    out[ay >= KERB_Y] = SURF_KERB
    out[ay >= KERB_Y + 0.25] = SURF_SIDEWALK
    out[ay >= 12.0] = SURF_GRASS
    out[((np.abs(ay - 3.5) < 0.075) & (np.mod(xr, 9.0) < 3.0)) | (np.abs(ay - 7.0) < 0.08)] = SURF_MARKING
    out[np.abs(ay - 0.14) < 0.06] = SURF_CENTRE_LINE
    return out


# ----------------------------------------------------------------------------------------------------------------
# Placement
# ----------------------------------------------------------------------------------------------------------------
def _rect_overlap_any(c, yaw, half, C, YAW, HALF) -> np.ndarray:
    """Separating-axis test of one rectangle against A others over T time steps.

    Args:
        c: ``(T, 2)`` centres of the candidate; yaw: float; half: ``(2,)`` half length/width.
        C: ``(A, T, 2)`` centres of the others; YAW: ``(A,)``; HALF: ``(A, 2)``.
    Returns:
        ``(A,)`` bool: overlap at any time step.
    """
    u1 = np.array([np.cos(yaw), np.sin(yaw)])
    v1 = np.array([-np.sin(yaw), np.cos(yaw)])
    U2 = np.stack([np.cos(YAW), np.sin(YAW)], axis=1)  # (A, 2)
    V2 = np.stack([-np.sin(YAW), np.cos(YAW)], axis=1)
    d = C - c[None]  # (A, T, 2)
    separated = np.zeros(d.shape[:2], dtype=bool)
    for ax in (np.broadcast_to(u1, U2.shape), np.broadcast_to(v1, U2.shape), U2, V2):  # (A, 2)
        dist = np.abs(np.einsum("atk,ak->at", d, ax))
        r = (half[0] * np.abs(ax @ u1) + half[1] * np.abs(ax @ v1)
             + HALF[:, 0] * np.abs(np.sum(U2 * ax, axis=1)) + HALF[:, 1] * np.abs(np.sum(V2 * ax, axis=1)))
        separated |= dist > r[:, None]
    return np.any(~separated, axis=1)


def _choose(rng: np.random.Generator, probs: dict[str, float]) -> str:
    keys = list(probs)
    p = np.array([probs[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _slot_pose(slot: str, rng: np.random.Generator, lane_speed: dict[float, float]):
    """Lateral position, heading, speed along the heading and rider flag for a placement slot (road frame)."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    if slot == "lane":
        lanes = [y for y, s in lane_speed.items() if s > 0]
        y = lanes[int(rng.integers(len(lanes)))]
        yaw = 0.0 if y < 0 else np.pi
        return y + rng.normal(0, 0.12), yaw + rng.normal(0, 0.01), lane_speed[y], True
    if slot == "bikelane":
        y = -side * 6.95
        return y + rng.normal(0, 0.1), (0.0 if y < 0 else np.pi), rng.uniform(3.0, 6.0), True
    if slot == "parking":
        y = side * PARKING_Y
        return y + rng.normal(0, 0.12), (0.0 if y < 0 else np.pi) + rng.normal(0, 0.04), 0.0, False
    if slot == "walk":
        y = side * rng.uniform(*SIDEWALK_Y)
        return y, (0.0 if rng.random() < 0.5 else np.pi) + rng.normal(0, 0.05), rng.uniform(1.0, 1.7), True
    if slot == "stand":
        return side * rng.uniform(*SIDEWALK_Y), rng.uniform(-np.pi, np.pi), 0.0, False
    if slot == "cross":
        return rng.uniform(-KERB_Y, KERB_Y), side * np.pi / 2 + rng.normal(0, 0.05), rng.uniform(1.0, 1.6), True
    if slot == "sidewalk_parked":
        return side * rng.uniform(9.3, 11.2), side * np.pi / 2 + rng.normal(0, 0.3), 0.0, False
    if slot == "sidewalk":
        return side * rng.uniform(*SIDEWALK_Y), rng.uniform(-np.pi, np.pi), 0.0, False
    if slot == "lane_edge":
        y = side * (3.5 if rng.random() < 0.5 else 7.0)
        return y + rng.normal(0, 0.15), rng.uniform(-np.pi, np.pi), 0.0, False
    if slot == "kerb":
        return side * rng.uniform(8.2, 8.8), np.pi / 2 + rng.normal(0, 0.04), 0.0, False
    if slot == "offroad":
        return side * rng.uniform(*OFFROAD_Y), rng.uniform(-np.pi, np.pi), 0.0, False
    raise ValueError(slot)


class _Placer:
    """Rejection sampler that keeps actor footprints disjoint over the whole scene."""

    MARGIN = 0.25  # m added to every half extent

    def __init__(self, times: np.ndarray, ego_y: float, ego_speed: float):
        self.times = times
        # The ego as a rectangle: centre 1.35 m ahead of the rear axle, 4.7 x 1.9 m plus 1 m clearance.
        ego_c = np.stack([ego_speed * times + 1.35, np.full_like(times, ego_y)], axis=1)
        self.C = [ego_c]
        self.YAW = [0.0]
        self.HALF = [np.array([2.35 + 1.0, 0.95 + 0.6])]

    def try_add(self, p0: np.ndarray, vel: np.ndarray, yaw: float, lwh: np.ndarray) -> bool:
        c = p0[None] + vel[None] * self.times[:, None]
        half = lwh[:2] / 2 + self.MARGIN
        if np.any(_rect_overlap_any(c, yaw, half, np.stack(self.C), np.array(self.YAW), np.stack(self.HALF))):
            return False
        self.C.append(c)
        self.YAW.append(yaw)
        self.HALF.append(half)
        return True


def _place_actor(name: str, rng: np.random.Generator, placer: _Placer, lane_speed: dict[float, float],
                 t_mid: float, ego_mid: np.ndarray, near: float | None, tries: int = 40) -> Actor | None:
    """Try to place one actor of class ``name``; ``near`` (m) forces it within that distance at mid-scene."""
    spec = CLASS_SPECS[name]
    for _ in range(tries):
        slot = _choose(rng, _SLOTS[name])
        y, yaw, speed, moving_slot = _slot_pose(slot, rng, lane_speed)
        with_rider = name in ("motorcycle", "bicycle") and moving_slot
        span = near if near is not None else 45.0
        x_mid = ego_mid[0] + rng.uniform(-span, span)
        dist = np.hypot(x_mid - ego_mid[0], y - ego_mid[1])
        if near is not None and not (4.0 < dist < near):
            continue
        if near is None and dist > 55.0:
            continue
        vel = speed * np.array([np.cos(yaw), np.sin(yaw)])
        p0 = np.array([x_mid, y]) - vel * t_mid
        lwh = sample_size(name, rng, with_rider=with_rider)
        if not placer.try_add(p0, vel, yaw, lwh):
            continue
        weights = np.array([0.9] + [0.1 / max(1, len(spec.categories) - 1)] * (len(spec.categories) - 1))
        category = spec.categories[int(rng.choice(len(spec.categories), p=weights / weights.sum()))]
        attribute = default_attribute(name, float(np.hypot(*vel)))
        parts = make_parts(name, lwh, rng, with_rider=with_rider)
        return Actor(name, category, lwh, float(geo.wrap_angle(yaw)), p0, vel, attribute, parts)
    return None


def _make_look(rng: np.random.Generator) -> SceneLook:
    az, el = rng.uniform(-np.pi, np.pi), np.deg2rad(rng.uniform(25, 70))
    sun = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    tint = rng.uniform(-0.04, 0.04, 3)
    grey = rng.uniform(0.28, 0.40)
    return SceneLook(
        sun_dir=sun,
        ambient=float(rng.uniform(0.45, 0.6)),
        exposure=float(rng.uniform(0.8, 1.1)),
        sky_top=np.clip(np.array([0.35, 0.55, 0.85]) + tint, 0, 1),
        sky_horizon=np.clip(np.array([0.78, 0.84, 0.9]) + tint, 0, 1),
        asphalt=np.array([grey, grey, grey * 1.03]),
        sidewalk=np.clip(np.array([0.62, 0.6, 0.56]) + tint, 0, 1),
        grass=np.clip(np.array([0.33, 0.45, 0.22]) + tint, 0, 1),
        marking=np.array([0.92, 0.92, 0.9]),
        noise_sigma=float(rng.uniform(1.5, 5.0)),
        blur=bool(rng.random() < 0.3),
        haze_m=float(rng.uniform(250.0, 600.0)),
    )


def make_scene(config: SynthConfig, seed: int, index: int) -> Scene:
    """Build scene ``index`` of the dataset with master ``seed`` (independent of the other scenes).

    Args:
        config: dataset size preset (frames, sweeps, image size, actor count).
        seed: master seed; the scene draws from ``default_rng([seed, index, .])`` so scenes can be built in any order
            or in parallel and stay identical.
        index: scene index.
    """
    rng = np.random.default_rng([int(seed), int(index), 0])
    n_key = config.key_frames_per_scene
    key_times = np.arange(n_key) * KEY_INTERVAL_S
    sw = config.sweeps_between_keys
    sweep_times = np.array([k * KEY_INTERVAL_S + j * KEY_INTERVAL_S / (sw + 1)
                            for k in range(n_key - 1) for j in range(1, sw + 1)])
    duration = float(key_times[-1])

    ego_y = float(LANE_Y[int(rng.integers(2))])
    ego_speed = 0.0 if rng.random() < 0.15 else float(rng.uniform(2.0, 10.0))
    lane_speed = {y: float(rng.uniform(3.0, 12.0)) for y in LANE_Y}
    lane_speed[ego_y] = ego_speed  # traffic in the ego lane flows with the ego (none if the ego stands)

    heading = float(rng.uniform(-np.pi, np.pi))
    offset = rng.uniform(300.0, 1800.0, 2)
    road2global = geo.make_transform(geo.yaw_to_quat(heading), [offset[0], offset[1], 0.0])

    times = np.arange(0.0, duration + 1e-9, 0.1)
    placer = _Placer(times, ego_y, ego_speed)
    t_mid = duration / 2
    ego_mid = np.array([ego_speed * t_mid, ego_y])
    actors: list[Actor] = []
    names = list(CLASS_SPECS)
    for name in names:  # one guaranteed actor of every class near the ego
        a = _place_actor(name, rng, placer, lane_speed, t_mid, ego_mid, near=_NEAR_RANGE[name], tries=200)
        if a is not None:
            actors.append(a)
    w = np.array([_EXTRA_WEIGHTS[n] for n in names])
    for _ in range(config.actors_per_scene - len(actors)):
        name = names[int(rng.choice(len(names), p=w / w.sum()))]
        a = _place_actor(name, rng, placer, lane_speed, t_mid, ego_mid, near=None)
        if a is not None:
            actors.append(a)

    day = int(rng.integers(1, 29))
    hh, mm, ss_ = int(rng.integers(8, 18)), int(rng.integers(60)), int(rng.integers(60))
    location = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
    vehicle = "n008" if location.startswith("boston") else "n015"
    tz = "-0400" if location.startswith("boston") else "+0800"
    date = f"2018-08-{day:02d}"
    logfile = f"{vehicle}-{date}-{hh:02d}-{mm:02d}-{ss_:02d}{tz}"
    start_us = int(1533081600_000000 + (day * 86400 + hh * 3600 + mm * 60 + ss_) * 1_000_000
                   + int(rng.integers(1_000_000)))
    calib_rng = np.random.default_rng([int(seed), int(index), 1])
    return Scene(
        index=index,
        name=f"synth-{index:04d}",
        road2global=road2global,
        ego_y=ego_y,
        ego_speed=ego_speed,
        key_times=key_times,
        sweep_times=sweep_times,
        start_us=start_us,
        actors=actors,
        cameras=camera_rig(config.image_width, config.image_height, calib_rng),
        lidar=lidar_rig(config.lidar_azimuth_steps, calib_rng),
        look=_make_look(rng),
        location=location,
        vehicle=vehicle,
        logfile=logfile,
        date=date,
        seed=int(seed),
    )


def frame_rng(scene: Scene, *keys: int) -> np.random.Generator:
    """A generator for one sensor frame of ``scene`` (keys e.g. (frame kind, frame index, sensor index)),
    independent of how many other frames were drawn before."""
    return np.random.default_rng([scene.seed, int(scene.index), 2] + [int(k) for k in keys])
