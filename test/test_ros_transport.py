"""The environment works across processes: real rclpy, locally built vision_msgs/tf2_msgs, the project's
loopback Fast DDS profile carrying a full set of six 1600x900 rgb8 camera images intact."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from ros_helpers import spin_until, unique_topic

from labeldistill_ros.dds import PROFILES, dds_environment

pytestmark = pytest.mark.timeout(120)


def _wait_ready(proc):
    seen = []
    for line in proc.stdout:
        if line.startswith("READY"):
            return
        seen.append(line)
    raise AssertionError(f"peer exited with {proc.wait()} before READY:\n{''.join(seen)}")


def _node_and_executor(ctx, name):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    node = rclpy.create_node(name, context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    return node, ex


def _reliable(depth=10):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def _echo_roundtrip(ctx, spawn, type_name, cls, msg, timeout_s=20.0):
    tin, tout = unique_topic("in"), unique_topic("out")
    _wait_ready(spawn(["test/ros_peer.py", "echo", type_name, tin, tout]))
    node, ex = _node_and_executor(ctx, "ld_test_echo")
    got = []
    node.create_subscription(cls, tout, got.append, _reliable())
    pub = node.create_publisher(cls, tin, _reliable())
    assert spin_until(ex, lambda: bool(got), timeout_s, on_tick=lambda: pub.publish(msg)), \
        f"no {type_name} came back from the peer process within {timeout_s} s"
    return got[0]


def _detection_array():
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    arr = Detection3DArray()
    arr.header.frame_id = "base_link"
    arr.header.stamp.sec, arr.header.stamp.nanosec = 1532402927, 647951000
    for i, name in enumerate(["car", "pedestrian", "traffic_cone"]):
        d = Detection3D()
        d.header = arr.header
        d.id = f"track-{i}"
        h = ObjectHypothesisWithPose()
        h.hypothesis.class_id, h.hypothesis.score = name, 0.9 - 0.1 * i
        h.pose.pose.position.x = 10.0 + i
        h.pose.covariance[0] = 0.25
        d.results.append(h)
        d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.center.position.z = 10.0 + i, -2.5, 0.8
        d.bbox.center.orientation.z, d.bbox.center.orientation.w = 0.38268343, 0.92387953
        d.bbox.size.x, d.bbox.size.y, d.bbox.size.z = 4.5, 1.9, 1.6
        arr.detections.append(d)
    return arr


def test_detection3darray_crosses_processes(rclpy_context, spawn):
    from vision_msgs.msg import Detection3DArray

    sent = _detection_array()
    got = _echo_roundtrip(rclpy_context, spawn, "vision_msgs/msg/Detection3DArray", Detection3DArray, sent)
    assert got == sent
    assert [d.results[0].hypothesis.class_id for d in got.detections] == ["car", "pedestrian", "traffic_cone"]
    assert got.detections[1].bbox.size.x == 4.5 and got.detections[2].id == "track-2"


def test_tfmessage_crosses_processes(rclpy_context, spawn):
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    sent = TFMessage()
    for child, x in [("CAM_FRONT", 1.70), ("LIDAR_TOP", 0.94)]:
        t = TransformStamped()
        t.header.frame_id, t.child_frame_id = "base_link", child
        t.header.stamp.sec = 1532402927
        t.transform.translation.x, t.transform.translation.z = x, 1.5
        t.transform.rotation.x, t.transform.rotation.w = 0.5, 0.5
        t.transform.rotation.y, t.transform.rotation.z = -0.5, 0.5
        sent.transforms.append(t)
    got = _echo_roundtrip(rclpy_context, spawn, "tf2_msgs/msg/TFMessage", TFMessage, sent)
    assert got == sent and [t.child_frame_id for t in got.transforms] == ["CAM_FRONT", "LIDAR_TOP"]


def test_six_1600x900_rgb8_images_cross_processes_intact(rclpy_context, spawn):
    """Three full camera sets (6 x 4.32 MB each) reach another process bit-exact, none lost."""
    import hashlib

    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    cams = ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"]
    tin, tout = unique_topic("image"), unique_topic("digest")
    _wait_ready(spawn(["test/ros_peer.py", "digest", tin, tout]))
    node, ex = _node_and_executor(rclpy_context, "ld_test_images")
    replies = []
    node.create_subscription(String, tout, lambda m: replies.append(json.loads(m.data)), _reliable(64))
    pub = node.create_publisher(Image, tin, _reliable(8))
    assert spin_until(ex, lambda: pub.get_subscription_count() > 0, 15.0), "peer never matched"

    rng = np.random.default_rng(0)
    expected = {}
    n_sets = 3
    for s in range(n_sets):
        # one camera set at a time, as a vehicle sends them (a set every 80 ms), each set within the publisher's
        # and the peer's queue depths: a loss here is the transport's, not a queue overflow on a loaded machine
        for i, cam in enumerate(cams):
            data = rng.integers(0, 256, size=(900, 1600, 3), dtype=np.uint8)
            msg = Image(height=900, width=1600, encoding="rgb8", is_bigendian=0, step=1600 * 3)
            msg.header.frame_id = cam
            msg.header.stamp.sec, msg.header.stamp.nanosec = 100 + s, i * 8_000_000
            msg.data = data.tobytes()
            expected[(cam, 100 + s)] = hashlib.sha256(msg.data).hexdigest()
            pub.publish(msg)
            ex.spin_once(timeout_sec=0.0)
        n = (s + 1) * len(cams)
        assert spin_until(ex, lambda n=n: len(replies) >= n, 30.0), f"only {len(replies)} of {n} images arrived"
    for r in replies:
        assert (r["width"], r["height"], r["encoding"], r["step"]) == (1600, 900, "rgb8", 4800)
        assert r["sha256"] == expected[(r["frame_id"], r["sec"])], f"{r['frame_id']} arrived corrupted"
    assert {(r["frame_id"], r["sec"]) for r in replies} == set(expected)


def test_other_domain_sees_nothing(rclpy_context, spawn):
    """A peer on another ROS_DOMAIN_ID never receives our messages: parallel test workers are isolated."""
    from std_msgs.msg import String

    tin, tout = unique_topic("in"), unique_topic("out")
    other = (int(os.environ["ROS_DOMAIN_ID"]) % 101) + 1
    env_backup = os.environ["ROS_DOMAIN_ID"]
    os.environ["ROS_DOMAIN_ID"] = str(other)
    try:
        _wait_ready(spawn(["test/ros_peer.py", "echo", "std_msgs/msg/String", tin, tout]))
    finally:
        os.environ["ROS_DOMAIN_ID"] = env_backup
    node, ex = _node_and_executor(rclpy_context, "ld_test_domain")
    got = []
    node.create_subscription(String, tout, got.append, _reliable())
    pub = node.create_publisher(String, tin, _reliable())
    spin_until(ex, lambda: bool(got), 4.0, on_tick=lambda: pub.publish(String(data="hello")))
    assert got == [] and pub.get_subscription_count() == 0


def test_harness_uses_loopback_profile_with_large_shm():
    env = dds_environment("local")
    # Fast DDS 3.x (Kilted) reads the first name, Fast DDS 2.x (Humble, Jazzy) only the second
    for key in ("RMW_IMPLEMENTATION", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE",
                "ROS_AUTOMATIC_DISCOVERY_RANGE"):
        assert os.environ[key] == env[key], f"{key} is not applied to the test process"
    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(env["FASTDDS_DEFAULT_PROFILES_FILE"]).getroot()
    shm = [t for t in root.iterfind(".//d:transport_descriptor", ns) if t.findtext("d:type", namespaces=ns) == "SHM"]
    assert int(shm[0].findtext("d:segment_size", namespaces=ns)) >= 6 * 1600 * 900 * 3 * 2
    udp = [t for t in root.iterfind(".//d:transport_descriptor", ns) if t.findtext("d:type", namespaces=ns) == "UDPv4"]
    assert [a.text for a in udp[0].iterfind(".//d:address", ns)] == ["127.0.0.1"]
    part = root.find(".//d:participant", ns)
    assert part.findtext(".//d:useBuiltinTransports", namespaces=ns) == "false"
    addrs = {a.text for a in part.iterfind(".//d:address", ns)}
    assert addrs == {"127.0.0.1"}
    assert part.find(".//d:defaultUnicastLocatorList", ns) is None  # it would disable SHM for user data
    assert set(PROFILES) == {"local", "vehicle"}
    with pytest.raises(ValueError, match="use one of"):
        dds_environment("lan")
