"""Packaging: a built wheel and a colcon-style install carry launch/config files to share/labeldistill_ros,
the training code is importable only under its own collision-free name ``labeldistill_training``, and package.xml
declares every package the node, the bag player and the launch file import or start at run time."""
from __future__ import annotations

import ast
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
