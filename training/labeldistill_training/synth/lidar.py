"""32-beam spinning LiDAR ray-caster for the synthetic world.

Rays (32 elevations x ``azimuth_steps`` azimuths, random start phase per sweep) are cast from the sensor against
every actor part (slab test in the part's frame, only for the rays inside the part's azimuth/elevation window)
and against the ground plane z = 0; the nearest hit wins, so occlusion is exact. Imperfections modelled:

* range noise ``sigma = 0.01 + 0.002 r`` m along the ray;
* dropouts: ``p = 0.03 + 0.4 (r / r_max)^2``, more at grazing incidence and on dark surfaces, plus random
  spray sectors (a few degrees where 85 % of returns vanish) and an occasional dead ring per scene;
* range limit ``r_max`` (70 m) and the sparsity of the beam pattern itself (far objects get few rings).

Returns on an actor are placed just inside its surface (at least 1.5 cm along the ray and never past the middle
of the chord), and returns within 2 mm of any box face are discarded, so every actor return lies inside the
actor's ground-truth box and counts computed in any frame (e.g. by nuscenes-devkit in the LiDAR frame) agree.
Ground seen under raised bodies (trailers, truck cargo boxes) lies inside those boxes and is counted, as in
real data.
Intensity: ``refl * (0.3 + 0.7 cos(incidence)) / (1 + (r / 60)^2)`` with noise, in [0, 255] like nuScenes.
Output points are float32 ``(P, 5)``: x, y, z (LiDAR frame, m), intensity, ring index (0 = lowest beam).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labeldistill_ros import geometry as geo

from .cameras import LidarSpec
from .classes import Parts, part_boxes
from .world import road_surface

# Reflectivity per ground surface code (asphalt, marking, centre line, kerb, sidewalk, grass).
_GROUND_REFL = np.array([10.0, 70.0, 60.0, 30.0, 25.0, 14.0])
_INSIDE_MARGIN = 2e-3  # m


@dataclass
class LidarSweep:
    """One ray-cast sweep.

    Attributes:
        points: ``(P, 5)`` float32 x, y, z (LiDAR frame, m), intensity [0, 255], ring index.
        actor: ``(P,)`` int index of the actor hit, -1 for the ground.
    """

    points: np.ndarray
    actor: np.ndarray


def _ray_directions(lidar: LidarSpec, phase: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions ``(32 * A, 3)`` in the LiDAR frame (ring-major) and the azimuths ``(A,)`` (rad)."""
    el = np.deg2rad(lidar.elevations_deg)
    az = phase + np.arange(lidar.azimuth_steps) * (2 * np.pi / lidar.azimuth_steps)
    d = np.stack([np.cos(el)[:, None] * np.cos(az)[None], np.cos(el)[:, None] * np.sin(az)[None],
                  np.broadcast_to(np.sin(el)[:, None], (len(el), len(az)))], axis=-1)
    return d.reshape(-1, 3), az


def cast_sweep(lidar: LidarSpec, boxes: np.ndarray, parts: list[Parts], ego_xy_road: tuple[float, float],
               rng: np.random.Generator, dead_ring: int = -1) -> LidarSweep:
    """Ray-cast one LiDAR sweep.

    Args:
        lidar: sensor (lidar2ego, beams, azimuth steps, max range).
        boxes: ``(N, >=7)`` actor boxes in ego (standing on z = 0).
        parts: N actor :class:`Parts`.
        ego_xy_road: ego position in the road frame (m), for the ground surface under each return.
        rng: generator of this sweep (phase, noise, dropouts).
        dead_ring: ring index that returns nothing in this scene (-1: none).
    Returns:
        :class:`LidarSweep` in the LiDAR frame.
    """
    n_el, A = len(lidar.elevations_deg), lidar.azimuth_steps
    step = 2 * np.pi / A
    phase = float(rng.uniform(0.0, step))
    d_l, _ = _ray_directions(lidar, phase)
    R, o = lidar.lidar2ego[:3, :3], lidar.lidar2ego[:3, 3]
    d = d_l @ R.T  # ego-frame unit directions
    n_rays = len(d)
    best_t = np.full(n_rays, np.inf)
    best_far = np.full(n_rays, np.inf)
    best_actor = np.full(n_rays, -1, dtype=np.int64)
    best_cos = np.zeros(n_rays)
    best_refl = np.zeros(n_rays)

    boxes = np.asarray(boxes, dtype=np.float64).reshape(len(parts), -1) if len(parts) else np.zeros((0, 9))
    pb, owner, pidx = part_boxes(boxes, parts)
    if len(pb):
        corners_l = geo.transform_points(geo.invert_transform(lidar.lidar2ego),
                                         geo.box_corners(pb).reshape(-1, 3)).reshape(-1, 8, 3)
        centre_l = corners_l.mean(axis=1)
        reach = np.linalg.norm(centre_l[:, :2], axis=1) - np.linalg.norm(pb[:, 3:5], axis=1) / 2
        el_beams = np.deg2rad(lidar.elevations_deg)
        for m in np.nonzero(reach < lidar.max_range)[0]:
            c = corners_l[m]
            az_c = np.arctan2(centre_l[m, 1], centre_l[m, 0])
            rel = geo.wrap_angle(np.arctan2(c[:, 1], c[:, 0]) - az_c)
            lo = int(np.ceil((az_c + rel.min() - phase) / step)) - 1
            hi = int(np.floor((az_c + rel.max() - phase) / step)) + 1
            if hi < lo:
                continue
            # Conservative elevation window: nearest/farthest horizontal reach of the part from the sensor.
            rho_c, rad = np.hypot(*centre_l[m, :2]), np.linalg.norm(pb[m, 3:5]) / 2
            rho_lo, rho_hi = max(rho_c - rad, 1e-3), rho_c + rad
            z_lo, z_hi = c[:, 2].min(), c[:, 2].max()
            el_hi = np.arctan2(z_hi, rho_lo if z_hi > 0 else rho_hi)
            el_lo = np.arctan2(z_lo, rho_lo if z_lo < 0 else rho_hi)
            rings = np.nonzero((el_beams >= el_lo - 1e-3) & (el_beams <= el_hi + 1e-3))[0]
            if len(rings) == 0:
                continue
            cols = np.arange(lo, hi + 1) % A
            idx = (rings[:, None] * A + cols[None]).ravel()
            _slab_update(pb[m], o, d[idx], idx, int(owner[m]), parts[owner[m]].reflectivity[pidx[m]],
                         best_t, best_far, best_actor, best_cos, best_refl)

    # Ground plane.
    with np.errstate(divide="ignore", invalid="ignore"):
        t_g = np.where(d[:, 2] < -1e-6, -o[2] / d[:, 2], np.inf)
    ground = t_g < best_t
    best_t = np.where(ground, t_g, best_t)
    best_actor[ground] = -1
    best_cos[ground] = np.abs(d[ground, 2])
    gxy = o[:2] + best_t[ground, None] * d[ground, :2]
    surf = road_surface(gxy[:, 0] + ego_xy_road[0], gxy[:, 1] + ego_xy_road[1])
    best_refl[ground] = _GROUND_REFL[surf]

    r = best_t
    keep = np.isfinite(r) & (r < lidar.max_range) & (r > 0.5)
    # Dropouts.
    ring = np.repeat(np.arange(n_el), A)
    p_drop = 0.03 + 0.4 * (np.minimum(r, lidar.max_range) / lidar.max_range) ** 2
    p_drop += 0.3 * np.clip(1.0 - best_cos / 0.15, 0.0, 1.0) + 0.15 * np.clip(1.0 - best_refl / 12.0, 0.0, 1.0)
    col = np.tile(np.arange(A), n_el)
    for _ in range(int(rng.poisson(0.6))):  # spray / absorption sectors
        c0, width = int(rng.integers(A)), int(rng.integers(A // 180 + 1, A // 45 + 2))
        p_drop[((col - c0) % A) < width] += 0.85
    keep &= rng.random(n_rays) >= p_drop
    if dead_ring >= 0:
        keep &= ring != dead_ring

    # Range noise; actor returns stay inside the surface.
    sigma = 0.01 + 0.002 * np.where(np.isfinite(r), r, 0.0)
    noise = rng.standard_normal(n_rays) * sigma
    on_actor = best_actor >= 0
    with np.errstate(invalid="ignore"):
        chord = np.where(on_actor, best_far - best_t, 0.0)
    keep &= ~on_actor | (chord > 0.03)
    inset = np.minimum(np.abs(noise) + 0.015, 0.45 * chord)
    t_pt = np.where(on_actor, best_t + inset, best_t + noise)
    idx = np.nonzero(keep)[0]
    pts_e = o + t_pt[idx, None] * d[idx]
    actor = best_actor[idx]
    ok = _inside_margin_ok(pts_e, actor, boxes)
    idx, pts_e, actor = idx[ok], pts_e[ok], actor[ok]

    inten = best_refl[idx] * (0.3 + 0.7 * best_cos[idx]) / (1.0 + (r[idx] / 60.0) ** 2)
    inten = np.clip(inten * rng.uniform(0.85, 1.15, len(idx)) + rng.normal(0.0, 1.5, len(idx)), 0.0, 255.0)
    pts_l = geo.transform_points(geo.invert_transform(lidar.lidar2ego), pts_e)
    out = np.concatenate([pts_l, inten[:, None], ring[idx, None].astype(np.float64)], axis=1).astype(np.float32)
    return LidarSweep(out, actor)


def _slab_update(box: np.ndarray, o: np.ndarray, d: np.ndarray, idx: np.ndarray, actor: int, refl: float,
                 best_t, best_far, best_actor, best_cos, best_refl) -> None:
    """Intersect rays ``o + t d`` (``d (k, 3)`` unit, ego) with one upright box ``(7,)``; keep the nearer hits."""
    c, s = np.cos(box[6]), np.sin(box[6])
    Rinv = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    ol = Rinv @ (o - box[:3])
    dl = d @ Rinv.T
    half = box[3:6] / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dl
        t1 = (-half - ol) * inv
        t2 = (half - ol) * inv
    tmin = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf)
    tmax = np.nan_to_num(np.maximum(t1, t2), nan=np.inf)
    axis = np.argmax(tmin, axis=1)
    t_near = tmin[np.arange(len(dl)), axis]
    t_far = tmax.min(axis=1)
    hit = (t_near <= t_far) & (t_near > 0.0)
    better = hit & (t_near < best_t[idx])
    sel = idx[better]
    best_t[sel] = t_near[better]
    best_far[sel] = t_far[better]
    best_actor[sel] = actor
    best_cos[sel] = np.abs(dl[better, axis[better]])
    best_refl[sel] = refl


def box_members(pts: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    """Indices of the points ``(P, >=3)`` inside each box ``(N, >=7)`` (same frame, borders included).

    Same result as ``geometry.points_in_boxes`` column by column, but only tests the points whose x falls in
    each box's bounding interval (points sorted once), so it costs O(P log P + sum of candidates).
    """
    pts = np.asarray(pts, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    order = np.argsort(pts[:, 0], kind="stable")
    xs = pts[order, 0]
    reach = np.linalg.norm(boxes[:, 3:5], axis=1) / 2 + 1e-6
    out = []
    for b, r in zip(boxes, reach):
        lo, hi = np.searchsorted(xs, b[0] - r, "left"), np.searchsorted(xs, b[0] + r, "right")
        cand = order[lo:hi]
        cand = cand[np.abs(pts[cand, 1] - b[1]) <= r]
        inside = geo.points_in_boxes(pts[cand], b[None])[:, 0]
        out.append(np.sort(cand[inside]))
    return out


def _inside_margin_ok(pts: np.ndarray, actor: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(P,)`` bool: no return lies within 2 mm of any box surface (so inside/outside is unambiguous in any
    frame), and every actor return lies inside its own box. Ground returns deep inside a box (under a raised
    trailer or truck body) are kept, as in real data."""
    ok = np.ones(len(pts), dtype=bool)
    if len(boxes) == 0:
        return ok
    grown = boxes.copy()
    grown[:, 3:6] += 2 * _INSIDE_MARGIN
    shrunk = boxes.copy()
    shrunk[:, 3:6] -= 2 * _INSIDE_MARGIN
    inner = box_members(pts, shrunk)
    outer = box_members(pts, grown)
    for i in range(len(boxes)):
        own = np.zeros(len(pts), dtype=bool)
        own[inner[i]] = True
        ok[outer[i][~own[outer[i]]]] = False  # near the surface of box i, or a foreign return inside it
        mine = np.nonzero(actor == i)[0]
        ok[mine[~own[mine]]] = False  # own return not deep enough inside
    return ok
