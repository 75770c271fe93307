"""labeldistill_ros: camera-only 3D object detection for ROS 2 vehicles (the vehicle runtime).

This package holds geometry, the student model, the ROS 2 node and bag tools. It never imports the offline
training code (``labeldistill_training``) or nuscenes-devkit, and importing it stays light: heavy modules
(torch, rclpy) are imported by the submodules that need them.
"""

__version__ = "0.1.0"
