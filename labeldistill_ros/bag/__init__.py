"""rosbag2 support without a ROS install (``rosbags``), one job per module:

* :mod:`.typestore`: the ROS 2 Kilted typestore with vision_msgs registered from its ``.msg`` files;
* :mod:`.reader`: read the conventions below (images, calibration, interpolated ego poses, ground truth,
  detections), with :class:`.reader.BagError` naming the file and the damage for unreadable bags;
* :mod:`.player`: play a bag through rclpy (raw CDR bytes, original timing x rate, ``/clock``, recorded QoS);
* :mod:`.recorder`: record rclpy topics to a bag;
* :mod:`.replay`: run the detector on a bag, offline (the node's pipeline in-process) or live (the node as a
  process, fed by the player);
* :mod:`.mcap`: chunk CRCs for MCAP files written by rosbags.

Importing this package loads none of them (rosbags and rclpy are imported by the modules that need them).

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
