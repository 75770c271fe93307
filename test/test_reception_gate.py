"""The node's reception gate with real rclpy and a real executor spinning in its own thread (as ``rclpy.spin``):
while closed, no image of the gated subscriptions is taken and the executor does not busy-spin; other
subscriptions are served; once opened, every held message arrives, in order, none lost."""
from __future__ import annotations

import threading
import time

import pytest
from ros_helpers import unique_topic

from labeldistill_ros.node.reception_gate import ReceptionGate

pytestmark = pytest.mark.timeout(60)


def _wait(pred, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_closed_gate_holds_takes_without_spinning_and_open_delivers_all(rclpy_context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    ctx = rclpy_context
    node = rclpy.create_node("gate_sub", context=ctx)
    peer = rclpy.create_node("gate_pub", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    gate = ReceptionGate(wake=lambda: ex.wake())
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    img_topic, other_topic = unique_topic("image"), unique_topic("other")
    images: list[bytes] = []
    others: list[str] = []
    node.create_subscription(Image, img_topic, images.append, qos, raw=True, callback_group=gate)
    node.create_subscription(String, other_topic, lambda m: others.append(m.data), qos)
    pub_img = peer.create_publisher(Image, img_topic, qos)
    pub_other = peer.create_publisher(String, other_topic, qos)
    spinner = threading.Thread(target=ex.spin, daemon=True)
    spinner.start()
    try:
        assert _wait(lambda: pub_img.get_subscription_count() == 1 and pub_other.get_subscription_count() == 1, 10)
        pub_img.publish(Image(width=1, height=1, encoding="rgb8", step=3, data=bytes(3)))
        assert _wait(lambda: len(images) == 1, 5), "an open gate must let the image through"

        gate.close()
        assert not gate.is_open and gate.closures == 1
        for i in range(5):
            pub_img.publish(Image(width=i + 2, height=1, encoding="rgb8", step=3 * (i + 2), data=bytes(3 * (i + 2))))
        pub_other.publish(String(data="served"))
        assert _wait(lambda: others == ["served"], 5), "subscriptions outside the gate must be served while closed"
        t0, proc0 = time.monotonic(), time.process_time()
        time.sleep(0.5)
        held_cpu = time.process_time() - proc0
        assert len(images) == 1, "no image may be taken while the gate is closed"
        assert held_cpu < 0.25 * (time.monotonic() - t0), f"the executor spins while closed ({held_cpu:.2f} s CPU)"

        gate.open()
        gate.open()  # idempotent
        assert gate.is_open and gate.closures == 1
        assert _wait(lambda: len(images) == 6, 5), f"held images not delivered after open: {len(images)}"
        from rclpy.serialization import deserialize_message

        widths = [deserialize_message(b, Image).width for b in images]
        assert widths == [1, 2, 3, 4, 5, 6], "the held images must arrive in order, none lost"
    finally:
        ex.shutdown()
        spinner.join(5)
        node.destroy_node()
        peer.destroy_node()


def test_open_survives_a_failing_wake_and_close_counts_once():
    def broken_wake():
        raise RuntimeError("executor gone")

    gate = ReceptionGate(wake=broken_wake)
    gate.close()
    gate.close()
    assert gate.closures == 1 and not gate.is_open
    gate.open()  # the executor shutting down must not break the inference thread
    assert gate.is_open


def test_gate_is_mutually_exclusive_like_a_default_group(rclpy_context):
    import rclpy
    from std_msgs.msg import String

    node = rclpy.create_node("gate_mx", context=rclpy_context)
    try:
        gate = ReceptionGate()
        a = node.create_subscription(String, unique_topic("a"), lambda m: None, 1, callback_group=gate)
        b = node.create_subscription(String, unique_topic("b"), lambda m: None, 1, callback_group=gate)
        assert gate.can_execute(a) and gate.beginning_execution(a)
        assert not gate.can_execute(b) and not gate.beginning_execution(b)  # a's callback is running
        gate.ending_execution(a)
        gate.close()
        assert not gate.can_execute(b) and not gate.beginning_execution(b)  # closed
        gate.open()
        assert gate.can_execute(b) and gate.beginning_execution(b)
        gate.ending_execution(b)
    finally:
        node.destroy_node()
