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
boxes: decoding checks the gathered candidates (peak logit and box code) and drops and counts
(``Detections.nonfinite``) those with NaN or inf.

The node fills a set's network input camera by camera as the images arrive (:meth:`Detector.acquire_slot`,
:meth:`Detector.stage`, :meth:`Detector.detect_slot`); :meth:`Detector.detect` is the same three steps for a whole
set. On CUDA each camera's image band (only the rows the crop keeps) goes through a pinned host buffer with one
non-blocking copy and is resized and normalised on the device (a stream of its own: :mod:`.input_slots`); the
calibration travels the same way and its pooling-cache key is computed from the host copies, so nothing in a set
waits for the device until its candidate boxes come back in one transfer. ``backend='compiled'`` runs the
convolutional parts that pay for it (:data:`COMPILED_PARTS`: the image backbone on a CPU) through ``torch.compile``
(compiled and checked in :meth:`Detector.warmup`, never in a set).
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .model.decode import gather_candidates, select_detections
from .model.image_transform import ImageTransform
from .input_slots import InputSlot, SlotPool
from .model.view_transform import host_calibration_key
from .temporal_buffer import BevHistory
from .tracking import VelocityTracker, apply_tracked_velocity


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

    def count_matched(self, other: "Detections", rtol: float, atol: float) -> int:
        """How many of these boxes have a box of the same class in ``other`` (each used once) equal to within
        ``atol + rtol * |other|`` in all nine values. Order-free: fp16 rounding may swap near-tied scores."""
        free = np.ones(len(other), dtype=bool)
        n = 0
        for box, label in zip(self.boxes, self.labels):
            ok = free & (other.labels == label) & np.all(
                np.abs(other.boxes - box) <= atol + rtol * np.abs(other.boxes), axis=1)
            if ok.any():
                free[np.flatnonzero(ok)[0]] = False
                n += 1
        return n

    def agrees_with(self, other: "Detections", rtol: float, atol: float, tolerance: float = 0.1) -> bool:
        """The same boxes as ``other`` up to rounding: the counts differ, and boxes go unmatched, by at most
        ``max(2, tolerance * len(other))`` (boxes whose scores sit at the threshold, near-ties under fp16); a
        broken model matches next to none."""
        slack = max(2, int(tolerance * len(other)))
        return (abs(len(self) - len(other)) <= slack
                and self.count_matched(other, rtol, atol) >= len(other) - slack)


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


# The student's parts ``backend='compiled'`` runs through torch.compile, per device type. On a CPU only the image
# backbone pays for its compilation. Measured on 2 cores (r18 128x352, 6 cameras, one torch thread, eager and
# compiled calls alternating, cold inductor cache): the backbone alone saves 72 ms a set (1.30x) for 15 s of
# compilation; all five parts save 80 ms (1.34x) for 48 s. Each other part alone: head 6.5 ms for 25 s, bev_encoder
# 2.2 ms for 13 s, depth_net 1.2 ms for 18 s, image_neck 0.9 ms for 13 s. On CUDA all five, where the many small
# kernels of the head and the BEV encoder cost launch overhead (not measured here: no GPU).
COMPILED_PARTS: dict[str, tuple[str, ...]] = {
    "cpu": ("backbone",),
    "cuda": ("backbone", "image_neck", "depth_net", "bev_encoder", "head"),
}


def compiled_part_names(device: torch.device | str) -> tuple[str, ...]:
    """The student parts ``backend='compiled'`` compiles on ``device`` (:data:`COMPILED_PARTS`; other device
    types: the CUDA list)."""
    return COMPILED_PARTS.get(torch.device(device).type, COMPILED_PARTS["cuda"])


BACKENDS = ("eager", "compiled")


def compile_parts(parts: dict[str, torch.nn.Module], mode: str | None = None) -> dict[str, torch.nn.Module]:
    """``torch.compile`` (inductor, static shapes) of the student's convolutional parts for inference. Freezing is
    on (process-wide): the weights become constants the compiler folds and pre-packs for its convolutions (on a
    CPU the compiled parts are ~1.4x faster with it, slower without). The LSS pooling stays eager: its cached
    sparse index is Python, and under compilation it would fall back to the slower static pooling. ``mode``:
    ``torch.compile``'s mode (None: the default; ``bench_model`` also times ``reduce-overhead``, CUDA graphs)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return {name: torch.compile(m, dynamic=False, mode=mode) for name, m in parts.items()}


class Detector:
    """The camera student ready for inference on one device (see the module docstring).

    Args:
        checkpoint: student checkpoint path.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        precision: ``fp32`` | ``fp16`` (CUDA only: autocast).
        score_threshold: minimum score of a returned box (None: the model config's decode threshold).
        max_detections: at most this many boxes (None: the model config's).
        backend: ``eager`` | ``compiled`` (``torch.compile`` of the convolutional parts; call :meth:`warmup`
            before the first set, or the first set compiles).
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", precision: str = "fp32",
                 score_threshold: float | None = None, max_detections: int | None = None,
                 backend: str = "eager"):
        if precision not in ("fp32", "fp16"):
            raise DetectorError(f"precision '{precision}' is not supported: use fp32 or fp16")
        if backend not in BACKENDS:
            raise DetectorError(f"backend '{backend}' is not supported: use eager or compiled")
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise DetectorError(f"precision fp16 needs a CUDA device (device '{device}' resolved to "
                                f"{self.device}): use fp32")
        self.precision = precision
        self.backend = backend
        self.checkpoint = str(checkpoint)
        self.model = load_student(checkpoint, self.device)
        cfg = self.model.cfg
        self.cfg = cfg
        # Temporal students: the BEV features of past sets, kept once, warped into each new set's ego frame.
        self.history = BevHistory.for_config(cfg) if cfg.temporal.num_prev_frames else None
        # decode.velocity tracked: vx, vy from the boxes' motion across sets (needs each set's stamp and ego pose)
        self.tracker = VelocityTracker(cfg.class_names) if cfg.decode.velocity == "tracked" else None
        self.class_names: tuple[str, ...] = tuple(cfg.class_names)
        self.input_size: tuple[int, int] = tuple(cfg.input_size)
        self.score_threshold = float(cfg.decode.score_threshold if score_threshold is None else score_threshold)
        self.max_detections = int(cfg.decode.max_detections if max_detections is None else max_detections)
        self.transform = ImageTransform(self.input_size, cfg.image, self.device)
        self._bda = torch.eye(4, device=self.device).unsqueeze(0)
        self._bda_host = np.eye(4, dtype=np.float32)[None]
        # The threshold and cap apply in decoding: fewer NMS candidates, and greedy NMS keeps the same boxes above
        # the threshold either way (a lower-scored box never suppresses a higher one).
        self._decode_cfg = dataclasses.replace(cfg.decode, score_threshold=self.score_threshold,
                                               max_detections=self.max_detections)
        self.slots = SlotPool(self.transform, self.input_size, self.device)  # the network input, staged per camera
        self._eager_parts = {name: getattr(self.model, name) for name in compiled_part_names(self.device)}
        self._compiled_parts: dict[str, torch.nn.Module] = {}
        self._compiled_cameras: int | None = None  # camera count the compiled graphs were built for
        if backend == "compiled":
            self._compiled_parts = compile_parts(self._eager_parts)
        # rgb8 images arrive as read-only views on the message buffer; torch only reads them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    def describe(self) -> str:
        """One line: config name, device, precision, backend, input size, previous frames."""
        h, w = self.input_size
        t = self.cfg.temporal
        frames = (f", {t.num_prev_frames} previous frame(s) at {list(t.effective_offsets_s)} s"
                  if t.num_prev_frames else "")
        return (f"{self.cfg.name} on {self.device} {self.precision} {self.backend}, input {w}x{h}{frames}, "
                f"checkpoint {self.checkpoint}")

    def reset_history(self) -> None:
        """Forget the previous frames of a temporal model and the velocity tracks (time jumped back, a new
        drive); no-op otherwise."""
        if self.history is not None:
            self.history.clear()
        if self.tracker is not None:
            self.tracker.reset()

    # ---------------------------------------------------------------------------------------------- warm-up
    def warmup(self, num_cameras: int, iterations: int = 2) -> float:
        """Run ``iterations`` sets of zeros through the whole path (staging, forward, decoding) with ``num_cameras``
        cameras, so that start-up costs (``torch.compile``, CUDA kernels and allocator, first-call
        allocations) are paid here and not in the first real set. Returns the wall seconds it took. With the
        compiled backend the compiled graphs are checked against eager on these inputs (:class:`DetectorError`
        when they disagree or cannot be built)."""
        from .model.export import example_inputs

        t0 = time.perf_counter()
        _, K, cam2ego, _, _ = example_inputs(self.cfg, num_cameras)[:5]
        images = [np.zeros((900, 1600, 3), dtype=np.uint8)] * num_cameras
        Ks, Ts = K[0].double().numpy(), cam2ego[0].double().numpy()
        if self._compiled_parts:
            try:
                self._compiled_cameras = num_cameras
                got = self.detect(images, Ks, Ts, stamp_ns=0)
                self._compiled_cameras = None
                ref = self.detect(images, Ks, Ts, stamp_ns=0)
            except Exception as exc:  # noqa: BLE001 - inductor needs a C++ compiler (CPU) or triton (CUDA)
                raise DetectorError(f"backend 'compiled': torch.compile failed ({type(exc).__name__}: "
                                    f"{str(exc)[:300]}); use backend eager") from exc
            # fp16: the fused kernels round differently from eager's, and on the warm-up's blank images many
            # scores are near-ties, so boxes are matched (measured on an H200) rather than compared in order
            atol = 2e-2 if self.precision == "fp16" else 1e-2
            if not got.agrees_with(ref, rtol=1e-3, atol=atol):
                raise DetectorError("backend 'compiled': the compiled model's boxes differ from eager's on the "
                                    "warm-up inputs; use backend eager")
            self._compiled_cameras = num_cameras
        for _ in range(iterations):
            self.detect(images, Ks, Ts, stamp_ns=0)
        self.reset_history()
        return time.perf_counter() - t0

    # ---------------------------------------------------------------------------------------------- staging
    @property
    def max_slots(self) -> int:
        """Input slots staged ahead at most (the node: the set in the model + sets arriving)."""
        return self.slots.max_slots

    def acquire_slot(self, rows: int, create: bool = True) -> InputSlot | None:
        """A free :class:`~labeldistill_ros.input_slots.InputSlot` (:meth:`SlotPool.acquire`)."""
        return self.slots.acquire(rows, create)

    def release_slot(self, slot: InputSlot) -> None:
        self.slots.release(slot)

    def stage(self, slot: InputSlot, row: int, image: np.ndarray) -> None:
        """Preprocess one camera's ``(H, W, 3)`` uint8 RGB image into ``slot`` row ``row`` (:meth:`SlotPool.stage`)."""
        self.slots.stage(slot, row, image)

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB uint8 images -> (network input ``(1, N, 3, h, w)`` float32 on the device, ``ida (1, N, 4, 4)``),
        with the model's :class:`~labeldistill_ros.model.image_transform.ImageTransform` (a new tensor)."""
        slot = InputSlot(len(images), self.input_size, self.device)
        for i, img in enumerate(images):
            self.stage(slot, i, img)
        self.slots.wait_staged()
        return slot.x.unsqueeze(0), torch.as_tensor(slot.ida, dtype=torch.float32, device=self.device).unsqueeze(0)

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
        t0 = time.perf_counter()
        slot = self.acquire_slot(n)
        try:
            for i, img in enumerate(images):
                self.stage(slot, i, img)
            pre_ms = (time.perf_counter() - t0) * 1e3
            det = self.detect_slot(slot, list(range(n)), Ks, cam2target, stamp_ns=stamp_ns, ego_pose=ego_pose)
        finally:
            self.release_slot(slot)
        det.timing_ms["preprocess"] = det.timing_ms.get("preprocess", 0.0) + pre_ms
        return det

    def detect_slot(self, slot: InputSlot, rows: Sequence[int], Ks: Sequence[np.ndarray] | np.ndarray,
                    cam2target: Sequence[np.ndarray] | np.ndarray, stamp_ns: int | None = None,
                    ego_pose: np.ndarray | None = None,
                    after_forward: Callable[[], None] | None = None) -> Detections:
        """:meth:`detect` on a staged slot: ``rows`` = the slot rows of the set's cameras (all staged), in the
        order of ``Ks`` and ``cam2target``. ``timing_ms['preprocess']`` is only what was left to do here.

        ``after_forward()``: called once the forward is done and only host work (decoding) is left: on a CPU
        right after the forward, on CUDA after the candidates' transfer (the node closes its
        :class:`~labeldistill_ros.node.reception_gate.ReceptionGate` there)."""
        t0 = time.perf_counter()
        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            cand, events, missing_prev, t1, t2 = self.forward_candidates(
                slot, rows, Ks, cam2target, stamp_ns, ego_pose, after_forward=None if cuda else after_forward)
            cand = cand[0].cpu().numpy()  # the set's one device -> host transfer (and its only wait)
        if cuda and after_forward is not None:
            after_forward()
        slot.in_flight[:] = False  # the stream has passed everything staged for this set
        t_host = time.perf_counter()
        dec = select_detections(cand, self._decode_cfg)
        boxes = dec.boxes.astype(np.float64)
        if self.tracker is not None and stamp_ns is not None:
            boxes = apply_tracked_velocity(self.tracker, boxes, dec.labels, dec.scores, stamp_ns, ego_pose)
        t3 = time.perf_counter()
        if events:  # device times from events (read after the transfer: no extra wait)
            pre = (t1 - t0) * 1e3
            fwd = events[0].elapsed_time(events[1])
            post = events[1].elapsed_time(events[2]) + (t3 - t_host) * 1e3
        else:
            pre, fwd, post = (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3
        return Detections(boxes, dec.scores, dec.labels, self.class_names, dec.nonfinite,
                          {"preprocess": pre, "forward": fwd, "postprocess": post}, missing_prev)

    def forward_candidates(self, slot: InputSlot, rows: Sequence[int], Ks, cam2target, stamp_ns=None,
                           ego_pose=None, after_forward: Callable[[], None] | None = None
                           ) -> tuple[torch.Tensor, list, int, float, float]:
        """The device part of :meth:`detect_slot` (call under ``torch.inference_mode``): calibration to the
        device, forward, top-k candidates. Nothing here waits for the device (on CUDA: pinned non-blocking copies,
        the pooling key from host copies, the slot's preprocessing awaited on the stream, no data-dependent
        shapes); a new calibration's pooling index is the exception (built once, then cached). Returns
        ``(candidates (1, M, 12) on the device, CUDA timing events or [], previous-frame slots without history,
        host time before the forward, host time after it)``. ``after_forward()`` is called between the forward
        and the candidates' gather."""
        rows = list(rows)
        n = len(rows)
        missing = [r for r in rows if not slot.filled[r]]
        if missing:
            raise ValueError(f"slot rows {missing} were not staged")
        Ks = np.asarray(Ks, dtype=np.float64).reshape(n, 3, 3)
        T = np.asarray(cam2target, dtype=np.float64).reshape(n, 4, 4)
        cuda = self.device.type == "cuda"
        x = slot.x if rows == list(range(slot.rows)) else slot.x[rows]
        K32, T32 = Ks.astype(np.float32)[None], T.astype(np.float32)[None]
        ida32 = slot.ida[rows].astype(np.float32)[None]
        key = host_calibration_key(self.device, K32, T32, ida32, self._bda_host)
        K_t, T_t, ida_t = self.slots.to_device(K32, T32, ida32)
        events = []
        if cuda:
            stream = torch.cuda.current_stream(self.device)
            for r in rows:
                stream.wait_event(slot.ready[r])  # the rows' preprocessing (staging stream); no host wait
            events = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            events[0].record()
        t1 = time.perf_counter()
        missing_prev = 0
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.precision == "fp16"):
            with self._parts(n):
                if self.history is None:
                    heads = self.model(x.unsqueeze(0), K_t, T_t, ida_t, self._bda, calib_key=key).head_outputs
                else:
                    heads, missing_prev = self._temporal_forward(x.unsqueeze(0), K_t, T_t, ida_t, stamp_ns,
                                                                 ego_pose, key)
        if cuda:
            events[1].record()
        t2 = time.perf_counter()
        if after_forward is not None:
            after_forward()
        cand = gather_candidates(heads, self.cfg.head.task_groups, self.class_names, self.cfg.bev_grid,
                                 self._decode_cfg.max_candidates_per_task)
        if cuda:
            events[2].record()
        return cand, events, missing_prev, t1, t2

    def _parts(self, cameras: int):
        """Context: the compiled convolutional parts for a set of the warmed-up camera count, eager otherwise
        (a partial set never triggers a compilation in the node's path)."""
        detector = self

        class _Use:
            def __enter__(self):
                use = detector._compiled_parts if cameras == detector._compiled_cameras else detector._eager_parts
                for name, module in use.items():
                    setattr(detector.model, name, module)

            def __exit__(self, *exc):
                for name, module in detector._eager_parts.items():
                    setattr(detector.model, name, module)
        return _Use()

    def _temporal_forward(self, x, K, T, ida, stamp_ns, ego_pose, key=None) -> tuple[list[dict[str, torch.Tensor]], int]:
        """Lift this set once, take the previous frames from the history (this set's own BEV where none), run
        the trunk and head, keep this set's BEV. Returns (head outputs, previous-frame slots without history)."""
        if stamp_ns is None:
            raise ValueError("a temporal model needs each set's stamp_ns (and ego_pose) in detect()")
        t = self.cfg.temporal
        bev, depth = self.model.lift(x, K, T, ida, self._bda, calib_key=key)
        prev_bev, prev2curr, missing = self.history.select(stamp_ns, ego_pose, t.effective_offsets_s,
                                                           t.max_offset_error_s, current_bev=bev[0])
        out = self.model.forward_lifted(bev, depth, K, ida, self._bda, prev2curr.to(self.device),
                                        prev_bev.to(device=self.device, dtype=bev.dtype))
        self.history.push(stamp_ns, ego_pose, bev[0])
        return out.head_outputs, int(sum(missing))
