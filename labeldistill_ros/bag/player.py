"""A small rosbag2 player for machines without ``ros2 bag play``: publishes a bag's raw CDR bytes through rclpy.

* original timing: message ``i`` goes out when ``(t_i - t_0) / rate`` wall seconds have passed since the start
  (``rate`` 2.0 plays twice as fast; ``rate=0`` publishes as fast as possible);
* ``/clock`` (rosgraph_msgs/Clock, the bag time) before every message and every ``clock_period_s`` while
  waiting, so nodes started with ``use_sim_time:=true`` follow the bag;
* each topic is published with the recorded QoS (reliability, history depth, durability): ``/tf_static`` stays
  transient_local, so a node started later still receives the calibration;
* no deserialisation: the bag bytes go out as they are (``Publisher.publish(bytes)``).

Message classes come from the installed Python interface packages (``sensor_msgs.msg.Image`` for
``sensor_msgs/msg/Image``). ``on_publish(topic, bag_ns, wall_s)`` lets callers (``labeldistill-bag-eval live``)
record when each message left, for latency measurement.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from ..ros_convert import msg_type, stamp_msg
from .reader import BagReader

CLOCK_TOPIC = "/clock"


def qos_from_bag(profiles: list, default_depth: int = 10):
    """rclpy ``QoSProfile`` from a bag's recorded ``offered_qos_profiles`` (rosbags Qos tuples).

    Reliable/keep-last(depth)/volatile when nothing was recorded; transient_local is kept (latched topics).
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    depth, rel, dur = default_depth, ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE
    if profiles:
        q = profiles[0]
        if q.reliability.name == "BEST_EFFORT":
            rel = ReliabilityPolicy.BEST_EFFORT
        if q.durability.name == "TRANSIENT_LOCAL":
            dur = DurabilityPolicy.TRANSIENT_LOCAL
        if q.history.name == "KEEP_LAST" and q.depth > 0:
            depth = int(q.depth)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=rel, durability=dur)


class BagPlayer:
    """Plays a bag on an rclpy node (the node is owned by the caller; spin it elsewhere if it also subscribes).

    Args:
        node: rclpy node to create the publishers on.
        bag: path of a rosbag2 folder.
        rate: playback speed factor (> 0), or 0 for as fast as possible.
        clock: publish ``/clock``.
        topics: only these topics (default: all).
        clock_period_s: ``/clock`` period while waiting between messages, wall seconds.
        on_publish: ``callback(topic, bag_ns, wall_s)`` after each message.
        before_publish: ``callback(topic, bag_ns)`` before each message (may block: lock-step replay).
    """

    def __init__(self, node, bag: str | Path, rate: float = 1.0, clock: bool = True,
                 topics: Iterable[str] | None = None, clock_period_s: float = 0.01,
                 on_publish: Callable[[str, int, float], None] | None = None,
                 before_publish: Callable[[str, int], None] | None = None):
        if rate < 0:
            raise ValueError(f"rate must be >= 0 (0 = as fast as possible), got {rate}")
        self.node = node
        self.bag = Path(bag)
        self.rate = rate
        self.clock = clock
        self.clock_period_s = clock_period_s
        self.on_publish = on_publish
        self.before_publish = before_publish
        self.reader = BagReader(self.bag)
        avail = self.reader.topics()
        self.topics = list(avail) if topics is None else [t for t in topics if t in avail]
        try:
            from rclpy.event_handler import PublisherEventCallbacks  # Iron and newer (Jazzy, Kilted)
        except ImportError:  # Humble
            from rclpy.qos_event import PublisherEventCallbacks

        # A latched (transient_local) subscriber, e.g. the node's second CameraInfo subscription, cannot match a
        # volatile topic of the bag: expected, so not logged.
        quiet = PublisherEventCallbacks(incompatible_qos=lambda _e: None)
        self.publishers = {}
        for t in self.topics:
            self.publishers[t] = node.create_publisher(msg_type(avail[t][0]), t, qos_from_bag(self.reader.qos(t)),
                                                       event_callbacks=quiet)
        self._clock_pub = None
        if clock:
            from rclpy.qos import QoSProfile, ReliabilityPolicy
            from rosgraph_msgs.msg import Clock

            self._clock_cls = Clock
            self._clock_pub = node.create_publisher(
                Clock, CLOCK_TOPIC, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.published = 0

    def close(self) -> None:
        self.reader.close()

    def wait_for_subscribers(self, topics: Iterable[str], timeout_s: float) -> list[str]:
        """Wait until every topic in ``topics`` has a subscriber; returns those still without one."""
        deadline = time.monotonic() + timeout_s
        missing = list(topics)
        while missing and time.monotonic() < deadline:
            missing = [t for t in missing if t in self.publishers and self.publishers[t].get_subscription_count() == 0]
            if missing:
                time.sleep(0.05)
        return missing

    def prime(self, topics: Iterable[str]) -> list[str]:
        """Publish the first recorded message of each of ``topics`` now (e.g. every ``camera_info``, as a driver
        with latched calibration would), so a subscriber has it before the first image; returns those sent."""
        want = [t for t in topics if t in self.publishers]
        sent: set[str] = set()
        for conn, _, raw in self.reader.raw_messages(want):
            if conn.topic not in sent:
                self.publishers[conn.topic].publish(bytes(raw))
                sent.add(conn.topic)
            if len(sent) == len(want):
                break
        return sorted(sent)

    def publish_clock(self, bag_ns: int) -> None:
        if self._clock_pub is not None:
            self._clock_pub.publish(self._clock_cls(clock=stamp_msg(bag_ns)))

    def play(self, start_offset_s: float = 0.0, should_stop: Callable[[], bool] | None = None) -> int:
        """Publish the whole bag with its timing; returns the number of messages published."""
        t0_bag = None
        t0_wall = time.monotonic() + start_offset_s
        for conn, t, raw in self.reader.raw_messages(self.topics):
            if should_stop is not None and should_stop():
                break
            if self.before_publish is not None:
                self.before_publish(conn.topic, t)
            if t0_bag is None:
                t0_bag = t
            if self.rate > 0:
                due = t0_wall + (t - t0_bag) / 1e9 / self.rate
                while True:
                    now = time.monotonic()
                    if now >= due:
                        break
                    sim = t0_bag + int((now - t0_wall) * self.rate * 1e9)
                    if sim > t0_bag:
                        self.publish_clock(min(sim, t))
                    time.sleep(min(self.clock_period_s, due - now))
            self.publish_clock(t)
            self.publishers[conn.topic].publish(bytes(raw))
            self.published += 1
            if self.on_publish is not None:
                self.on_publish(conn.topic, t, time.monotonic())
        return self.published


def main(argv: list[str] | None = None) -> int:
    """``labeldistill-bag-play BAG [--rate R] [--clock] [--topics ...] [--loop]``."""
    p = argparse.ArgumentParser(prog="labeldistill-bag-play",
                                description="Play a rosbag2 (MCAP/sqlite3) through rclpy without a ROS install.")
    p.add_argument("bag")
    p.add_argument("--rate", "-r", type=float, default=1.0, help="speed factor (0 = as fast as possible)")
    p.add_argument("--clock", action="store_true", help="publish /clock (use with use_sim_time:=true)")
    p.add_argument("--topics", nargs="*", default=None)
    p.add_argument("--delay", type=float, default=1.0, help="seconds to wait for subscribers (discovery)")
    p.add_argument("--loop", action="store_true")
    p.add_argument("--dds", choices=("none", "local", "vehicle"), default="none",
                   help="apply a shipped Fast DDS profile (large shared memory for raw images; must match the "
                        "node's); none keeps the environment's middleware settings")
    a = p.parse_args(argv)
    if a.dds != "none":
        from ..dds import apply_dds_environment

        apply_dds_environment(a.dds)

    import rclpy

    rclpy.init()
    node = rclpy.create_node("labeldistill_bag_player")
    try:
        player = BagPlayer(node, a.bag, rate=a.rate, clock=a.clock, topics=a.topics)
        time.sleep(a.delay)
        while True:
            n = player.play()
            print(f"published {n} messages from {a.bag}", file=sys.stderr)
            if not a.loop:
                break
            player.published = 0
        time.sleep(0.5)  # let reliable writers flush
        player.close()
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
