"""Detections -> Detection3DArray / MarkerArray / LabelInfo / DiagnosticArray: conventions and pooled reuse."""
from __future__ import annotations

import numpy as np
import pytest

from labeldistill_ros.geometry import CLASS_NAMES, pose_to_box
from labeldistill_ros.inference import Detections
from labeldistill_ros import ros_convert
from labeldistill_ros.node import diagnostics as dg
from labeldistill_ros.node import messages as m

pytestmark = pytest.mark.timeout(30)

STAMP = 1532402927_604844000


def dets(n: int, seed: int = 0) -> Detections:
    rng = np.random.default_rng(seed)
    boxes = np.column_stack([rng.uniform(-40, 40, (n, 2)), rng.uniform(-1, 2, n), rng.uniform(0.5, 12, (n, 3)),
                             rng.uniform(-np.pi, np.pi, n), rng.normal(size=(n, 2))])
    return Detections(boxes, np.sort(rng.random(n).astype(np.float32))[::-1].copy(), rng.integers(0, 10, n),
                      CLASS_NAMES)


def test_detection_array_follows_the_conventions():
    d = dets(5)
    arr = m.detection_array(d, STAMP, "base_link")
    assert (arr.header.stamp.sec, arr.header.stamp.nanosec, arr.header.frame_id) == (1532402927, 604844000,
                                                                                       "base_link")
    assert len(arr.detections) == 5
    for i, det in enumerate(arr.detections):
        assert det.header == arr.header and len(det.results) == 1
        hyp = det.results[0]
        assert hyp.hypothesis.class_id == CLASS_NAMES[d.labels[i]]
        assert hyp.hypothesis.score == pytest.approx(float(d.scores[i]))
        c, s = det.bbox.center, det.bbox.size
        back = pose_to_box([c.position.x, c.position.y, c.position.z],
                           [c.orientation.x, c.orientation.y, c.orientation.z, c.orientation.w], [s.x, s.y, s.z])
        np.testing.assert_allclose(back[:6], d.boxes[i, :6], atol=1e-12)  # centre = geometric centre, size l w h
        assert np.cos(back[6] - d.boxes[i, 6]) == pytest.approx(1.0)
        assert hyp.pose.pose == c  # results[0].pose repeats the box pose


def test_pooled_builder_reuses_objects_and_leaves_nothing_stale():
    b = m.DetectionArrayBuilder()
    first = b.build(dets(6, 1), 1, "base_link")
    ids = [id(x) for x in first.detections]
    second = b.build(dets(2, 2), 2, "map")
    assert len(second.detections) == 2 and [id(x) for x in second.detections] == ids[:2]
    assert second.header.frame_id == "map" and second.header.stamp.nanosec == 2
    np.testing.assert_allclose(second.detections[1].bbox.size.x, dets(2, 2).boxes[1, 3])
    assert len(b.build(dets(0), 3, "base_link").detections) == 0


def test_markers_delete_all_first_then_cubes_and_labels_per_class():
    d = dets(12)
    arr = m.marker_array(d, STAMP, "base_link", lifetime_s=0.25)
    from visualization_msgs.msg import Marker

    assert arr.markers[0].action == Marker.DELETEALL
    cubes = [x for x in arr.markers[1:] if x.type == Marker.CUBE]
    texts = [x for x in arr.markers[1:] if x.type == Marker.TEXT_VIEW_FACING]
    assert len(cubes) == len(texts) == 12
    assert len({(x.ns, x.id) for x in cubes + texts}) == 24  # unique per namespace
    for i, c in enumerate(cubes):
        name = CLASS_NAMES[d.labels[i]]
        assert c.ns == name and c.header.frame_id == "base_link" and c.header.stamp.sec == 1532402927
        r, g, b = ros_convert.CLASS_COLORS[name]
        assert (round(c.color.r * 255), round(c.color.g * 255), round(c.color.b * 255)) == (r, g, b)
        assert (c.scale.x, c.scale.y, c.scale.z) == pytest.approx(tuple(d.boxes[i, 3:6]))
        assert c.lifetime.sec == 0 and c.lifetime.nanosec == 250_000_000
        assert texts[i].ns == name + "/label" and texts[i].text.startswith(name + " 0.")
        assert texts[i].pose.position.z > c.pose.position.z
    no_text = m.marker_array(d, STAMP, "base_link", 0.25, text=False)
    assert len(no_text.markers) == 13


def test_marker_lifetime_follows_the_output_period_and_the_builder_applies_it():
    assert m.marker_lifetime(0.25, []) == 0.25 and m.marker_lifetime(0.25, [10.0]) == 0.25  # nothing measured yet
    assert m.marker_lifetime(0.25, [0.0, 1 / 12, 2 / 12]) == pytest.approx(0.25)  # 12 Hz: 3 periods = 0.25 s
    assert m.marker_lifetime(0.25, [0.0, 1.0, 2.0, 3.1]) == pytest.approx(3.0)  # 1 Hz on a CPU: 3 s, no blinking
    assert m.marker_lifetime(0.25, [0.0, 1.0, 2.0, 32.0, 33.0]) == pytest.approx(3.0)  # one long pause ignored
    assert m.marker_lifetime(5.0, [0.0, 0.1, 0.2]) == 5.0  # never below the configured value
    assert m.marker_lifetime(0.0, [0.0, 1.0, 2.0]) == 0.0  # 0 = forever stays forever
    from visualization_msgs.msg import Marker

    b = m.MarkerArrayBuilder(0.25)
    first = b.build(dets(3), STAMP, "base_link").markers[1:]
    b.set_lifetime(2.5)
    second = b.build(dets(4), STAMP, "base_link").markers[1:]
    assert b.lifetime_s == 2.5 and len(second) == 8
    for x in second:  # pooled markers from the first build and new ones alike
        assert (x.lifetime.sec, x.lifetime.nanosec) == (2, 500_000_000)
    assert any(x is y for x, y in zip(first, second))
    b.set_lifetime(0.0)
    assert all(x.lifetime.sec == x.lifetime.nanosec == 0 for x in b.build(dets(2), STAMP, "b").markers[1:])
    assert b.build(dets(2), STAMP, "b").markers[0].action == Marker.DELETEALL


def test_label_info_maps_ids_to_class_names():
    li = m.label_info(CLASS_NAMES, 0.3)
    assert [(c.class_id, c.class_name) for c in li.class_map] == list(enumerate(CLASS_NAMES))
    assert li.threshold == pytest.approx(0.3)


@pytest.mark.parametrize("window,ready,level,text", [
    ({}, True, dg.OK, "waiting"),
    ({"images": 60, "published": 10}, True, dg.OK, "running"),
    ({"images": 60, "published": 10}, False, dg.ERROR, "model not loaded"),
    ({"images": 60, "published": 10, "nonfinite": 3}, True, dg.ERROR, "3 non-finite"),
    ({"images": 60, "published": 10, "failures": 1, "tf_failures": 2}, True, dg.ERROR, "failures; 2 TF lookups"),
    ({"images": 60, "published": 0, "tf_failures": 2}, True, dg.WARN, "2 TF lookups failed"),
    ({"images": 60, "published": 9, "input_errors": 1}, True, dg.WARN, "bad input"),
    ({"images": 60, "published": 9, "dropped": 1}, True, dg.WARN, "incomplete sets dropped"),
    ({"images": 60, "published": 9, "partial": 1}, True, dg.WARN, "without some cameras"),
    ({"images": 60, "published": 0}, True, dg.WARN, "no set was published"),
    ({"images": 60, "published": 10, "uncompensated_sets": 10}, True, dg.WARN, "10 sets without ego-motion"),
    ({"images": 60, "published": 10, "temporal_fallback_sets": 1}, True, dg.WARN, "previous frames had no history"),
])
def test_diagnostic_levels(window, ready, level, text):
    lv, msg = dg.diagnostic_level(window, ready)
    assert lv == level and text in msg


GOOD = {"images": 60, "published": 10}


@pytest.mark.parametrize("rates,level,text", [
    # 12 Hz camera sets over a 5 s window; the model runs some of them, the others are superseded
    ({"sets": 60, "superseded": 0, "published": 60, "span_s": 5.0}, dg.OK, "running"),
    ({"sets": 60, "superseded": 11, "published": 49, "span_s": 5.0}, dg.OK, "running"),  # 82 %: keeps up
    ({"sets": 60, "superseded": 13, "published": 47, "span_s": 5.0}, dg.WARN,
     "inference lags the cameras: 78% of 60 sets run over 5.0 s (13 superseded by newer sets; output 9.4 Hz, "
     "camera sets 12.0 Hz)"),
    ({"sets": 60, "superseded": 40, "published": 20, "span_s": 5.0}, dg.WARN, "33% of 60 sets run"),  # dominate
    ({"sets": 60, "superseded": 50, "published": 10, "span_s": 5.0}, dg.ERROR, "17% of 60 sets run"),  # CPU 2 Hz
    ({"sets": 4, "superseded": 4, "published": 0, "span_s": 5.0}, dg.OK, "running"),  # too few sets to judge
    ({"sets": 60, "superseded": 50, "published": 0, "span_s": 5.0, "tf": True}, dg.ERROR, "2 TF lookups failed"),
])
def test_diagnostic_level_compares_the_sets_run_with_the_camera_sets(rates, level, text):
    window = dict(GOOD, tf_failures=2) if rates.pop("tf", False) else GOOD
    lv, msg = dg.diagnostic_level(window, True, rates=rates)
    assert lv == level and text in msg, msg
    if level == dg.OK:
        assert "lags" not in msg


def test_lag_thresholds_are_parameters_and_zero_disables_them():
    rates = {"sets": 60, "superseded": 50, "published": 10, "span_s": 5.0}
    assert dg.run_ratio(rates) == pytest.approx(10 / 60) and dg.run_ratio({"sets": 4, "superseded": 0}) is None
    assert dg.diagnostic_level(GOOD, True, rates=rates, lag_warn_ratio=0.5, lag_error_ratio=0.1)[0] == dg.WARN
    assert dg.diagnostic_level(GOOD, True, rates=rates, lag_warn_ratio=0.0, lag_error_ratio=0.0) == (dg.OK, "running")


def test_missing_cameras_and_the_cpu_fallback_warn_and_are_named():
    rates = {"sets": 20, "superseded": 0, "published": 20, "span_s": 5.0}
    lv, msg = dg.diagnostic_level(dict(GOOD, partial=3), True, rates=rates, missing_cameras={"CAM_BACK_RIGHT": 20})
    assert lv == dg.WARN
    assert msg == ("3 sets run without some cameras; cameras missing from sets in the last 5.0 s (sets): "
                   "CAM_BACK_RIGHT (20)")
    # a window without a set (diagnostics faster than the cameras) still names the camera missing in the window
    lv, msg = dg.diagnostic_level({"images": 0}, True, rates=rates, missing_cameras={"CAM_BACK": 2, "CAM_FRONT": 1})
    assert lv == dg.WARN and "CAM_BACK (2), CAM_FRONT (1)" in msg
    lv, msg = dg.diagnostic_level(GOOD, True, rates=rates, cpu_fallback=True)
    assert (lv, msg) == (dg.WARN, "device auto found no CUDA device: running on the CPU")
    lv, msg = dg.diagnostic_level(dict(GOOD, nonfinite=1), True, cpu_fallback=True)
    assert lv == dg.ERROR and msg.startswith("1 non-finite") and msg.endswith("running on the CPU")
    assert dg.diagnostic_level({}, True, cpu_fallback=True)[0] == dg.WARN  # also while waiting for images


def test_diagnostic_array_carries_values_as_strings():
    from builtin_interfaces.msg import Time

    arr = dg.diagnostic_array("det: pipeline", "/ns/det", dg.WARN, "x", {"rate_hz": 11.9999, "drops": 3}, Time(sec=5))
    st = arr.status[0]
    assert st.level == dg.WARN and st.hardware_id == "/ns/det" and arr.header.stamp.sec == 5
    assert [(kv.key, kv.value) for kv in st.values] == [("rate_hz", "12.000"), ("drops", "3")]


def test_detected_objects_carry_the_velocity_in_the_object_frame():
    """autoware_perception_msgs/DetectedObjects: Autoware labels, the box pose and size, existence = score, the
    twist in the object's own frame (x along its heading), which turns back into the same vx, vy; orientation
    availability as nuScenes scores the heading; no covariance (the model gives none); pooled like the array."""
    from autoware_perception_msgs.msg import DetectedObjectKinematics as K
    from autoware_perception_msgs.msg import ObjectClassification as C
    from autoware_perception_msgs.msg import Shape

    d = dets(10, seed=3)
    d.labels = np.arange(10)  # every nuScenes class once
    b = m.DetectedObjectsBuilder()
    msg = b.build(d, STAMP, "base_link")
    assert (msg.header.stamp.sec, msg.header.frame_id, len(msg.objects)) == (1532402927, "base_link", 10)
    want = {"car": C.CAR, "truck": C.TRUCK, "construction_vehicle": C.TRUCK, "bus": C.BUS, "trailer": C.TRAILER,
            "barrier": C.UNKNOWN, "motorcycle": C.MOTORCYCLE, "bicycle": C.BICYCLE, "pedestrian": C.PEDESTRIAN,
            "traffic_cone": C.UNKNOWN}
    twist = []
    for i, o in enumerate(msg.objects):
        name = CLASS_NAMES[i]
        assert [c.label for c in o.classification] == [want[name]] and o.classification[0].probability == 1.0
        assert o.existence_probability == pytest.approx(float(d.scores[i]))
        k = o.kinematics
        p, q, s = k.pose_with_covariance.pose.position, k.pose_with_covariance.pose.orientation, o.shape.dimensions
        back = pose_to_box([p.x, p.y, p.z], [q.x, q.y, q.z, q.w], [s.x, s.y, s.z])
        np.testing.assert_allclose(back[:6], d.boxes[i, :6], atol=1e-12)
        assert o.shape.type == Shape.BOUNDING_BOX
        assert k.has_twist and not k.has_twist_covariance and not k.has_position_covariance
        assert not any(k.pose_with_covariance.covariance) and not any(k.twist_with_covariance.covariance)
        assert k.orientation_availability == {"traffic_cone": K.UNAVAILABLE, "barrier": K.SIGN_UNKNOWN}.get(
            name, K.AVAILABLE)
        lin = k.twist_with_covariance.twist.linear
        twist.append([lin.x, lin.y])
        heading = np.array([np.cos(d.boxes[i, 6]), np.sin(d.boxes[i, 6])])
        assert lin.x == pytest.approx(float(heading @ d.boxes[i, 7:9]))  # forward speed along the heading
    np.testing.assert_allclose(ros_convert.velocity_from_object_frame(d.boxes[:, 6], np.array(twist)), d.boxes[:, 7:9],
                               atol=1e-12)
    assert len(b.build(dets(3), STAMP, "base_link").objects) == 3


@pytest.mark.parametrize("n,frame", [(0, "base_link"), (1, "b"), (7, "base_link"), (50, "odom_xyz")])
def test_serialized_detection_array_is_the_built_message(n, frame):
    """The node publishes Detection3DArray as CDR bytes written directly (DetectionArrayWriter): rclpy reads them
    back as the message DetectionArrayBuilder builds, for every class name length and alignment."""
    from rclpy.serialization import deserialize_message, serialize_message
    from vision_msgs.msg import Detection3DArray

    d = dets(n, seed=n)
    raw = m.DetectionArrayWriter().serialize(d, STAMP, frame)
    built = m.DetectionArrayBuilder().build(d, STAMP, frame)
    assert len(raw) == len(serialize_message(built))
    assert deserialize_message(raw, Detection3DArray) == built
