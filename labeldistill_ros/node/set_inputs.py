"""A camera set's messages -> the model's input: each camera's image converted to RGB (cv_bridge on a vehicle, else
the in-package decoder on the serialized bytes: :mod:`.ros_compat`) and preprocessed into the set's input slot,
and the set's calibration (K from CameraInfo, extrinsics from TF moved to the reference stamp: :mod:`.calibration`).

Runs in the staging thread (as images arrive) or the inference thread (what is left when the set is run); never
in the executor. The node's callbacks only store the latest CameraInfo (:meth:`SetInputs.on_info`).
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import numpy as np

from . import raw_image
from .calibration import CalibrationCache, CalibrationError
from .ros_compat import TfBackend, compressed_to_rgb, image_to_rgb, optional_module
from .staging import SetStage


class SetInputs:
    """Converts and stages the images of a set and resolves its calibration (thread-safe for the staging and the
    inference thread). ``warn`` receives the calibration cache's warnings (the node's logger)."""

    def __init__(self, p, detector, tf: TfBackend, warn: Callable[[str], None]):
        self.p, self.names, self.detector, self.tf, self._log = p, p.camera_names, detector, tf, warn
        self.calib = CalibrationCache(p.camera_names, p.target_frame, p.camera_frames)
        self.infos: list = [None] * p.num_cameras
        self._bufs = threading.local()  # per-thread reused conversion buffers (staging and inference threads)
        self._bridge = optional_module("cv_bridge") is not None  # vehicle: cv_bridge converts the run sets
        self._calib_lock = threading.Lock()  # the calibration runs in the staging or the inference thread

    def on_info(self, cam: int, msg) -> None:
        """The latest ``sensor_msgs/CameraInfo`` of camera ``cam`` (executor thread: only stored)."""
        self.infos[cam] = msg

    def stage_job(self, st: SetStage, job: int) -> bool:
        """One job of a set (staging thread or inference thread): a camera's image converted and preprocessed
        into the set's input slot, or the set's calibration once its cameras are in (False: an image size is not
        known yet, the job stays open)."""
        if job != st.calib_job:
            self.detector.stage(st.slot, job, self.to_rgb(job, st.items[job]))
            return True
        return self.calibrate(st)

    def calibrate(self, st: SetStage) -> bool:
        """The set's calibration into ``st.calib``: K from each camera's latest CameraInfo (validated), extrinsics
        from TF moved to the reference stamp (:meth:`CalibrationCache.resolve`). Raises CalibrationError or the TF
        backend's exception."""
        p, cams = self.p, st.cams
        sizes: list[Sequence[int]] = []
        for i in cams:
            item = st.items[i]
            size = st.slot.sizes[i] if st.slot is not None else None
            if size is None and item is not None and not item.compressed:
                size = (item.width, item.height)  # a raw image's size is in its header
            if size is None or item is None:
                return False  # a compressed image not decoded yet
            sizes.append(size)
        t0 = time.perf_counter()
        with self._calib_lock:
            for i in cams:
                info = self.infos[i]
                if info is None:
                    raise CalibrationError(f"{self.names[i]}: no camera_info received yet on "
                                           f"'{p.camera_info_topics[i]}'")
                self.calib.update_info(i, info)
            while self.calib.warnings:
                self._log(self.calib.warnings.pop(0))
            st.calib = self.calib.resolve(
                cams, [st.items[i].frame_id for i in cams], sizes, [st.items[i].stamp_ns for i in cams],
                self.tf.lookup_matrix, p.tf_timeout_s, p.fixed_frame, self.tf.exceptions)
        st.calib_ms = (time.perf_counter() - t0) * 1e3
        return True

    def to_rgb(self, cam: int, item: raw_image.RawImage) -> np.ndarray:
        """A camera's image as ``(H, W, 3)`` uint8 RGB: cv_bridge on the deserialised message where cv_bridge is
        installed (a vehicle), else the in-package conversion of the serialized bytes (rgb8: a view, no copy;
        other encodings into a buffer reused per thread and camera)."""
        name = f"{self.names[cam]} image"
        msg = item.message() if self._bridge else item
        if item.compressed:
            return compressed_to_rgb(msg, name)
        if self._bridge:
            return image_to_rgb(msg, name)
        bufs = getattr(self._bufs, "rgb", None)
        if bufs is None:
            bufs = self._bufs.rgb = [None] * self.p.num_cameras
        out = image_to_rgb(item, name, out=bufs[cam])
        if out.flags.owndata:  # converted (not a view on the message): reuse the array for the next frame
            bufs[cam] = out
        return out
