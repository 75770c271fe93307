"""Camera calibration for one set: intrinsics ``K`` from ``sensor_msgs/CameraInfo`` (validated), the
camera-to-target extrinsics from TF, compensated for the ego motion between the cameras' capture times, and a
change detector for the static calibration (a new CameraInfo, a new /tf_static, a different subset of cameras).

Frames: ``cam2target`` maps points in the camera's optical frame (x right, y down, z forward, metres) to the
node's ``target_frame`` (x forward, y left, z up) **at the set's reference stamp**. ``K`` is the 3x3 pinhole
matrix of the image as published, in pixels; the images must be rectified (nuScenes images are; a non-zero
distortion gives a warning).

Ego motion. The cameras of a set fire at different times (nuScenes: up to ~45 ms apart; 0.4 m at 9 m/s). As in
training (BEVDepth: every camera through its own ego pose into the ego frame at the key LiDAR time), each
camera's extrinsics are moved into the target frame at one reference stamp: the **latest camera stamp of the set**
(in nuScenes the LiDAR key stamp lies a few milliseconds after the last camera of a set). With
``pose(t) = T(fixed <- target, t)`` from TF (``fixed_frame``: ``map`` as labeldistill-nusc2bag writes, ``odom`` on
a vehicle without localisation)::

    cam2target_i = inv(pose(t_ref)) @ pose(t_i) @ T(target <- camera_i)      (camera rigidly mounted)

Without the fixed frame on TF (or no pose at the reference stamp) the static extrinsics are used as if all
cameras fired at once, and :attr:`SetCalibration.compensated` is False (the node reports it in /diagnostics).
``ego_pose = pose(t_ref)`` also places the set in the fixed frame for temporal models.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..geometry import invert_rigid


class CalibrationError(ValueError):
    """A CameraInfo the model cannot use, or a camera without a frame id; names the field and the fix."""


def intrinsics(msg, name: str = "camera_info") -> tuple[np.ndarray, tuple[int, int], str | None]:
    """Validate ``msg.k`` of a ``sensor_msgs/CameraInfo``.

    Returns ``(K (3, 3) float64, (width, height), warning or None)``; raises :class:`CalibrationError` for a
    zero, non-finite or malformed K.
    """
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size != 9:
        raise CalibrationError(f"{name}: k has {k.size} values, expected 9 (row-major 3x3)")
    K = k.reshape(3, 3)
    fix = "publish the calibrated intrinsics (an uncalibrated driver sends zeros; set its camera_info_url)"
    if not np.all(np.isfinite(K)):
        raise CalibrationError(f"{name}: k = {k.tolist()} has non-finite values: {fix}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CalibrationError(f"{name}: k = {k.tolist()}: fx = k[0] and fy = k[4] must be > 0: {fix}")
    if abs(K[2, 2] - 1.0) > 1e-6 or abs(K[2, 0]) > 1e-9 or abs(K[2, 1]) > 1e-9 or abs(K[1, 0]) > 1e-9:
        raise CalibrationError(f"{name}: k = {k.tolist()} is not a pinhole matrix [fx s cx; 0 fy cy; 0 0 1]: {fix}")
    size = (int(msg.width), int(msg.height))
    warning = None
    d = np.asarray(msg.d, dtype=np.float64)
    if d.size and np.any(np.abs(d) > 1e-9):
        warning = (f"{name}: distortion d = {np.round(d, 4).tolist()} is not zero: the model expects rectified "
                   f"images (subscribe to image_rect)")
    return K, size, warning


@dataclass(frozen=True)
class SetCalibration:
    """Calibration of the cameras of one set (only the cameras present, in camera order).

    ``cam2target`` is ego-motion compensated to ``reference_stamp_ns`` when ``compensated``; ``ego_pose`` is
    ``T(fixed_frame <- target_frame)`` at that stamp (None when unknown); ``key`` digests the static part
    (cameras, Ks, static extrinsics): equal keys = the same rig calibration; ``changed``: it differs from the
    previous set's. ``uncompensated_reason``: why the static extrinsics were used although a ``fixed_frame`` was
    given (None when compensated, or when compensation is off: ``fixed_frame`` "").
    """

    cameras: tuple[int, ...]
    Ks: np.ndarray  # (n, 3, 3) pixels
    cam2target: np.ndarray  # (n, 4, 4)
    key: str
    changed: bool
    reference_stamp_ns: int = 0
    ego_pose: np.ndarray | None = None  # (4, 4) target -> fixed frame at the reference stamp
    compensated: bool = False
    uncompensated_reason: str | None = None


def _lookup_fast_fail(lookup, target: str, source: str, stamp_ns: int, timeout_s: float,
                      exceptions: tuple[type[BaseException], ...]) -> np.ndarray:
    """``lookup`` that waits up to ``timeout_s`` only when waiting can help: a frame TF has never heard of (a
    ``LookupException``, in tf2_ros and the in-package buffer alike: e.g. no localisation running) fails at once
    instead of costing every set the whole timeout."""
    try:
        return lookup(target, source, stamp_ns, 0.0)
    except exceptions as exc:
        if type(exc).__name__ == "LookupException" or timeout_s <= 0:
            raise
    return lookup(target, source, stamp_ns, timeout_s)


class CalibrationCache:
    """Latest valid K per camera (re-validated only when the CameraInfo changes) and the TF extrinsics.

    ``lookup(target, source, stamp_ns, timeout_s) -> 4x4`` is the TF backend's ``lookup_matrix``; it raises
    the backend's exceptions, which the caller handles (frame skipped, diagnostic WARN).
    """

    def __init__(self, camera_names: Sequence[str], target_frame: str, camera_frames: Sequence[str] = ()):
        self.names = list(camera_names)
        self.target = target_frame
        self.frames_override = list(camera_frames)
        self._info_key: list[bytes | None] = [None] * len(self.names)
        self._K: list[np.ndarray | None] = [None] * len(self.names)
        self._size: list[tuple[int, int] | None] = [None] * len(self.names)
        self._frame_from_info: list[str] = [""] * len(self.names)
        self.warnings: list[str] = []  # new warnings for the node to log once
        self._last_key: str | None = None
        self.changes = 0

    def update_info(self, cam: int, msg) -> None:
        """Take camera ``cam``'s latest CameraInfo (cheap when unchanged); raises :class:`CalibrationError`."""
        key = np.asarray(msg.k, dtype=np.float64).tobytes() + bytes(f"{msg.width}x{msg.height}", "ascii")
        if key == self._info_key[cam]:
            return
        self._info_key[cam], self._K[cam] = None, None
        K, size, warning = intrinsics(msg, f"camera_info of {self.names[cam]}")
        if warning:
            self.warnings.append(warning)
        self._info_key[cam], self._K[cam], self._size[cam] = key, K, size
        self._frame_from_info[cam] = msg.header.frame_id

    def has_info(self, cam: int) -> bool:
        return self._K[cam] is not None

    def frame_of(self, cam: int, image_frame_id: str) -> str:
        """The TF frame of camera ``cam``: ``camera_frames`` override, else the image's, else the CameraInfo's."""
        if self.frames_override:
            return self.frames_override[cam]
        frame = image_frame_id or self._frame_from_info[cam]
        if not frame:
            raise CalibrationError(f"{self.names[cam]}: neither the image nor its camera_info has a "
                                   f"header.frame_id: fix the driver or set the parameter camera_frames")
        return frame

    def resolve(self, cameras: Sequence[int], frame_ids: Sequence[str], image_sizes: Sequence[tuple[int, int]],
                stamps_ns: Sequence[int], lookup: Callable[[str, str, int, float], np.ndarray],
                timeout_s: float, fixed_frame: str = "", exceptions: tuple[type[BaseException], ...] = ()
                ) -> SetCalibration:
        """Calibration of ``cameras`` (indices) whose images have ``frame_ids``, ``image_sizes`` (w, h) and
        ``stamps_ns``, compensated to the latest of those stamps through ``fixed_frame`` (module docstring; ""
        disables compensation on purpose: static extrinsics, no ``uncompensated_reason``).
        ``lookup(target, source, stamp_ns, timeout_s) -> 4x4`` is the TF backend's;
        ``exceptions`` are its errors: a failing fixed-frame lookup falls back to static extrinsics, a failing
        camera lookup propagates. Raises :class:`CalibrationError` (no/invalid CameraInfo, size mismatch, no
        frame id) or the TF backend's exception."""
        Ks, Ts = [], []
        for cam, frame_id, (w, h), stamp in zip(cameras, frame_ids, image_sizes, stamps_ns):
            K = self._K[cam]
            if K is None:
                raise CalibrationError(f"{self.names[cam]}: no valid camera_info received yet")
            iw, ih = self._size[cam]
            if (iw, ih) != (0, 0) and (iw, ih) != (w, h):
                raise CalibrationError(
                    f"{self.names[cam]}: the image is {w}x{h} but its camera_info says width={iw} height={ih}: "
                    f"K would be wrong; publish the camera_info of this image stream")
            Ks.append(K)
            Ts.append(lookup(self.target, self.frame_of(cam, frame_id), stamp, timeout_s))
        Ks_a, static = np.stack(Ks), np.stack(Ts)
        ref = int(max(stamps_ns))
        cam2target, pose, reason = static, None, None  # fixed_frame "": compensation off on purpose
        if fixed_frame:
            try:
                pose = _lookup_fast_fail(lookup, fixed_frame, self.target, ref, timeout_s, exceptions)
                ref_inv = invert_rigid(pose)
                # Poses at the other cameras' (earlier) stamps are already buffered once the reference one is.
                motion = np.stack([ref_inv @ (pose if s == ref else lookup(fixed_frame, self.target, s, 0.0))
                                   for s in stamps_ns])
                cam2target, reason = motion @ static, None
            except exceptions as exc:
                pose, reason = None, f"no '{fixed_frame}' -> '{self.target}' transform: {exc}"
        h = hashlib.blake2b(digest_size=16)
        h.update(np.asarray(cameras, dtype=np.int64).tobytes())
        h.update(np.round(Ks_a, 6).tobytes())
        h.update(np.round(static, 6).tobytes())
        key = h.hexdigest()
        changed = key != self._last_key
        if changed:
            self.changes += 1
            self._last_key = key
        return SetCalibration(tuple(cameras), Ks_a, cam2target, key, changed, ref, pose, pose is not None, reason)
