"""Record rclpy topics to a rosbag2 (MCAP or sqlite3) without ``ros2 bag record``.

Each received message is serialised by rclpy (``rclpy.serialization.serialize_message``: the CDR bytes the
middleware carried) and written with ``rosbags`` under the receive time (wall clock, ns, like ``ros2 bag record``
without ``--use-sim-time``); header stamps stay as published, and evaluation matches on those. Types are written
with their definitions from :func:`labeldistill_ros.bag.typestore.typestore`, so the bag reads back anywhere.
Used by ``labeldistill-bag-eval live`` to keep the node's output next to its scores.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Mapping

from .typestore import typestore


class BagRecorder:
    """Subscribes ``node`` to ``topics`` (``{topic: 'pkg/msg/Type'}``) and writes every message to ``path``.

    Call :meth:`close` (or use as a context manager) to finish the bag; MCAP chunks get CRCs on close.
    """

    def __init__(self, node, path: str | Path, topics: Mapping[str, str], storage: str = "mcap", qos=None):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import StoragePlugin, Writer

        from ..ros_convert import msg_type

        self.path = Path(path)
        self.storage = storage
        self._ts = typestore()
        self._lock = threading.Lock()
        self._writer = Writer(self.path, version=9,
                              storage_plugin={"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage])
        self._writer.open()
        self._conns = {t: self._writer.add_connection(t, mt, typestore=self._ts) for t, mt in topics.items()}
        qos = qos or QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.counts = {t: 0 for t in topics}
        self._subs = [node.create_subscription(msg_type(mt), t, self._callback(t), qos, raw=True)
                      for t, mt in topics.items()]
        self._closed = False

    def _callback(self, topic: str):
        def cb(raw: bytes) -> None:
            with self._lock:
                if not self._closed:
                    self._writer.write(self._conns[topic], time.time_ns(), raw)
                    self.counts[topic] += 1
        return cb

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
        if self.storage == "mcap":
            from .mcap import add_chunk_crcs

            for f in self.path.glob("*.mcap"):
                add_chunk_crcs(f)

    def __enter__(self) -> "BagRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
