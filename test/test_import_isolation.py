"""The vehicle runtime never pulls in training code or nuscenes-devkit (a vehicle has neither)."""
from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("labeldistill_training", "training", "nuscenes")


def _modules_after(code: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                       cwd="/", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def _forbidden(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if m.split(".")[0] in FORBIDDEN)


def test_import_package_is_light_and_isolated():
    mods = _modules_after("import labeldistill_ros")
    assert _forbidden(mods) == []
    assert "torch" not in mods and "rclpy" not in mods, "importing the package must stay light"


def test_every_runtime_module_is_free_of_training_code():
    code = ("import importlib, pkgutil, labeldistill_ros\n"
            "for m in pkgutil.walk_packages(labeldistill_ros.__path__, 'labeldistill_ros.'):\n"
            "    importlib.import_module(m.name)")
    mods = _modules_after(code)
    assert _forbidden(mods) == []
    assert "labeldistill_ros.dds" in mods  # the walk really imported the submodules
