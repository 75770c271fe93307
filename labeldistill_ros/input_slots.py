"""Camera images -> the network's input tensors, camera by camera: preallocated :class:`InputSlot` s (one camera
set each) and the :class:`SlotPool` that hands them out and stages each image into its row with the model's
:class:`~labeldistill_ros.model.image_transform.ImageTransform`.

On CUDA each image band (only the rows the crop keeps) goes through a pinned host buffer with one non-blocking copy
and is resized and normalised on the device, on a stream of its own (:attr:`SlotPool.stream`); small calibration
arrays travel through reused pinned buffers (:meth:`SlotPool.to_device`). Nothing here waits for the device.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from .model.image_transform import ImageTransform


class InputSlot:
    """One camera set's network input, filled camera by camera (preallocated; a few are reused in turn).

    ``x (rows, 3, h, w)`` float32 on the model's device (row = camera index in the set: the node uses its camera
    order, :meth:`Detector.detect` the list order), ``ida (rows, 4, 4)`` and ``filled`` per row. On CUDA each row
    also has a pinned uint8 buffer for its image band, a device copy of it and an event marking the row's
    preprocessing done on the staging stream.
    """

    def __init__(self, rows: int, input_size: tuple[int, int], device: torch.device):
        h, w = input_size
        self.rows = rows
        self.device = device
        self.x = torch.zeros(rows, 3, h, w, device=device)
        self.ida = np.tile(np.eye(4), (rows, 1, 1))
        self.filled = np.zeros(rows, dtype=bool)
        self.sizes: list[tuple[int, int] | None] = [None] * rows  # (width, height) of each staged image
        self.pinned: list[torch.Tensor | None] = [None] * rows
        self.band_dev: list[torch.Tensor | None] = [None] * rows
        self.ready: list = [None] * rows  # CUDA events: the row's preprocessing finished on the staging stream
        self.in_flight = np.zeros(rows, dtype=bool)  # a copy out of the row's pinned buffer may still be running
        self.in_use = False

    def reset(self) -> None:
        self.filled[:] = False
        self.sizes = [None] * self.rows

    def _buffers(self, row: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The pinned host buffer and its device twin for an image band of ``shape`` (grown when needed)."""
        buf = self.pinned[row]
        if buf is None or tuple(buf.shape) != shape:
            self.pinned[row] = buf = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self.band_dev[row] = torch.empty(shape, dtype=torch.uint8, device=self.device)
            self.ready[row] = torch.cuda.Event()
        elif self.in_flight[row]:  # staged for a set that was dropped before running: wait for its copy (long done)
            self.ready[row].synchronize()
        self.in_flight[row] = True
        return buf, self.band_dev[row]


class SlotPool:
    """The input slots of one detector (at most ``max_slots`` staged ahead: the set in the model + sets arriving)
    and the staging of images into them (thread-safe across slots: the node stages the next set while the model
    runs the current one)."""

    def __init__(self, transform: ImageTransform, input_size: tuple[int, int], device: torch.device,
                 max_slots: int = 4):
        self.transform, self.input_size, self.device, self.max_slots = transform, input_size, device, max_slots
        self._slots: list[InputSlot] = []
        self._lock = threading.Lock()
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None  # staging stream (CUDA)
        self._pinned_small: dict = {}

    def acquire(self, rows: int, create: bool = True) -> InputSlot | None:
        """A free :class:`InputSlot` with ``rows`` rows (reset; hand it back with :meth:`release`). With
        ``create=False`` none is allocated beyond :attr:`max_slots` (returns None when all are busy)."""
        with self._lock:
            slot = next((s for s in self._slots if not s.in_use and s.rows == rows), None)
            if slot is None:
                if not create and sum(s.rows == rows for s in self._slots) >= self.max_slots:
                    return None
                slot = InputSlot(rows, self.input_size, self.device)
                self._slots.append(slot)
            slot.in_use = True
        slot.reset()
        return slot

    def release(self, slot: InputSlot) -> None:
        with self._lock:
            slot.in_use = False

    def stage(self, slot: InputSlot, row: int, image: np.ndarray) -> None:
        """Preprocess one camera's ``(H, W, 3)`` uint8 RGB image into ``slot`` row ``row`` (thread-safe across
        slots: the node stages the next set while the model runs the current one)."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image {row}: expected (H, W, 3) uint8 RGB, got {got}")
        H, W = image.shape[:2]
        ida = self.transform.ida(W, H)
        with torch.inference_mode():
            band, plan = self.transform.band(image, ida)
            if self.stream is None:
                self.transform.apply(torch.from_numpy(band), plan, out=slot.x[row])
            else:
                pinned, dev = slot._buffers(row, tuple(band.shape))
                pinned.numpy()[...] = band  # the only host copy: the rows the crop keeps, into pinned memory
                with torch.cuda.stream(self.stream):
                    dev.copy_(pinned, non_blocking=True)
                    self.transform.apply(dev, plan, out=slot.x[row])
                    slot.ready[row].record(self.stream)
        slot.ida[row] = ida
        slot.sizes[row] = (W, H)
        slot.filled[row] = True

    def wait_staged(self) -> None:
        """Make the device's current stream wait for everything staged so far (no host wait; no-op on a CPU)."""
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def to_device(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        """Small host arrays -> device tensors (CUDA: through reused pinned buffers, non-blocking; a buffer is
        rewritten only by a later set, after this set's transfer back has waited for the stream)."""
        if self.device.type != "cuda":
            return [torch.from_numpy(a) for a in arrays]
        out = []
        for i, a in enumerate(arrays):
            key = (i, a.shape, len(arrays))
            buf = self._pinned_small.get(key)
            if buf is None:
                buf = self._pinned_small[key] = torch.empty(a.shape, dtype=torch.float32, pin_memory=True)
            buf.numpy()[...] = a
            out.append(buf.to(self.device, non_blocking=True))
        return out
