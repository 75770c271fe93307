"""A second ROS process for cross-process tests (run by the tests, not by users).

    ros_peer.py echo TYPE IN_TOPIC OUT_TOPIC     re-publish every message of TYPE from IN_TOPIC on OUT_TOPIC
    ros_peer.py digest IN_TOPIC OUT_TOPIC        for each sensor_msgs/Image on IN_TOPIC, publish a
                                                 std_msgs/String JSON {frame_id, stamp, width, height,
                                                 encoding, step, sha256 of data} on OUT_TOPIC
TYPE is 'pkg/msg/Name'. Prints 'READY' once its endpoints exist.
"""
import hashlib
import importlib
import json
import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy


def msg_class(name: str):
    pkg, _, cls = name.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), cls)


def main(argv):
    rclpy.init()
    node = rclpy.create_node("ld_test_peer")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    if argv[0] == "echo":
        cls = msg_class(argv[1])
        pub = node.create_publisher(cls, argv[3], qos)
        node.create_subscription(cls, argv[2], pub.publish, qos)
    elif argv[0] == "digest":
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        pub = node.create_publisher(String, argv[2], qos)

        def on_image(msg: Image):
            info = {"frame_id": msg.header.frame_id, "sec": msg.header.stamp.sec,
                    "nanosec": msg.header.stamp.nanosec, "width": msg.width, "height": msg.height,
                    "encoding": msg.encoding, "step": msg.step,
                    "sha256": hashlib.sha256(bytes(msg.data)).hexdigest()}
            pub.publish(String(data=json.dumps(info)))

        node.create_subscription(Image, argv[1], on_image, qos)
    else:
        raise SystemExit(f"unknown mode {argv[0]}")
    print("READY", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
