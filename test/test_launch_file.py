"""launch/detector.launch.py cannot run here (no `launch` package): parse it with ast and check it declares the
documented arguments, defaults to the shipped config/detector.yaml (which loads and validates with the node's
params module), starts the node's console script and applies the shipped DDS profiles and RViz config."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from labeldistill_ros.dds import PROFILES
from labeldistill_ros.node import params

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "detector.launch.py"
DOCUMENTED = {"config", "checkpoint", "device", "precision", "use_sim_time", "rviz", "namespace", "topic_remaps",
              "dds_profile"}


def _tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def _declared() -> dict[str, ast.Call]:
    out = {}
    for node in ast.walk(_tree()):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            out[ast.literal_eval(node.args[0])] = node
    return out


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _strings(node) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_declares_every_documented_argument_with_a_description():
    args = _declared()
    assert set(args) == DOCUMENTED
    for name, call in args.items():
        assert _kw(call, "description") is not None, f"launch argument '{name}' has no description"


def test_choices_match_the_node_parameters():
    args = _declared()
    device = ast.literal_eval(_kw(args["device"], "choices"))
    precision = ast.literal_eval(_kw(args["precision"], "choices"))
    for d in device:
        assert params.SPECS["device"].check(d) is None
    assert set(precision) == {"fp32", "fp16"} and params.SPECS["precision"].check("fp16") is None
    assert set(ast.literal_eval(_kw(args["dds_profile"], "choices"))) == set(PROFILES) | {"none"}
    src = LAUNCH.read_text()
    for profile, file in PROFILES.items():
        assert f'"{profile}": "{file}"' in src and (REPO / "config" / "dds" / file).is_file()


def test_default_config_is_the_shipped_detector_yaml_and_it_validates(tmp_path):
    default = _kw(_declared()["config"], "default_value")
    assert _strings(default)[-2:] == ["config", "detector.yaml"]
    ckpt = tmp_path / "student.pt"
    ckpt.write_bytes(b"x")
    p = params.load_params_file(REPO / "config" / "detector.yaml", overrides={"checkpoint": str(ckpt)})
    assert p.camera_names == params.NUSCENES_CAMERAS and p.target_frame == "base_link"
    assert p.input_reliability == "best_effort" and p.image_transport == "raw"
    # The shipped file leaves checkpoint empty on purpose: the launch argument fills it.
    with pytest.raises(params.ParamError, match="checkpoint"):
        params.load_params_file(REPO / "config" / "detector.yaml")


def test_it_starts_the_console_script_with_the_config_and_overrides():
    tree = _tree()
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"]
    det = next(n for n in nodes if "detector_node" in _strings(n))
    assert ast.literal_eval(_kw(det, "executable")) == "detector_node"
    assert ast.literal_eval(_kw(det, "name")) == params.NODE_NAME
    assert {"checkpoint", "device", "precision", "use_sim_time"} <= set(_strings(tree))
    assert "detector_node = labeldistill_ros.node.detector_node:main" in (REPO / "setup.py").read_text()
    rviz = next(n for n in nodes if "rviz2" in _strings(n))
    assert "labeldistill.rviz" in _strings(rviz) and (REPO / "config" / "labeldistill.rviz").is_file()


def test_rviz_config_shows_markers_tf_and_the_six_cameras():
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "labeldistill.rviz").read_text())["Visualization Manager"]
    assert cfg["Global Options"]["Fixed Frame"] == "base_link"
    displays = {d["Class"].split("/")[-1]: d for d in cfg["Displays"]}
    assert displays["MarkerArray"]["Topic"]["Value"] == f"/{params.NODE_NAME}/output/markers"
    assert "TF" in displays
    images = [d for d in cfg["Displays"] if d["Class"].endswith("/Image")]
    assert [d["Topic"]["Value"] for d in images] == params.NodeParams().image_topics
