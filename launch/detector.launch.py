"""Launch the labeldistill_ros camera 3D detector (and optionally RViz).

    ros2 launch labeldistill_ros detector.launch.py checkpoint:=/path/student.pt
    ros2 launch labeldistill_ros detector.launch.py checkpoint:=... use_sim_time:=true rviz:=true \
        topic_remaps:='/CAM_FRONT/image:=/front/image_raw;/CAM_FRONT/camera_info:=/front/camera_info'

dds_profile: 'vehicle' applies the shipped Fast DDS profile with a 128 MiB shared-memory segment (multi-MB
images between processes on one computer, normal network discovery); 'local' keeps all traffic on this host
(replay and tests); 'none' leaves the middleware as configured by the environment. The profile must also be
applied to the camera drivers' processes for shared memory to be used end to end.

checkpoint, device, precision, backend, publish_objects and use_sim_time override the parameter file only when
given: their defaults are empty, and an empty argument passes nothing, so the values in `config` stay in effect
(e.g. `device: cuda:1` in a copy of config/detector.yaml).
"""
import os
import re

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "labeldistill_ros"
DDS_PROFILES = {"vehicle": "fastdds_vehicle_shm.xml", "local": "fastdds_local.xml"}
# Node parameters that launch arguments may set: name -> (accepted values, how to convert the argument text).
# An empty argument passes nothing (the parameter file's value stays in effect).
NODE_ARGUMENTS = {
    "checkpoint": (None, str),
    "device": (re.compile(r"auto|cpu|cuda(:\d+)?"), str),
    "precision": (re.compile(r"fp32|fp16"), str),
    "backend": (re.compile(r"eager|compiled"), str),
    "publish_objects": (re.compile(r"true|false", re.IGNORECASE), lambda v: v.lower() == "true"),
    "use_sim_time": (re.compile(r"true|false", re.IGNORECASE), lambda v: v.lower() == "true"),
}


def _parse_remaps(text):
    """'a:=b;c:=d' -> [('a', 'b'), ('c', 'd')]"""
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise RuntimeError(f"topic_remaps: '{item}' is not of the form FROM:=TO")
        pairs.append((src, dst))
    return pairs


def _node_overrides(context):
    """The node parameters given as launch arguments (non-empty), checked: {name: value}."""
    out = {}
    for name, (valid, convert) in NODE_ARGUMENTS.items():
        text = LaunchConfiguration(name).perform(context).strip()
        if not text:
            continue
        if valid is not None and not valid.fullmatch(text):
            raise RuntimeError(f"launch argument {name}:='{text}' is invalid: must be empty (the config file's "
                               f"value) or match {valid.pattern}")
        out[name] = convert(text)
    return out


def _setup(context):
    share = get_package_share_directory(PACKAGE)
    cfg = LaunchConfiguration
    actions = []
    profile = cfg("dds_profile").perform(context)
    if profile != "none":
        path = os.path.join(share, "config", "dds", DDS_PROFILES[profile])
        # Fast DDS 3.x (Kilted+) reads FASTDDS_..., Fast DDS 2.x (Humble, Jazzy) only FASTRTPS_...: set both.
        actions += [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", path),
                    SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", path),
                    SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", "SYSTEM_DEFAULT")]
    overrides = _node_overrides(context)
    actions.append(Node(
        package=PACKAGE,
        executable="detector_node",
        name="labeldistill_detector",
        namespace=cfg("namespace").perform(context),
        parameters=[cfg("config").perform(context)] + ([overrides] if overrides else []),
        remappings=_parse_remaps(cfg("topic_remaps").perform(context)),
        output="screen",
        emulate_tty=True,
    ))
    actions.append(Node(
        package="rviz2", executable="rviz2", name="rviz2",
        arguments=["-d", os.path.join(share, "config", "labeldistill.rviz")],
        parameters=[{"use_sim_time": overrides["use_sim_time"]}] if "use_sim_time" in overrides else [],
        condition=IfCondition(cfg("rviz")),
    ))
    return actions


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "detector.yaml"),
                              description="Node parameter file"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="Student checkpoint (.pt) from labeldistill-train (empty: the config's; "
                                          "the shipped config has none, so give it)"),
        DeclareLaunchArgument("device", default_value="",
                              description="Inference device: auto | cpu | cuda | cuda:N (empty: the config's, "
                                          "auto in the shipped one)"),
        DeclareLaunchArgument("precision", default_value="",
                              description="Inference precision: fp32 | fp16, fp16 on cuda only (empty: the "
                                          "config's, fp32 in the shipped one)"),
        DeclareLaunchArgument("backend", default_value="",
                              description="Inference backend: eager | compiled (torch.compile, checked against "
                                          "eager at start-up; empty: the config's, eager in the shipped one)"),
        DeclareLaunchArgument("publish_objects", default_value="",
                              description="true: also publish autoware_perception_msgs/DetectedObjects on "
                                          "~/output/objects (the velocity); false; empty: the config's (false "
                                          "in the shipped one)"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="true: use /clock (bag replay with ros2 bag play --clock); false; "
                                          "empty: the config's (false unless it sets it)"),
        DeclareLaunchArgument("rviz", default_value="false", choices=["true", "false"],
                              description="Start RViz with the shipped configuration"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node"),
        DeclareLaunchArgument("topic_remaps", default_value="",
                              description="Camera topic remaps, 'FROM:=TO;FROM:=TO'"),
        DeclareLaunchArgument("dds_profile", default_value="none", choices=["none", "vehicle", "local"],
                              description="Fast DDS profile to apply (large shared memory for images)"),
        OpaqueFunction(function=_setup),
    ])
