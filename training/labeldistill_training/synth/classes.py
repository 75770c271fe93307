"""The ten detection classes of the synthetic world: nuScenes categories, size distributions, shapes and looks.

Every actor is drawn as a few axis-aligned cuboid *parts* in its own frame (x forward along the heading, y left,
z up from the ground), all inside the actor's ground-truth box, so the box is tight in every extent and the
LiDAR and the cameras see the same solid. Shapes and colour families differ per class so that a small camera
model can tell them apart (e.g. cars: body + glass cabin; buses: one long box with a window band; cones: orange
with a white band; barriers: red/white stripes; construction vehicles: yellow with an arm).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Texture ids of a part (procedural, evaluated per pixel by the renderer in face coordinates).
TEX_PLAIN = 0
TEX_LOWER_BAND = 1  # darker bottom 30 % of vertical faces (wheels, bumpers)
TEX_WINDOWS = 2  # dark glass band on vertical faces between 45 % and 85 % of the height
TEX_STRIPES = 3  # alternating colour/alt colour stripes along the horizontal face axis, 0.5 m period
TEX_BAND = 4  # alt-colour band between 45 % and 65 % of the height (cones)


@dataclass(frozen=True)
class ClassSpec:
    """Size distribution and nuScenes category of one detection class.

    Attributes:
        name: detection name (one of ``geometry.CLASS_NAMES``).
        categories: nuScenes category names this class is written as (first = most common).
        mean_lwh, std_lwh: metres; sizes are drawn from N(mean, std) clipped to +-2 std.
        max_range: the nuScenes evaluation range of the class (m).
    """

    name: str
    categories: tuple[str, ...]
    mean_lwh: tuple[float, float, float]
    std_lwh: tuple[float, float, float]
    max_range: float


CLASS_SPECS: dict[str, ClassSpec] = {
    s.name: s
    for s in (
        ClassSpec("car", ("vehicle.car",), (4.63, 1.95, 1.73), (0.35, 0.12, 0.15), 50.0),
        ClassSpec("truck", ("vehicle.truck",), (6.94, 2.52, 2.84), (1.0, 0.18, 0.3), 50.0),
        ClassSpec("construction_vehicle", ("vehicle.construction",), (6.37, 2.85, 3.19), (0.7, 0.2, 0.3), 50.0),
        ClassSpec("bus", ("vehicle.bus.rigid", "vehicle.bus.bendy"), (11.0, 2.94, 3.47), (1.0, 0.1, 0.2), 50.0),
        ClassSpec("trailer", ("vehicle.trailer",), (10.0, 2.90, 3.60), (1.8, 0.12, 0.35), 50.0),
        ClassSpec("barrier", ("movable_object.barrier",), (0.50, 2.53, 0.98), (0.08, 0.25, 0.06), 30.0),
        ClassSpec("motorcycle", ("vehicle.motorcycle",), (2.11, 0.77, 1.47), (0.15, 0.08, 0.1), 40.0),
        ClassSpec("bicycle", ("vehicle.bicycle",), (1.70, 0.60, 1.28), (0.12, 0.06, 0.1), 40.0),
        ClassSpec("pedestrian", ("human.pedestrian.adult", "human.pedestrian.construction_worker",
                                 "human.pedestrian.child"), (0.73, 0.67, 1.77), (0.1, 0.08, 0.12), 40.0),
        ClassSpec("traffic_cone", ("movable_object.trafficcone",), (0.41, 0.41, 1.07), (0.05, 0.05, 0.1), 30.0),
    )
}
"""Per detection class: categories, sizes (nuScenes means) and evaluation range."""


@dataclass
class Parts:
    """Cuboid parts of one actor in its own frame (x along the heading, z up from the ground).

    Attributes (P = number of parts):
        centre: ``(P, 3)`` part centres (m) relative to the box's ground-level centre; z measured from the ground.
        size: ``(P, 3)`` part extents (l, w, h) in metres.
        side: ``(P, 3)`` RGB in [0, 1] of vertical faces.
        top: ``(P, 3)`` RGB of the top/bottom faces.
        alt: ``(P, 3)`` RGB of the texture's second colour.
        texture: ``(P,)`` int texture id (``TEX_*``).
        reflectivity: ``(P,)`` LiDAR reflectivity in [0, 255].
    """

    centre: np.ndarray
    size: np.ndarray
    side: np.ndarray
    top: np.ndarray
    alt: np.ndarray
    texture: np.ndarray
    reflectivity: np.ndarray


def _rgb(*c: int) -> np.ndarray:
    return np.array(c, dtype=np.float64) / 255.0


GLASS = _rgb(38, 46, 58)
DARK = _rgb(28, 28, 30)
WHITE = _rgb(235, 235, 230)
CAR_COLOURS = [_rgb(30, 70, 160), _rgb(170, 30, 35), _rgb(175, 178, 182), _rgb(60, 62, 68), _rgb(225, 225, 220),
               _rgb(30, 95, 60), _rgb(90, 40, 110)]
TRUCK_CAB = [_rgb(230, 230, 225), _rgb(40, 80, 170), _rgb(180, 35, 30)]
TRUCK_BOX = [_rgb(215, 205, 180), _rgb(200, 200, 205), _rgb(170, 175, 160)]
BUS_COLOURS = [_rgb(200, 40, 40), _rgb(40, 110, 190), _rgb(235, 235, 235), _rgb(40, 150, 90)]
TRAILER_COLOURS = [_rgb(120, 130, 140), _rgb(150, 60, 40), _rgb(70, 90, 120), _rgb(190, 190, 195)]
YELLOW = _rgb(235, 180, 20)
SHIRTS = [_rgb(200, 60, 50), _rgb(50, 90, 180), _rgb(230, 230, 230), _rgb(40, 40, 45), _rgb(80, 150, 80),
          _rgb(240, 200, 60), _rgb(120, 80, 160)]
PANTS = [_rgb(40, 50, 80), _rgb(30, 30, 35), _rgb(110, 100, 90), _rgb(70, 70, 75)]
SKIN = [_rgb(230, 190, 160), _rgb(180, 130, 100), _rgb(120, 80, 60)]
MOTO_COLOURS = [_rgb(20, 20, 22), _rgb(160, 20, 20), _rgb(220, 220, 225)]
BIKE_COLOURS = [_rgb(20, 140, 140), _rgb(30, 120, 60), _rgb(140, 140, 30)]
CONE = _rgb(245, 110, 20)
BARRIER_RED = _rgb(200, 30, 30)


def _pick(rng: np.random.Generator, options: list[np.ndarray]) -> np.ndarray:
    return options[int(rng.integers(len(options)))]


def _parts(rows: list[tuple], lwh: np.ndarray) -> Parts:
    """Build :class:`Parts` from rows (x0, x1, y_frac, z0, z1, side, top, alt, texture, refl) in fractions of
    (l, w, h): x from x0*l to x1*l (box spans -0.5..0.5), full width times y_frac, z from z0*h to z1*h."""
    l, w, h = lwh
    centre, size, side, top, alt, tex, refl = [], [], [], [], [], [], []
    for x0, x1, yf, z0, z1, s, t, a, tx, rf in rows:
        centre.append(((x0 + x1) / 2 * l, 0.0, (z0 + z1) / 2 * h))
        size.append(((x1 - x0) * l, yf * w, (z1 - z0) * h))
        side.append(s)
        top.append(t)
        alt.append(a)
        tex.append(tx)
        refl.append(rf)
    return Parts(np.array(centre), np.array(size), np.array(side), np.array(top), np.array(alt),
                 np.array(tex, dtype=np.int64), np.array(refl, dtype=np.float64))


def make_parts(name: str, lwh: np.ndarray, rng: np.random.Generator, with_rider: bool = False) -> Parts:
    """Shape and colours of one actor of class ``name`` with box extents ``lwh`` (m).

    Args:
        name: detection class name.
        lwh: ``(3,)`` box length, width, height in metres.
        rng: random generator (colour choices).
        with_rider: for bicycles/motorcycles, add a rider on the frame.
    Returns:
        The actor's :class:`Parts`; the union of the parts spans exactly ``lwh``.
    """
    P, T, B, S, BD = TEX_PLAIN, TEX_LOWER_BAND, TEX_WINDOWS, TEX_STRIPES, TEX_BAND
    if name == "car":
        c = _pick(rng, CAR_COLOURS)
        rows = [(-0.5, 0.5, 1.0, 0.0, 0.56, c, c, DARK, T, 60.0),
                (-0.32, 0.22, 0.88, 0.56, 1.0, GLASS, c, GLASS, P, 15.0)]
    elif name == "truck":
        cab, box = _pick(rng, TRUCK_CAB), _pick(rng, TRUCK_BOX)
        rows = [(0.27, 0.5, 1.0, 0.0, 0.78, cab, cab, GLASS, B, 55.0),
                (-0.5, 0.25, 1.0, 0.22, 1.0, box, box, box, P, 70.0),
                (-0.48, 0.25, 0.75, 0.0, 0.22, DARK, DARK, DARK, P, 20.0)]
    elif name == "bus":
        c = _pick(rng, BUS_COLOURS)
        rows = [(-0.5, 0.5, 1.0, 0.0, 1.0, c, _rgb(200, 200, 200), GLASS, B, 65.0)]
    elif name == "trailer":
        c = _pick(rng, TRAILER_COLOURS)
        rows = [(-0.5, 0.42, 1.0, 0.3, 1.0, c, c, c, P, 70.0),
                (-0.46, 0.3, 0.8, 0.0, 0.3, DARK, DARK, DARK, P, 20.0),
                (0.42, 0.5, 0.25, 0.22, 0.32, DARK, DARK, DARK, P, 20.0)]
    elif name == "construction_vehicle":
        dark_y = YELLOW * 0.8
        rows = [(-0.5, 0.18, 1.0, 0.0, 0.45, YELLOW, YELLOW, DARK, T, 80.0),
                (-0.38, 0.02, 0.8, 0.45, 1.0, YELLOW, YELLOW, GLASS, B, 60.0),
                (0.18, 0.5, 0.55, 0.08, 0.62, dark_y, dark_y, dark_y, P, 80.0)]
    elif name == "pedestrian":
        shirt, pants, skin = _pick(rng, SHIRTS), _pick(rng, PANTS), _pick(rng, SKIN)
        rows = [(-0.3, 0.3, 0.6, 0.0, 0.48, pants, pants, pants, P, 25.0),
                (-0.5, 0.5, 1.0, 0.48, 0.86, shirt, shirt, shirt, P, 30.0),
                (-0.25, 0.25, 0.42, 0.86, 1.0, skin, DARK, skin, P, 20.0)]
    elif name in ("motorcycle", "bicycle"):
        c = _pick(rng, MOTO_COLOURS if name == "motorcycle" else BIKE_COLOURS)
        frame_w, frame_h = (0.5, 0.62) if name == "motorcycle" else (0.3, 0.58)
        if with_rider:
            shirt = _pick(rng, SHIRTS)
            rows = [(-0.5, 0.5, frame_w, 0.0, frame_h * 0.75, c, c, DARK, T, 50.0),
                    (0.28, 0.42, 1.0, frame_h * 0.72, frame_h * 0.82, DARK, DARK, DARK, P, 30.0),
                    (-0.22, 0.12, 0.9, frame_h * 0.75, 1.0, shirt, shirt, shirt, P, 30.0)]
        else:
            rows = [(-0.5, 0.5, frame_w, 0.0, 0.85, c, c, DARK, T, 50.0),
                    (0.3, 0.45, 1.0, 0.85, 1.0, DARK, DARK, DARK, P, 30.0)]
    elif name == "traffic_cone":
        rows = [(-0.5, 0.5, 1.0, 0.0, 0.08, CONE, CONE, CONE, P, 120.0),
                (-0.27, 0.27, 0.54, 0.08, 0.78, CONE, CONE, WHITE, BD, 150.0),
                (-0.14, 0.14, 0.28, 0.78, 1.0, CONE, CONE, CONE, P, 120.0)]
    elif name == "barrier":
        rows = [(-0.5, 0.5, 1.0, 0.0, 1.0, WHITE, WHITE, BARRIER_RED, S, 110.0)]
    else:
        raise ValueError(f"make_parts: unknown class {name!r}")
    return _parts(rows, np.asarray(lwh, dtype=np.float64))


def sample_size(name: str, rng: np.random.Generator, with_rider: bool = False) -> np.ndarray:
    """Draw box extents (l, w, h) in metres for class ``name``; riderless two-wheelers are 25 % lower."""
    spec = CLASS_SPECS[name]
    z = np.clip(rng.normal(0.0, 1.0, 3), -2.0, 2.0)
    lwh = np.array(spec.mean_lwh) + z * np.array(spec.std_lwh)
    if name in ("motorcycle", "bicycle") and not with_rider:
        lwh[2] *= 0.75
    return lwh


def part_boxes(boxes: np.ndarray, parts: list[Parts]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place every actor's parts in the frame of its boxes.

    Args:
        boxes: ``(N, >=7)`` actor boxes (x, y, z centre, l, w, h, yaw) standing on the ground plane z = zc - h/2.
        parts: N :class:`Parts`, one per box.
    Returns:
        ``part_box (M, 7)`` boxes of all parts in the same frame, ``owner (M,)`` actor index of each part and
        ``index (M,)`` index of the part within its actor's :class:`Parts`.
    """
    b = np.asarray(boxes, dtype=np.float64)
    counts = np.array([len(p.size) for p in parts], dtype=np.int64)
    owner = np.repeat(np.arange(len(parts)), counts)
    if len(owner) == 0:
        return np.zeros((0, 7)), owner, owner.copy()
    index = np.concatenate([np.arange(c) for c in counts])
    centre = np.concatenate([p.centre for p in parts])
    size = np.concatenate([p.size for p in parts])
    c, s = np.cos(b[owner, 6]), np.sin(b[owner, 6])
    out = np.zeros((len(owner), 7))
    out[:, 0] = b[owner, 0] + c * centre[:, 0] - s * centre[:, 1]
    out[:, 1] = b[owner, 1] + s * centre[:, 0] + c * centre[:, 1]
    out[:, 2] = b[owner, 2] - b[owner, 5] / 2 + centre[:, 2]
    out[:, 3:6] = size
    out[:, 6] = b[owner, 6]
    return out, owner, index
