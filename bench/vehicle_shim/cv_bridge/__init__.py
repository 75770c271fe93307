"""Benchmark stand-in for ROS 2 Humble's Python ``cv_bridge`` (not on PyPI), so ``bench_node.py --path vehicle``
measures the node on the conversion path it takes on a vehicle: with cv_bridge importable the node deserialises
each image of a set it runs and converts it with ``CvBridge().imgmsg_to_cv2(msg, 'rgb8')``.

Humble's ``imgmsg_to_cv2`` (cv_bridge/core.py) wraps ``msg.data`` in an ndarray (no copy), and for a requested
encoding other than ``passthrough`` calls the C++ ``cvtColor2``, which converts the numpy array into a
``cv::Mat`` and back with a copy each way (``cv_bridge::cvtColor`` copies even when the encodings are equal):
two copies of every rgb8 image. This stand-in makes the same two copies (bgr8 and others: one ``cv2.cvtColor``
plus the copy back). ``compressed_imgmsg_to_cv2`` decodes with ``cv2.imdecode`` as Humble's does. Used only by the
benchmark (its folder goes on the node process's PYTHONPATH); never installed.
"""
from __future__ import annotations

import numpy as np

_CODES = {"rgb8": None, "bgr8": "COLOR_BGR2RGB", "rgba8": "COLOR_RGBA2RGB", "bgra8": "COLOR_BGRA2RGB",
          "mono8": "COLOR_GRAY2RGB"}
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class CvBridgeError(TypeError):
    pass


class CvBridge:
    STAND_IN = True  # lets a test or a log tell this stand-in from the real package

    def imgmsg_to_cv2(self, img_msg, desired_encoding: str = "passthrough") -> np.ndarray:
        import cv2

        ch = _CHANNELS.get(img_msg.encoding)
        if ch is None:
            raise CvBridgeError(f"unsupported encoding {img_msg.encoding}")
        h, step = int(img_msg.height), int(img_msg.step)
        shape = (h, step // ch, ch) if ch > 1 else (h, step)
        im = np.ndarray(shape=shape, dtype=np.uint8, buffer=img_msg.data)
        im = np.ascontiguousarray(im[:h, : int(img_msg.width)])
        if desired_encoding == "passthrough":
            return im
        mat = np.array(im, copy=True)  # numpy -> cv::Mat
        code = _CODES[img_msg.encoding] if desired_encoding == "rgb8" else None
        if code is not None:
            mat = cv2.cvtColor(mat, getattr(cv2, code))
        return np.array(mat, copy=True)  # cv::Mat -> numpy

    def compressed_imgmsg_to_cv2(self, cmprs_img_msg, desired_encoding: str = "passthrough") -> np.ndarray:
        import cv2

        im = cv2.imdecode(np.frombuffer(bytes(cmprs_img_msg.data), dtype=np.uint8), cv2.IMREAD_COLOR)
        if im is None:
            raise CvBridgeError("cannot decode")
        return im if desired_encoding == "passthrough" else cv2.cvtColor(im, cv2.COLOR_BGR2RGB)
