"""launch/detector.launch.py without the `launch` package: parsed with ast (the documented arguments, the shipped
config/detector.yaml as the default, the console script, the DDS profiles and the RViz config), and executed with a
minimal stand-in of `launch`/`launch_ros` that mirrors their argument semantics (a declared default fills an
argument that was not given, a missing required argument or a value outside `choices` is an error,
LaunchConfiguration reads the context). The node parameters it produces are handed to the real rcl parser the way
launch_ros does (the parameter file, then a file of the overrides), to show which values the node ends up with."""
from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from labeldistill_ros.dds import PROFILES
from labeldistill_ros.node import params

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "detector.launch.py"
NODE_ARGUMENTS = ("checkpoint", "device", "precision", "backend", "publish_objects", "use_sim_time")
DOCUMENTED = {*NODE_ARGUMENTS, "config", "rviz", "namespace", "topic_remaps", "dds_profile"}


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


def test_choices_match_the_node_parameters(launch_file):
    args = _declared()
    for name in NODE_ARGUMENTS:  # empty: the config file's value stays
        assert ast.literal_eval(_kw(args[name], "default_value")) == "", name
        assert _kw(args[name], "choices") is None, f"{name}: choices would forbid the empty default or cuda:N"
    # the launch file accepts exactly what the node's parameter checks accept
    checks = launch_file.NODE_ARGUMENTS
    assert set(checks) == set(NODE_ARGUMENTS)
    for name, values in (("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "gpu", "cuda:", "cuda:x", "CUDA"]),
                         ("precision", ["fp32", "fp16", "int8", "FP16"]),
                         ("backend", ["eager", "compiled", "aot", "Eager", ""])):
        for v in values:
            assert bool(checks[name][0].fullmatch(v)) == (params.SPECS[name].check(v) is None), (name, v)
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
    assert set(NODE_ARGUMENTS) <= set(_strings(tree))
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


# --------------------------------------------------------------------------------------------------------------
# Executing the launch file with a minimal stand-in of launch / launch_ros
# --------------------------------------------------------------------------------------------------------------
class _Context:
    """launch.LaunchContext as far as the launch file uses it: the launch configurations."""

    def __init__(self, given: dict[str, str]):
        self.launch_configurations = dict(given)


class _Action:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _DeclareLaunchArgument(_Action):
    """launch.actions.DeclareLaunchArgument: the default fills an argument that was not given; no default makes it
    required; a value outside ``choices`` is an error (checked for the default at construction as well)."""

    def __init__(self, name, default_value=None, description=None, choices=None, **kwargs):
        super().__init__(name, default_value=default_value, description=description, choices=choices, **kwargs)
        self.name, self.default_value, self.choices = name, default_value, choices
        if choices is not None and default_value is not None and default_value not in choices:
            raise RuntimeError(f"default_value '{default_value}' of '{name}' is not in its choices {choices}")

    def execute(self, context: _Context) -> None:
        conf = context.launch_configurations
        if self.name not in conf:
            if self.default_value is None:
                raise RuntimeError(f"Required launch argument '{self.name}' was not provided")
            conf[self.name] = self.default_value
        if self.choices is not None and conf[self.name] not in self.choices:
            raise RuntimeError(f"argument '{self.name}': '{conf[self.name]}' is not one of {self.choices}")


class _LaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context: _Context) -> str:
        if self.name not in context.launch_configurations:
            raise RuntimeError(f"launch configuration '{self.name}' does not exist")
        return context.launch_configurations[self.name]


class _LaunchDescription:
    def __init__(self, entities):
        self.entities = list(entities)


def _stand_in_modules() -> dict[str, types.ModuleType]:
    mods = {name: types.ModuleType(name) for name in
            ("launch", "launch.actions", "launch.conditions", "launch.substitutions", "launch_ros",
             "launch_ros.actions")}
    mods["launch"].LaunchDescription = _LaunchDescription
    actions = mods["launch.actions"]
    actions.DeclareLaunchArgument = _DeclareLaunchArgument
    actions.OpaqueFunction = type("OpaqueFunction", (_Action,), {})
    actions.SetEnvironmentVariable = type("SetEnvironmentVariable", (_Action,), {})
    mods["launch.conditions"].IfCondition = type("IfCondition", (_Action,), {})
    mods["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration
    mods["launch_ros.actions"].Node = type("Node", (_Action,), {})
    return mods


@pytest.fixture
def launch_file(monkeypatch):
    """The launch file as a module, importing the stand-ins; the package share directory is the checkout."""
    import ament_index_python.packages as aip

    for name, mod in _stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(aip, "get_package_share_directory", lambda pkg: str(REPO) if pkg == "labeldistill_ros"
                        else pytest.fail(f"share directory of {pkg} asked"))
    spec = importlib.util.spec_from_file_location("detector_launch", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def launch(mod, **given: str) -> list[_Action]:
    """What `ros2 launch labeldistill_ros detector.launch.py k:=v ...` would start: the actions of the opaque
    function, after every declared argument took its value."""
    ld = mod.generate_launch_description()
    ctx = _Context(given)
    for entity in ld.entities:
        if isinstance(entity, _DeclareLaunchArgument):
            entity.execute(ctx)
    unknown = set(given) - {e.name for e in ld.entities if isinstance(e, _DeclareLaunchArgument)}
    assert not unknown, f"not declared: {unknown}"
    out = []
    for entity in ld.entities:
        if type(entity).__name__ == "OpaqueFunction":
            out += entity.kwargs["function"](ctx)
    return out


def _nodes(actions) -> dict[str, _Action]:
    return {a.kwargs["executable"]: a for a in actions if type(a).__name__ == "Node"}


def node_parameters(node_action, tmp_path) -> tuple[params.NodeParams, bool]:
    """The node's parameters as rcl reads them from what the launch file passes (launch_ros: a path is a
    --params-file; a dict is written to a parameter file of its own, after the first), and its use_sim_time."""
    import rclpy
    import yaml

    args = []
    for i, item in enumerate(node_action.kwargs["parameters"]):
        if isinstance(item, dict):
            path = tmp_path / f"launch_params_{i}.yaml"
            path.write_text(yaml.safe_dump({"/**": {"ros__parameters": item}}))
            item = str(path)
        args += ["--params-file", str(item)]
    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["detector_node", "--ros-args", *args])
    try:
        node = rclpy.create_node(node_action.kwargs["name"], context=ctx)
        params.declare(node)
        p = params.from_node(node, check_files=False)
        sim = node.get_parameter("use_sim_time").value
        node.destroy_node()
        return p, sim
    finally:
        rclpy.try_shutdown(context=ctx)


@pytest.fixture
def vehicle_config(tmp_path) -> Path:
    """A copy of the shipped config with the second GPU, fp16, a checkpoint and sim time set in the file."""
    import yaml

    doc = yaml.safe_load((REPO / "config" / "detector.yaml").read_text())
    doc["/**"]["ros__parameters"].update(device="cuda:1", precision="fp16", checkpoint="/models/from_config.pt",
                                         use_sim_time=True, backend="compiled", publish_objects=True)
    path = tmp_path / "vehicle.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_launch_arguments_not_given_leave_the_config_values(launch_file, vehicle_config, tmp_path):
    actions = launch(launch_file, config=str(vehicle_config))
    det = _nodes(actions)["detector_node"]
    assert det.kwargs["parameters"] == [str(vehicle_config)], "nothing may be passed besides the config file"
    p, sim = node_parameters(det, tmp_path)
    assert (p.device, p.precision, p.checkpoint, sim) == ("cuda:1", "fp16", "/models/from_config.pt", True)
    assert (p.backend, p.publish_objects) == ("compiled", True)
    assert "rviz2" in _nodes(actions) and _nodes(actions)["rviz2"].kwargs["parameters"] == []


def test_launch_arguments_given_override_the_config(launch_file, vehicle_config, tmp_path):
    actions = launch(launch_file, config=str(vehicle_config), device="cuda:2", checkpoint="/models/arg.pt",
                     use_sim_time="false")
    det = _nodes(actions)["detector_node"]
    p, sim = node_parameters(det, tmp_path)
    assert (p.device, p.precision, p.checkpoint, sim) == ("cuda:2", "fp16", "/models/arg.pt", False)
    assert _nodes(actions)["rviz2"].kwargs["parameters"] == [{"use_sim_time": False}]
    p, _ = node_parameters(_nodes(launch(launch_file, config=str(vehicle_config), device="cpu",
                                         precision="fp32"))["detector_node"], tmp_path)
    assert (p.device, p.precision, p.checkpoint) == ("cpu", "fp32", "/models/from_config.pt")
    assert (p.backend, p.publish_objects) == ("compiled", True)  # not given: the config's


@pytest.mark.parametrize("given,expected", [
    ({"backend": "eager"}, ("eager", True)),
    ({"publish_objects": "false"}, ("compiled", False)),
    ({"backend": "eager", "publish_objects": "False"}, ("eager", False)),
])
def test_backend_and_publish_objects_arguments_override_only_when_given(launch_file, vehicle_config, tmp_path,
                                                                        given, expected):
    det = _nodes(launch(launch_file, config=str(vehicle_config), **given))["detector_node"]
    assert det.kwargs["parameters"][1] == {k: (v if k == "backend" else v.lower() == "true") for k, v in given.items()}
    p, _ = node_parameters(det, tmp_path)
    assert (p.backend, p.publish_objects) == expected
    shipped, _ = node_parameters(_nodes(launch(launch_file, checkpoint="/m.pt", backend="compiled",
                                               publish_objects="true"))["detector_node"], tmp_path)
    assert (shipped.backend, shipped.publish_objects) == ("compiled", True)


def test_the_shipped_config_with_a_checkpoint_argument(launch_file, tmp_path):
    actions = launch(launch_file, checkpoint="/models/student.pt", dds_profile="local",
                     topic_remaps="/CAM_FRONT/image:=/front/image_rect")
    det = _nodes(actions)["detector_node"]
    assert det.kwargs["parameters"][0] == str(REPO / "config" / "detector.yaml")
    assert det.kwargs["remappings"] == [("/CAM_FRONT/image", "/front/image_rect")]
    p, sim = node_parameters(det, tmp_path)
    assert p == params.NodeParams(checkpoint="/models/student.pt") and sim is False
    env = {a.args[0]: a.args[1] for a in actions if type(a).__name__ == "SetEnvironmentVariable"}
    assert Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).is_file()
    assert env["FASTRTPS_DEFAULT_PROFILES_FILE"] == env["FASTDDS_DEFAULT_PROFILES_FILE"]  # Humble/Jazzy read this
    # no checkpoint anywhere: nothing is passed and the node refuses to start with the fix in its message
    p, _ = node_parameters(_nodes(launch(launch_file))["detector_node"], tmp_path)
    with pytest.raises(params.ParamError, match="checkpoint.*is required"):
        params.from_dict({"checkpoint": p.checkpoint})


@pytest.mark.parametrize("given,match", [
    ({"device": "gpu"}, r"device:='gpu' is invalid: must be empty \(the config file's value\) or match"),
    ({"precision": "int8"}, "precision:='int8' is invalid"),
    ({"use_sim_time": "yes"}, "use_sim_time:='yes' is invalid"),
    ({"backend": "aot"}, "backend:='aot' is invalid"),
    ({"publish_objects": "1"}, "publish_objects:='1' is invalid"),
    ({"dds_profile": "fast"}, "'fast' is not one of"),
])
def test_bad_launch_arguments_are_refused(launch_file, given, match):
    with pytest.raises(RuntimeError, match=match):
        launch(launch_file, checkpoint="/models/student.pt", **given)
