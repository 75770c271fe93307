"""The trainer's CSV log keeps every value: a column first seen in a later row widens the header; resume drops
the rows after the resumed step."""
from __future__ import annotations

import csv

from labeldistill_training.csv_log import CsvLogger


def read(path):
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return r.fieldnames, list(r)


def test_a_column_first_seen_later_is_kept(tmp_path):
    log = CsvLogger(tmp_path / "log.csv")
    log.log({"step": 1, "kind": "train", "loss": 2.5})
    log.log({"step": 2, "kind": "train", "loss": 2.0, "loss_kd": 0.5})
    log.log({"step": 2, "kind": "val", "NDS": 0.25})
    fields, rows = read(tmp_path / "log.csv")
    assert fields == ["step", "kind", "loss", "loss_kd", "NDS"]
    assert rows[0]["loss_kd"] == "" and rows[1]["loss_kd"] == "0.5" and rows[2]["NDS"] == "0.25"
    log.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_resume_drops_rows_after_the_resumed_step(tmp_path):
    log = CsvLogger(tmp_path / "log.csv")
    for s in range(1, 5):
        log.log({"step": s, "kind": "train", "loss": 1.0 / s})
    resumed = CsvLogger(tmp_path / "log.csv", resume_step=2)
    resumed.log({"step": 3, "kind": "train", "loss": 0.3, "loss_new": 1.0})
    fields, rows = read(tmp_path / "log.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3"] and fields[-1] == "loss_new"
