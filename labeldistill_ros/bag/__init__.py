"""rosbag2 support without a ROS install (``rosbags``): a typestore that knows vision_msgs, a reader for the
project's bag conventions (camera sets, calibration, TF, ground truth, detections) and a small player.

Bag conventions (written by ``labeldistill-nusc2bag``, expected by the detector node's defaults):
    * frames ``map -> base_link -> CAM_*`` / ``LIDAR_TOP`` (nuScenes channel names);
    * calibration (``base_link -> sensor``) on ``/tf_static``, recorded with transient_local durability;
    * ego pose (``map -> base_link``) on ``/tf`` at every sample_data's ego-pose timestamp;
    * ``/CAM_X/image/compressed`` (sensor_msgs/CompressedImage, the original JPEG bytes) or ``/CAM_X/image``
      (sensor_msgs/Image rgb8) and ``/CAM_X/camera_info`` (plumb_bob, zero D, K, R = I, P = [K|0]);
    * ground truth: ``/ground_truth/detections`` (vision_msgs/Detection3DArray in ``base_link`` at the key
      frame's LIDAR_TOP stamp; class_id = nuScenes detection name, id = instance token, size = (l, w, h)),
      ``/ground_truth/sample_token`` (std_msgs/String, same stamp), ``/ground_truth/velocities``
      (std_msgs/Float64MultiArray ``(N, 2)`` vx, vy in base_link, m/s, same order as the detections) and
      ``/ground_truth/markers`` (visualization_msgs/MarkerArray);
    * every stamp is the dataset time (nuScenes µs x 1000 ns); bag receive time = header stamp.
"""
