"""Packaging: a built wheel and a colcon-style install carry launch/config files to share/labeldistill_ros,
and the training code is importable only under its own collision-free name ``labeldistill_training``."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = "labeldistill_ros"
SOURCES = ["setup.py", "setup.cfg", "package.xml", "README.md", "resource", "launch", "config",
           PKG, "training"]


def _data_files() -> list[str]:
    """Every file under launch/ and config/ (what must land in share/labeldistill_ros)."""
    out = []
    for top in ("launch", "config"):
        out += [str(p.relative_to(REPO)) for p in (REPO / top).rglob("*") if p.is_file()]
    return sorted(out)


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """The package sources copied out, so builds never write into the checkout."""
    dst = tmp_path_factory.mktemp("src") / PKG
    dst.mkdir()
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / name)
    return dst


def _run(cmd, cwd):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_wheel_carries_share_files_and_training_under_its_own_name(source_copy, tmp_path):
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path,
          source_copy], cwd=tmp_path)
    (wheel,) = tmp_path.glob(f"{PKG}-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = next(n.split("/data/")[0] for n in names if ".data/data/" in n) + "/data/share/" + PKG
    for rel in _data_files() + ["package.xml"]:
        assert f"{data}/{rel}" in names, f"{rel} is not installed to share/{PKG}"
    assert f"{data}/launch/detector.launch.py" in names and f"{data}/config/detector.yaml" in names
    marker = next(n for n in names if n.endswith(f"share/ament_index/resource_index/packages/{PKG}"))
    assert marker
    assert "labeldistill_training/__init__.py" in names
    assert not any(n.startswith("training/") for n in names), "training/ would collide in site-packages"
    assert f"{PKG}/__init__.py" in names


def test_colcon_style_install(source_copy, tmp_path):
    """What colcon's ament_python build runs without --symlink-install: setup.py build + install."""
    prefix, build = tmp_path / "install", tmp_path / "build"
    build.mkdir()
    _run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", build, "build", "--build-base", build,
          "install", "--prefix", prefix, "--record", build / "install.log",
          "--single-version-externally-managed"], cwd=source_copy)
    site = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    share = prefix / "share" / PKG
    for rel in _data_files():
        assert (share / rel).is_file(), f"colcon install lacks share/{PKG}/{rel}"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PKG).is_file()
    code = ("import labeldistill_ros, labeldistill_training, importlib.util, sys; "
            "print(labeldistill_ros.__file__); print(labeldistill_training.__file__); "
            "print(importlib.util.find_spec('training'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    ros_file, training_file, training_spec = r.stdout.split("\n")[:3]
    assert ros_file.startswith(str(site)) and training_file.startswith(str(site))
    assert training_spec == "None"


def test_editable_install_imports_training_from_the_checkout():
    code = ("import labeldistill_training, importlib.util; print(labeldistill_training.__file__); "
            "print(importlib.util.find_spec('training'))")
    r = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    path, spec = r.stdout.split("\n")[:2]
    assert Path(path) == REPO / "training" / "__init__.py"
    assert spec == "None", "a top-level 'training' package is importable: it could collide in site-packages"


def test_setup_cfg_puts_executables_where_ros2_run_looks():
    text = (REPO / "setup.cfg").read_text()
    assert "script_dir=$base/lib/labeldistill_ros" in text and "install_scripts=$base/lib/labeldistill_ros" in text
