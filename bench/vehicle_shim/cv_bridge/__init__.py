"""Benchmark stand-in for ROS 2 Humble's Python ``cv_bridge`` (not on PyPI), so ``bench_node.py --path vehicle``
measures the node on the conversion path it takes on a vehicle: with cv_bridge importable the node deserialises
each image of a set it runs and converts it with ``CvBridge().imgmsg_to_cv2(msg, 'rgb8')``.

Humble's ``imgmsg_to_cv2`` (cv_bridge/core.py) wraps ``msg.data`` in an ndarray (no copy), and for a requested
encoding other than ``passthrough`` calls the C++ ``cvtColor2``, which converts the numpy array into a
``cv::Mat`` and back with a copy each way (``cv_bridge::cvtColor`` copies even when the encodings are equal):
two copies of every rgb8 image. This stand-in makes the same two copies (bgr8 and others: one ``cv2.cvtColor``
plus the copy back), converting with the project's shared decoders (:mod:`labeldistill_ros.ros_convert`);
``compressed_imgmsg_to_cv2`` decodes with ``cv2.imdecode`` as Humble's does. Used only by the benchmark (its folder
goes on the node process's PYTHONPATH); never installed.
"""
from __future__ import annotations

import numpy as np

from labeldistill_ros.ros_convert import ImageError, check_image, decode_compressed, decode_image


class CvBridgeError(TypeError):
    pass


class CvBridge:
    STAND_IN = True  # lets a test or a log tell this stand-in from the real package

    def imgmsg_to_cv2(self, img_msg, desired_encoding: str = "passthrough") -> np.ndarray:
        if desired_encoding not in ("passthrough", "rgb8"):
            raise CvBridgeError(f"this stand-in converts to rgb8 only, not {desired_encoding}")
        try:
            if desired_encoding == "passthrough":
                h, w, ch = check_image(img_msg)
                rows = np.frombuffer(img_msg.data, dtype=np.uint8).reshape(h, int(img_msg.step))[:, : w * ch]
                return np.ascontiguousarray(rows.reshape(h, w, ch) if ch > 1 else rows)
            rgb = decode_image(img_msg)  # rgb8: a view on the message; others: the cv2 conversion
        except ImageError as exc:
            raise CvBridgeError(str(exc)) from exc
        mat = np.array(rgb, copy=True)  # numpy -> cv::Mat
        return np.array(mat, copy=True)  # cv::Mat -> numpy

    def compressed_imgmsg_to_cv2(self, cmprs_img_msg, desired_encoding: str = "passthrough") -> np.ndarray:
        try:
            rgb = decode_compressed(cmprs_img_msg.data, fmt=cmprs_img_msg.format)
        except ImageError as exc:
            raise CvBridgeError("cannot decode") from exc
        return rgb[:, :, ::-1].copy() if desired_encoding == "passthrough" else rgb
