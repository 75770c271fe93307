"""Offline/online inference pipeline of the camera student: what the ROS node runs per camera set, and what the
bag evaluator reuses, so both give the same boxes for the same inputs.

    det = Detector("student.pt", device="auto", precision="fp32", score_threshold=0.3)
    out = det.detect(images, Ks, cam2target)        # images: list of (H, W, 3) uint8 RGB, one per camera
    out.boxes (N, 9), out.scores (N,), out.labels (N,), out.names (list of nuScenes class names)

Frames and units: ``Ks[i]`` is the 3x3 pinhole matrix of ``images[i]`` as given (pixels); ``cam2target[i]`` maps
points in camera ``i``'s optical frame (x right, y down, z forward, m) to the target frame (``base_link``: x
forward, y left, z up). Boxes come back in the target frame as ``x, y, z, l, w, h, yaw, vx, vy`` (geometric
centre, metres, radians, m/s; :mod:`labeldistill_ros.geometry`), sorted by descending score.

Preprocessing is the model's own :class:`~labeldistill_ros.model.image_transform.ImageTransform` (the one the
trainer evaluated with; its parameters come from the checkpoint), run on the model's device. Inference runs
under ``torch.inference_mode()`` (and autocast for fp16 on CUDA). Non-finite model outputs never reach the
boxes: their BEV cells are masked before decoding, any non-finite box left is dropped, and
``Detections.nonfinite`` counts them.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .model.decode import decode_detections
from .model.image_transform import ImageTransform
from .temporal_buffer import BevHistory


class DetectorError(RuntimeError):
    """The detector cannot be built (checkpoint, config, device or precision); the message says what to fix."""


@dataclass
class Detections:
    """Boxes of one camera set in the target frame (see the module docstring), sorted by descending score."""

    boxes: np.ndarray  # (N, 9) float64: x, y, z, l, w, h, yaw, vx, vy
    scores: np.ndarray  # (N,) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64 indices into class_names
    class_names: tuple[str, ...]
    nonfinite: int = 0  # BEV cells / boxes with NaN or inf outputs that were dropped
    timing_ms: dict[str, float] = field(default_factory=dict)  # preprocess, forward, postprocess
    missing_prev: int = 0  # temporal models: previous-frame slots that had no history (current frame used)

    @property
    def names(self) -> list[str]:
        """Class name of every box."""
        return [self.class_names[i] for i in self.labels]

    def __len__(self) -> int:
        return len(self.boxes)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda``/``cuda:N`` must exist (:class:`DetectorError`)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DetectorError(f"device '{device}' is not valid: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DetectorError(f"device '{device}' requested but CUDA is not available in this torch build/"
                                f"machine: use device auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DetectorError(f"device '{device}' does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif dev.type != "cpu":
        raise DetectorError(f"device '{device}' is not supported: use auto, cpu, cuda or cuda:N")
    return dev


def load_student(checkpoint: str | Path, device: torch.device):
    """Load the student from a checkpoint (``weights_only``), in eval mode on ``device``."""
    from .model.checkpoint import load_checkpoint

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise DetectorError(f"checkpoint '{checkpoint}' does not exist: pass the student .pt written by "
                            f"labeldistill-train")
    try:
        model = load_checkpoint(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - the loader's own message is specific; say which file
        raise DetectorError(f"checkpoint '{checkpoint}' cannot be loaded: {exc}") from exc
    model = model[0] if isinstance(model, tuple) else model
    return model.to(device).eval()


class Detector:
    """The camera student ready for inference on one device (see the module docstring).

    Args:
        checkpoint: student checkpoint path.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        precision: ``fp32`` | ``fp16`` (CUDA only: autocast).
        score_threshold: minimum score of a returned box (None: the model config's decode threshold).
        max_detections: at most this many boxes (None: the model config's).
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", precision: str = "fp32",
                 score_threshold: float | None = None, max_detections: int | None = None):
        if precision not in ("fp32", "fp16"):
            raise DetectorError(f"precision '{precision}' is not supported: use fp32 or fp16")
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise DetectorError(f"precision fp16 needs a CUDA device (device '{device}' resolved to "
                                f"{self.device}): use fp32")
        self.precision = precision
        self.checkpoint = str(checkpoint)
        self.model = load_student(checkpoint, self.device)
        cfg = self.model.cfg
        self.cfg = cfg
        # Temporal students: the BEV features of past sets, kept once, warped into each new set's ego frame.
        self.history = BevHistory.for_config(cfg) if cfg.temporal.num_prev_frames else None
        self.class_names: tuple[str, ...] = tuple(cfg.class_names)
        self.input_size: tuple[int, int] = tuple(cfg.input_size)
        self.score_threshold = float(cfg.decode.score_threshold if score_threshold is None else score_threshold)
        self.max_detections = int(cfg.decode.max_detections if max_detections is None else max_detections)
        self.transform = ImageTransform(self.input_size, cfg.image, self.device)
        self._inputs: torch.Tensor | None = None  # reused (N, 3, h, w) network input buffer
        self._bda = torch.eye(4, device=self.device).unsqueeze(0)
        # The threshold and cap apply in decoding: fewer NMS candidates, and greedy NMS keeps the same boxes above
        # the threshold either way (a lower-scored box never suppresses a higher one).
        self._decode_cfg = dataclasses.replace(cfg.decode, score_threshold=self.score_threshold,
                                               max_detections=self.max_detections)
        # rgb8 images arrive as read-only views on the message buffer; torch only reads them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    def describe(self) -> str:
        """One line: config name, device, precision, input size, previous frames."""
        h, w = self.input_size
        t = self.cfg.temporal
        frames = (f", {t.num_prev_frames} previous frame(s) at {list(t.effective_offsets_s)} s"
                  if t.num_prev_frames else "")
        return (f"{self.cfg.name} on {self.device} {self.precision}, input {w}x{h}{frames}, "
                f"checkpoint {self.checkpoint}")

    def reset_history(self) -> None:
        """Forget the previous frames of a temporal model (time jumped back, a new drive); no-op otherwise."""
        if self.history is not None:
            self.history.clear()

    # ---------------------------------------------------------------------------------------------- preprocess
    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB uint8 images -> (network input ``(1, N, 3, h, w)`` float32 on the device, ``ida (1, N, 4, 4)``),
        with the model's :class:`~labeldistill_ros.model.image_transform.ImageTransform`."""
        h, w = self.input_size
        n = len(images)
        if self._inputs is None or self._inputs.shape[0] < n:
            self._inputs = torch.zeros(n, 3, h, w, device=self.device)
        out = self._inputs[:n]
        idas = np.empty((n, 4, 4))
        for i, img in enumerate(images):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"image {i}: expected (H, W, 3) uint8 RGB, got {img.dtype} {img.shape}")
            idas[i] = self.transform.ida(img.shape[1], img.shape[0])
            self.transform(img, idas[i], out=out[i])
        return out.unsqueeze(0), torch.as_tensor(idas, dtype=torch.float32, device=self.device).unsqueeze(0)

    # ---------------------------------------------------------------------------------------------------- detect
    def detect(self, images: Sequence[np.ndarray], Ks: Sequence[np.ndarray] | np.ndarray,
               cam2target: Sequence[np.ndarray] | np.ndarray, cameras: Sequence[int] | None = None,
               stamp_ns: int | None = None, ego_pose: np.ndarray | None = None) -> Detections:
        """Detect objects in one camera set.

        ``images``: (H, W, 3) uint8 RGB per camera (sizes may differ), ``Ks``: (N, 3, 3), ``cam2target``:
        (N, 4, 4) at the set's reference stamp. ``cameras`` (indices into the trained camera order) is
        informational: a set may lack cameras (the missing ones simply contribute nothing to the BEV).

        Temporal models also take ``stamp_ns`` (the set's reference stamp, int ns) and ``ego_pose`` ((4, 4)
        target frame -> a fixed frame at that stamp, None when unknown): the set's own BEV feature is kept
        (:class:`~labeldistill_ros.temporal_buffer.BevHistory`) and, for each trained offset, the kept set nearest
        in time is warped into this set's frame; without one (start-up, a gap, no pose) the slot takes this set's
        own BEV with the identity motion, as training does at the start of a scene (``Detections.missing_prev``
        counts those slots). Sets must come in stamp order (a stamp going back drops the later history).
        """
        n = len(images)
        Ks = np.asarray(Ks, dtype=np.float64).reshape(n, 3, 3)
        T = np.asarray(cam2target, dtype=np.float64).reshape(n, 4, 4)
        t0 = time.perf_counter()
        with torch.inference_mode():
            x, ida = self.preprocess(images)
            K_t = torch.as_tensor(Ks, dtype=torch.float32, device=self.device).unsqueeze(0)
            T_t = torch.as_tensor(T, dtype=torch.float32, device=self.device).unsqueeze(0)
            self._sync()
            t1 = time.perf_counter()
            missing_prev = 0
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.precision == "fp16"):
                if self.history is None:
                    heads = self.model(x, K_t, T_t, ida, self._bda).head_outputs
                else:
                    heads, missing_prev = self._temporal_forward(x, K_t, T_t, ida, stamp_ns, ego_pose)
            self._sync()
            t2 = time.perf_counter()
            nonfinite = _mask_nonfinite(heads)
            dec = decode_detections(heads, self.cfg.head.task_groups, self.class_names, self.cfg.bev_grid,
                                    self._decode_cfg)[0]
            boxes = dec.boxes.double().cpu().numpy()
            scores = dec.scores.float().cpu().numpy()
            labels = dec.labels.cpu().numpy().astype(np.int64)
        finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
        nonfinite += int((~finite).sum())
        boxes, scores, labels = boxes[finite], scores[finite], labels[finite]
        t3 = time.perf_counter()
        return Detections(boxes, scores, labels, self.class_names, nonfinite,
                          {"preprocess": (t1 - t0) * 1e3, "forward": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3},
                          missing_prev)

    def _temporal_forward(self, x, K, T, ida, stamp_ns, ego_pose) -> tuple[list[dict[str, torch.Tensor]], int]:
        """Lift this set once, take the previous frames from the history (this set's own BEV where none), run
        the trunk and head, keep this set's BEV. Returns (head outputs, previous-frame slots without history)."""
        if stamp_ns is None:
            raise ValueError("a temporal model needs each set's stamp_ns (and ego_pose) in detect()")
        t = self.cfg.temporal
        bev, depth = self.model.lift(x, K, T, ida, self._bda)
        prev_bev, prev2curr, missing = self.history.select(stamp_ns, ego_pose, t.effective_offsets_s,
                                                           t.max_offset_error_s, current_bev=bev[0])
        out = self.model.forward_lifted(bev, depth, K, ida, self._bda, prev2curr.to(self.device),
                                        prev_bev.to(device=self.device, dtype=bev.dtype))
        self.history.push(stamp_ns, ego_pose, bev[0])
        return out.head_outputs, int(sum(missing))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _mask_nonfinite(heads: list[dict[str, torch.Tensor]]) -> int:
    """Make every BEV cell with a non-finite head output impossible to decode (heatmap -inf); returns how many."""
    count = 0
    for task in heads:
        bad = ~torch.isfinite(torch.cat(list(task.values()), dim=1)).all(dim=1)  # (B, H, W)
        n = int(bad.sum())
        if n:
            count += n
            task["heatmap"] = task["heatmap"].masked_fill(bad.unsqueeze(1), float("-inf"))
    return count
