"""The trainer's ``log.csv`` (resume-aware: rows after the resumed step are dropped) and its loss-curve PNG."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional


class CsvLogger:
    """Appends rows to ``log.csv``; on resume the rows after the resumed step are dropped. Plots the losses."""

    def __init__(self, path: Path, resume_step: Optional[int] = None) -> None:
        self.path = Path(path)
        self.fields: Optional[list[str]] = None
        rows = []
        if self.path.is_file() and resume_step is not None:
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                rows = [r for r in reader if int(float(r["step"])) <= resume_step]
        elif self.path.is_file():
            self.path.unlink()
        if rows and self.fields:
            with open(self.path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(rows)
        elif self.path.is_file():
            self.path.unlink()
            self.fields = None

    def log(self, row: dict) -> None:
        """Append ``row``; a column not seen before widens the header (earlier rows get it empty): no value is
        ever dropped (e.g. an evaluation row after the training rows, a loss term that starts later)."""
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        if self.fields is None:
            self.fields = list(row)
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writeheader()
        new = [k for k in row if k not in self.fields]
        if new:
            with open(self.path, newline="") as f:
                old_rows = list(csv.DictReader(f))
            self.fields = list(self.fields) + new
            tmp = self.path.with_name(".tmp_" + self.path.name)
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(old_rows)
            os.replace(tmp, self.path)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)

    def plot(self, png: Path) -> None:
        """Loss curves (every ``loss*`` column against the step) to a PNG with matplotlib (Agg)."""
        if not self.path.is_file():
            return
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover - matplotlib is in the train extra
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("kind") == "train"]
        if not rows:
            return
        keys = [k for k in rows[0] if k.startswith("loss")]
        steps = [int(float(r["step"])) for r in rows]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for k in keys:
            vals = [float(r[k]) if r.get(k) not in (None, "") else float("nan") for r in rows]
            ax.plot(steps, vals, label=k, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(self.path.parent.name)
        fig.tight_layout()
        tmp = Path(png).with_name(".tmp_" + Path(png).name)
        fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        os.replace(tmp, png)
