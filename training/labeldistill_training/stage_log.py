"""A stage's logs on rank 0: ``log.csv`` (:class:`~labeldistill_training.csv_log.CsvLogger`), its
``loss_curves.png``, TensorBoard scalars under ``tb/`` (when the ``tensorboard`` package is importable) and a
tqdm bar per epoch. Other ranks get a :class:`StageLog` that does nothing."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from labeldistill_training.csv_log import CsvLogger


class StageLog:
    """``enabled``: this process writes (rank 0). ``resume_step``: a resumed run keeps the rows up to it."""

    def __init__(self, out_dir: Path, enabled: bool, log_interval: int, progress: bool,
                 resume_step: Optional[int] = None) -> None:
        self.out_dir, self.enabled, self.log_interval = Path(out_dir), enabled, log_interval
        self.show_progress = enabled and progress
        self.csv = CsvLogger(self.out_dir / "log.csv", resume_step=resume_step) if enabled else None
        self.tb = _tensorboard(self.out_dir / "tb") if enabled else None
        self.bar = None

    def start_epoch(self, total: int, desc: str, done: int = 0) -> None:
        self.bar = _progress(self.show_progress, total, desc)
        if self.bar is not None and done:
            self.bar.update(done)

    def step(self, row: dict, last_of_epoch: bool) -> None:
        """One optimizer step; ``row``: ``epoch``, ``step``, ``lr``, ``loss`` and its parts, timings. Written every
        ``log_interval`` steps and at the last step of an epoch."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{row['loss']:.3f}")
        if self.csv is None or not (row["step"] % self.log_interval == 0 or last_of_epoch):
            return
        self.csv.log({"kind": "train", **row})
        if self.tb is not None:
            for k, v in row.items():
                if k.startswith("loss") or k == "lr":
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def end_epoch(self, row: Optional[dict]) -> None:
        """Close the bar; ``row`` (epoch means): one ``epoch`` row and a fresh loss-curve PNG."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.csv is not None and row is not None:
            self.csv.log({"kind": "epoch", **row})
            self.csv.plot(self.out_dir / "loss_curves.png")


def _tensorboard(log_dir: Path):
    """A TensorBoard ``SummaryWriter`` when the ``tensorboard`` package is installed, else ``None`` (CSV + PNG
    logging always happens)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed
        return None
    return SummaryWriter(str(log_dir))


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, dynamic_ncols=True, mininterval=1.0, leave=False)
