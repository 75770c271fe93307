"""Packaging: a built wheel and a colcon-style install (with and without --symlink-install, i.e. setup.py develop)
carry launch/config files to share/labeldistill_ros and install the vehicle runtime only; the training code is its
own distribution in training/ whose folder path is its import path (``labeldistill_training``: collision-free in
site-packages), working as a wheel, an editable install and a develop-style install with its console scripts; and
package.xml declares every package the node, the bag player and the launch file import or start at run time."""
from __future__ import annotations

import ast
import os
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


def test_wheels_carry_share_files_and_training_under_its_own_name(source_copy, tmp_path):
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
    assert f"{PKG}/__init__.py" in names
    assert not any(n.startswith(("labeldistill_training/", "training/")) for n in names), \
        "the vehicle runtime's wheel carries no training code"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path,
          source_copy / "training"], cwd=tmp_path)
    (twheel,) = tmp_path.glob("labeldistill_training-*.whl")
    tnames = zipfile.ZipFile(twheel).namelist()
    assert "labeldistill_training/__init__.py" in tnames and "labeldistill_training/trainer.py" in tnames
    assert not any(n.startswith("training/") for n in tnames), "training/ would collide in site-packages"
    entry = next(n for n in tnames if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(twheel).read(entry).decode()
    for cmd in ("labeldistill-train", "labeldistill-synth", "labeldistill-nusc2bag", "labeldistill-bag-eval"):
        assert f"{cmd} = labeldistill_training." in scripts


def test_colcon_style_install(source_copy, tmp_path):
    """What colcon's ament_python build runs without --symlink-install: setup.py build + install. A vehicle build
    installs the runtime only (training/ holds a COLCON_IGNORE and is not part of the root package)."""
    assert (source_copy / "training" / "COLCON_IGNORE").is_file()
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
    code = ("import labeldistill_ros, importlib.util; print(labeldistill_ros.__file__); "
            "print(importlib.util.find_spec('labeldistill_training')); print(importlib.util.find_spec('training'))")
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    ros_file, training_spec, bare_spec = r.stdout.split("\n")[:3]
    assert ros_file.startswith(str(site)) and training_spec == "None" and bare_spec == "None"
    assert (prefix / "lib" / PKG / "detector_node").is_file() or (prefix / "bin" / "detector_node").is_file()


def test_develop_style_install_imports_training_and_runs_its_console_script(source_copy, tmp_path):
    """``setup.py develop`` (what colcon build --symlink-install runs) of training/: it imports from the sources
    (folder path = import path) and a training console script runs (it failed with ModuleNotFoundError when
    training/ was mapped to its import name by package_dir)."""
    site = tmp_path / "site"
    site.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    # The runtime's own develop needs setup.cfg's [develop] script_dir, which only the classic setuptools of a
    # ROS install (Humble 59, Jazzy 68) accepts; here it is put on the path as its develop would.
    src = source_copy / "training"
    for stale in src.glob("*.egg-info"):  # the checkout's own editable install left these
        shutil.rmtree(stale)
    r = subprocess.run([sys.executable, "setup.py", "-q", "develop", "--no-deps", "--install-dir", site],
                       cwd=src, capture_output=True, text=True, env={**env, "PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (site / "runtime.pth").write_text(str(source_copy) + "\n")
    # the install dir is a site dir (as colcon's setup scripts make it): its .pth / egg-links are processed
    code = (f"import site; site.addsitedir({str(site)!r}); import labeldistill_ros, labeldistill_training; "
            "print(labeldistill_ros.__file__); print(labeldistill_training.__file__)")
    # -S: the test venv's own editable installs (of the checkout) stay out of the way
    r = subprocess.run([sys.executable, "-S", "-c", code], cwd="/", capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    ros_file, training_file = r.stdout.split("\n")[:2]
    assert Path(ros_file) == source_copy / PKG / "__init__.py"
    assert Path(training_file) == source_copy / "training" / "labeldistill_training" / "__init__.py"
    # classic setuptools (a vehicle's colcon) writes scripts into the install dir, setuptools >= 80 into its bin/
    script = next(p for p in (site / "bin" / "labeldistill-train", site / "labeldistill-train") if p.is_file())
    run = (f"import site, sys, runpy; site.addsitedir({str(site)!r}); sys.argv = ['labeldistill-train', '--help']; "
           f"runpy.run_path({str(script)!r}, run_name='__main__')")
    deps = [p for p in sys.path if p.endswith("site-packages")]  # torch & co., without their .pth files
    r = subprocess.run([sys.executable, "-S", "-c", run], cwd="/", capture_output=True, text=True,
                       env={**env, "PYTHONPATH": os.pathsep.join([str(site), *deps])})
    assert r.returncode == 0 and "--stage" in r.stdout, r.stdout[-1500:] + r.stderr[-2000:]


def test_editable_install_imports_training_from_the_checkout():
    code = ("import labeldistill_training, importlib.util; print(labeldistill_training.__file__); "
            "print(importlib.util.find_spec('training'))")
    r = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    path, spec = r.stdout.split("\n")[:2]
    assert Path(path) == REPO / "training" / "labeldistill_training" / "__init__.py"
    assert spec == "None", "a top-level 'training' package is importable: it could collide in site-packages"


def test_setup_cfg_puts_executables_where_ros2_run_looks():
    text = (REPO / "setup.cfg").read_text()
    assert "script_dir=$base/lib/labeldistill_ros" in text and "install_scripts=$base/lib/labeldistill_ros" in text


# --------------------------------------------------------------------------------------------------------------
# package.xml: every package the node, the bag player and the launch file need at run time is an exec_depend
# --------------------------------------------------------------------------------------------------------------
# Python modules that are not ROS packages -> their rosdep keys. ROS packages are imported under their own name.
ROSDEP_KEYS = {"numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml", "PIL": "python3-pil",
               "tqdm": "python3-tqdm"}
PIP_ONLY = {"torch", "rosbags"}  # no rosdep keys: installed with pip (README.md), named in package.xml's comment
RUNTIME_ENTRIES = ["labeldistill_ros.node.detector_node", "labeldistill_ros.bag.player"]  # console scripts


def _package_xml():
    import xml.etree.ElementTree as ET

    return ET.parse(REPO / "package.xml").getroot()


def _module_file(name: str) -> Path | None:
    p = REPO / Path(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def _external_imports(entries: list[str]) -> set[str]:
    """Top-level names of every non-stdlib module imported (also lazily, inside functions) by ``entries`` and the
    labeldistill_ros modules they import, transitively (parent packages' __init__ included)."""
    seen, external, todo = set(), set(), list(entries)
    while todo:
        mod = todo.pop()
        path = _module_file(mod)
        if mod in seen or path is None:
            continue
        seen.add(mod)
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        pkg = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == PKG:
                    todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    external.add(top)
    return external


def _launch_needs() -> set[str]:
    """Modules the launch file imports, packages whose executables it starts, and the RViz plugin packages of the
    shipped RViz config (rviz_common is rviz2's own library)."""
    import re

    tree = ast.parse((REPO / "launch" / "detector.launch.py").read_text())
    out = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
    out |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"):
        pkg = next(k.value for k in call.keywords if k.arg == "package")
        if isinstance(pkg, ast.Constant):
            out.add(pkg.value)
    rviz = (REPO / "config" / "labeldistill.rviz").read_text()
    out |= set(re.findall(r"Class: (\w+)/", rviz)) - {"rviz_common"}
    return {m for m in out if m not in sys.stdlib_module_names} - {PKG}


def test_package_xml_declares_everything_imported_or_started_at_run_time():
    from labeldistill_ros.node.ros_compat import OPTIONAL  # imported with importlib where installed

    root = _package_xml()
    exec_deps = {e.text.strip() for tag in ("exec_depend", "depend") for e in root.iter(tag)}
    needed = _external_imports(RUNTIME_ENTRIES) | set(OPTIONAL) | _launch_needs()
    assert {"rclpy", "torch", "cv2", "vision_msgs", "ament_index_python", "launch_ros", "rviz2",
            "rviz_default_plugins", "tf2_ros", "rcl_interfaces"} <= needed  # the scan itself works
    missing = sorted(ROSDEP_KEYS.get(m, m) for m in needed - PIP_ONLY if ROSDEP_KEYS.get(m, m) not in exec_deps)
    assert not missing, f"package.xml lacks <exec_depend> for {missing} (imported or started at run time)"
    comment = "".join(c.text for c in _comments(REPO / "package.xml"))
    for pip in PIP_ONLY:
        assert pip in comment, f"{pip} is a pip dependency: say so in package.xml"
    assert root.get("format") == "3" and root.findtext("name") == PKG
    assert root.find("export/build_type").text == "ament_python"


def _comments(path: Path) -> list:
    import xml.etree.ElementTree as ET

    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    return [e for e in ET.parse(path, parser).getroot().iter() if e.tag is ET.Comment]


def test_device_runtime_set_up_refuses_any_python_but_3_12():
    """``tools/setup_env.py --device-runtime`` builds the cp312 ROS runtime for the lent GPU machine (whose python3 is
    3.12): run with this 3.11 interpreter it stops at its first step, saying which Python it needs, before creating
    or installing anything."""
    venv = REPO / ".venv-device"
    existed = venv.exists()
    r = subprocess.run([sys.executable, str(REPO / "tools" / "setup_env.py"), "--device-runtime"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "FAILED at step 1/5 'venv': --device-runtime needs Python 3.12" in r.stdout, r.stdout + r.stderr
    assert venv.exists() == existed
