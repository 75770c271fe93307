"""Start-up failures of the console script `detector_node`: a bad checkpoint or configuration exits non-zero
with one clear line naming what to fix (no traceback, no half-started node)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from node_support import make_checkpoint

pytestmark = pytest.mark.timeout(180)
SCRIPT = Path(sys.executable).parent / "detector_node"


def test_bad_checkpoints_and_configs_exit_with_a_clear_message(tmp_path):
    assert SCRIPT.is_file(), "console script missing: run tools/setup_env.py (pip install -e .)"
    good = make_checkpoint(tmp_path / "good.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[:5000])

    def params_file(name, values):
        f = tmp_path / f"{name}.yaml"
        f.write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}))
        return ["--params-file", str(f)]

    cases = {
        "no checkpoint": ([], 2, "parameter 'checkpoint' = '' is invalid: is required"),
        "missing file": (["-p", f"checkpoint:={tmp_path / 'nope.pt'}"], 2, "no such file"),
        "corrupt checkpoint": (["-p", f"checkpoint:={corrupt}"], 1,
                               f"cannot start: DetectorError: checkpoint '{corrupt}' cannot be loaded"),
        "not a checkpoint": (["-p", f"checkpoint:={tmp_path / 'corrupt.yaml'}"], 1, "cannot be loaded"),
        "bad value": (params_file("bad", {"checkpoint": str(good), "sync_slop_s": -0.1}), 2,
                      "parameter 'sync_slop_s' = -0.1 is invalid: must be > 0.0"),
        "typo": (params_file("typo", {"checkpoint": str(good), "sync_slop": 0.05}), 2,
                 "unknown parameter(s) ['sync_slop']"),
        "fp16 on cpu": (["-p", f"checkpoint:={good}", "-p", "device:=cpu", "-p", "precision:=fp16"], 2,
                        "fp16 needs device cuda"),
        "wrong type": (["-p", f"checkpoint:={good}", "-p", "max_detections:=many"], 2, "must be an integer"),
    }
    (tmp_path / "corrupt.yaml").write_text("a: 1\n")
    procs = {name: subprocess.Popen([str(SCRIPT), "--ros-args", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for name, (args, _, _) in cases.items()}
    for name, (_, rc, text) in cases.items():
        out, _ = procs[name].communicate(timeout=150)
        assert procs[name].returncode == rc, f"{name}: exit {procs[name].returncode}\n{out}"
        assert text in out, f"{name}: message missing\n{out}"
        assert "Traceback" not in out and "labeldistill_detector: cannot start:" in out, f"{name}:\n{out}"
