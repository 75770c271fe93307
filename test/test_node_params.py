"""Node parameters: one table, defaults equal to the shipped YAML, every error names the parameter and the fix,
and the rclpy declaration reads values back (including ints given for floats)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from labeldistill_ros.node import params

pytestmark = pytest.mark.timeout(30)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ckpt(tmp_path) -> str:
    p = tmp_path / "s.pt"
    p.write_bytes(b"x")
    return str(p)


def test_shipped_yaml_sets_every_lead_parameter_to_the_code_defaults():
    doc = yaml.safe_load((REPO / "config" / "detector.yaml").read_text())["/**"]["ros__parameters"]
    defaults = params.NodeParams()
    for name, value in doc.items():
        assert name in params.SPECS, f"config/detector.yaml sets unknown parameter {name}"
        assert getattr(defaults, name) == value, f"default of {name} differs from config/detector.yaml"


@pytest.mark.parametrize("values,match", [
    ({"sync_slop_s": -1.0}, r"parameter 'sync_slop_s' = -1.0 is invalid: must be > 0.0\. Fix: .*-p sync_slop_s:="),
    ({"score_threshold": 1.5}, "'score_threshold' = 1.5 is invalid: must be <= 1.0"),
    ({"device": "gpu"}, "must be auto, cpu, cuda or cuda:N"),
    ({"missing_camera_policy": "wait"}, r"must be one of \['drop_set', 'skip_camera'\]"),
    ({"max_detections": 2.5}, "must be an integer"),
    ({"publish_markers": "yes"}, "must be true or false"),
    ({"camera_names": "CAM_FRONT"}, "must be a list of strings"),
    ({"image_topics": ["/a"]}, r"'image_topics' .* must have one entry per camera in camera_names \(6 cameras\)"),
    ({"camera_names": ["A", "A"], "image_topics": ["/a", "/b"], "camera_info_topics": ["/c", "/d"]},
     "duplicate"),
    ({"image_topics": ["/a b"] * 6}, "invalid topic names"),
    ({"sync_timeout_s": 0.01}, r"must be >= sync_slop_s \(0.06\)"),
    ({"precision": "fp16", "device": "cpu"}, "fp16 needs device cuda"),
    ({"missing_camera_policy": "skip_camera", "min_cameras": 7}, "must be <= the number of cameras"),
    ({"camera_frames": ["a"]}, "one entry per camera"),
    ({"sync_slop": 0.06}, r"unknown parameter\(s\) \['sync_slop'\].*typo"),
    ({"lag_warn_ratio": 1.5}, "'lag_warn_ratio' = 1.5 is invalid: must be <= 1.0"),
    ({"lag_warn_ratio": 0.5, "lag_error_ratio": 0.6}, r"'lag_error_ratio' = 0.6 .* must be <= lag_warn_ratio"),
    ({"rate_window_s": 0.0}, "'rate_window_s' = 0.0 is invalid: must be > 0.0"),
    ({"device": "cuda:x"}, "must be auto, cpu, cuda or cuda:N"),
])
def test_bad_values_name_the_parameter_and_the_fix(values, match, ckpt):
    with pytest.raises(params.ParamError, match=match):
        params.from_dict({"checkpoint": ckpt, **values})


def test_defaults_keep_publishing_without_a_camera_and_accept_any_rig(ckpt):
    """skip_camera by default (a dead camera must not blank every direction); min_cameras 1 so a rig of any size
    validates with the defaults; cuda:N is a valid device."""
    p = params.from_dict({"checkpoint": ckpt})
    assert p.missing_camera_policy == "skip_camera" and p.min_cameras == 1
    two = params.from_dict({"checkpoint": ckpt, "camera_names": ["A", "B"], "image_topics": ["/a", "/b"],
                            "camera_info_topics": ["/a/i", "/b/i"]})
    assert two.num_cameras == 2
    assert params.from_dict({"checkpoint": ckpt, "device": "cuda:1"}).device == "cuda:1"
    assert (p.lag_warn_ratio, p.lag_error_ratio, p.rate_window_s) == (0.8, 0.25, 5.0)
    off = params.from_dict({"checkpoint": ckpt, "lag_warn_ratio": 0, "lag_error_ratio": 0})
    assert off.lag_warn_ratio == 0.0 and isinstance(off.lag_warn_ratio, float)


def test_checkpoint_must_exist(tmp_path):
    with pytest.raises(params.ParamError, match="'checkpoint' = '' is invalid: is required"):
        params.from_dict({})
    with pytest.raises(params.ParamError, match="no such file"):
        params.from_dict({"checkpoint": str(tmp_path / "missing.pt")})
    assert params.from_dict({}, check_files=False).checkpoint == ""


def test_compressed_transport_subscribes_to_compressed_topics(ckpt):
    p = params.from_dict({"checkpoint": ckpt, "image_transport": "compressed", "tf_timeout_s": 1})
    assert p.subscribed_image_topics()[1] == "/CAM_FRONT/image/compressed"
    assert p.tf_timeout_s == 1.0 and isinstance(p.tf_timeout_s, float)


def test_params_file_layouts(tmp_path, ckpt):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({params.NODE_NAME: {"ros__parameters": {"checkpoint": ckpt, "sync_slop_s": 0.05}}}))
    assert params.load_params_file(f).sync_slop_s == 0.05
    f.write_text(yaml.safe_dump({"other": {"x": 1}}))
    with pytest.raises(params.ParamError, match="ros__parameters"):
        params.load_params_file(f)


def test_declare_and_read_back_from_a_real_node(rclpy_context, ckpt):
    import rclpy
    from rclpy.parameter import Parameter

    overrides = [Parameter("checkpoint", value=ckpt), Parameter("tf_timeout_s", value=1),
                 Parameter("camera_names", value=["A", "B"]), Parameter("image_topics", value=["/a", "/b"]),
                 Parameter("camera_info_topics", value=["/a/info", "/b/info"]),
                 Parameter("missing_camera_policy", value="skip_camera"), Parameter("min_cameras", value=1)]
    node = rclpy.create_node("ld_test_params", context=rclpy_context, parameter_overrides=overrides)
    params.declare(node)
    p = params.from_node(node)
    assert p.camera_names == ["A", "B"] and p.tf_timeout_s == 1.0 and p.camera_frames == []
    assert p.score_threshold == 0.3 and p.image_transport == "raw"
    desc = node.describe_parameter("sync_slop_s")
    assert desc.read_only and "slop" in desc.description.lower() or "spread" in desc.description.lower()
    node.destroy_node()
    bad = rclpy.create_node("ld_test_params_bad", context=rclpy_context,
                            parameter_overrides=[Parameter("checkpoint", value=ckpt),
                                                 Parameter("input_reliability", value="sometimes")])
    params.declare(bad)
    with pytest.raises(params.ParamError, match="input_reliability"):
        params.from_node(bad)


def test_shipped_yaml_through_the_real_rcl_parser(ckpt):
    """rcl's YAML parser (not PyYAML) reads config/detector.yaml, e.g. `camera_frames: []`, and it validates."""
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx, args=["x", "--ros-args", "--params-file", str(REPO / "config" / "detector.yaml"),
                                  "-p", f"checkpoint:={ckpt}"])
    try:
        node = rclpy.create_node(params.NODE_NAME, context=ctx)
        params.declare(node)
        p = params.from_node(node)
        assert p.camera_frames == [] and p.checkpoint == ckpt and p == params.NodeParams(checkpoint=ckpt)
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)
