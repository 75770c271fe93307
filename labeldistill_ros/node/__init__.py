"""The ROS 2 detector node (``detector_node``) and its parts.

``params`` (every parameter), ``ros_compat`` (the one seam to tf2_ros / message_filters / cv_bridge),
``sync`` (N-camera set collector), ``worker`` (inference thread), ``calibration`` (K + TF extrinsics),
``messages`` (Detection3DArray, markers, LabelInfo, diagnostics) and ``detector_node`` (the rclpy node).
Submodules import rclpy/ROS messages lazily or at their own import; this package import stays light.
"""
