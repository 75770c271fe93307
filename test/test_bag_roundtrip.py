"""nuScenes-format dataset -> rosbag2 (labeldistill-nusc2bag) -> read back (labeldistill_ros.bag) equals the
source: JPEG bytes, decoded pixels, calibration, camera_info, ego poses, ground truth, stamps and QoS; in MCAP and
sqlite3. Plus the player: raw CDR bytes through real rclpy with /clock and a latched /tf_static."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from labeldistill_ros.bag.reader import BagReader
from labeldistill_ros.geometry import invert_transform, make_transform, nuscenes_to_boxes
from labeldistill_ros.ros_convert import PoseTrajectory, decode_compressed, stamp_to_ns

CAMS = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")


@pytest.fixture(scope="module")
def nusc(nusc_dataset):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version=nusc_dataset[1], dataroot=str(nusc_dataset[0]), verbose=False)


@pytest.fixture(scope="module")
def both_bag(make_bag, first_scene):
    """One scene, compressed and raw images, MCAP."""
    return make_bag("both_mcap", scenes=[first_scene], images="both")


@pytest.fixture(scope="module")
def scene_samples(nusc, first_scene):
    scene = next(s for s in nusc.scene if s["name"] == first_scene)
    out, tok = [], scene["first_sample_token"]
    while tok:
        out.append(nusc.get("sample", tok))
        tok = out[-1]["next"]
    return out


def test_images_identical(both_bag, nusc, nusc_dataset, scene_samples):
    want = {}
    for s in scene_samples:
        for cam in CAMS:
            sd = nusc.get("sample_data", s["data"][cam])
            want[(cam, sd["timestamp"] * 1000)] = Path(nusc_dataset[0]) / sd["filename"]
    with BagReader(both_bag) as r:
        comp = list(r.images(CAMS, compressed=True))
        raw = list(r.images(CAMS, compressed=False))
    assert len(comp) == len(raw) == len(want)
    for c, w in zip(comp, raw):
        src = want[(c.camera, c.stamp_ns)]
        assert c.data == src.read_bytes(), f"{c.camera}: JPEG bytes differ"
        assert c.frame_id == c.camera and w.frame_id == c.camera and w.stamp_ns == c.stamp_ns
        assert w.encoding == "rgb8"
        np.testing.assert_array_equal(w.data, decode_compressed(src.read_bytes()))


def test_calibration_and_camera_info(both_bag, nusc, scene_samples):
    s = scene_samples[0]
    with BagReader(both_bag) as r:
        infos = r.camera_infos()
        for ch in CAMS + ("LIDAR_TOP",):
            sd = nusc.get("sample_data", s["data"][ch])
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            np.testing.assert_allclose(r.sensor_to_base(ch), make_transform(cs["rotation"], cs["translation"]),
                                       atol=1e-9)
            if ch != "LIDAR_TOP":
                np.testing.assert_allclose(infos[ch].K, np.asarray(cs["camera_intrinsic"]), atol=1e-12)
                assert (infos[ch].width, infos[ch].height) == (sd["width"], sd["height"])
        q = r.qos("/tf_static")[0]
        assert q.durability.name == "TRANSIENT_LOCAL" and q.reliability.name == "RELIABLE"
        _, _, info = next(r.messages(["/CAM_FRONT/camera_info"]))
    assert info.distortion_model == "plumb_bob" and not np.any(info.d)
    np.testing.assert_array_equal(np.asarray(info.r).reshape(3, 3), np.eye(3))
    P = np.asarray(info.p).reshape(3, 4)
    np.testing.assert_array_equal(P[:, :3], np.asarray(info.k).reshape(3, 3))
    assert not np.any(P[:, 3])


def test_ego_poses_and_ground_truth(both_bag, nusc, scene_samples):
    from nuscenes.eval.detection.utils import category_to_detection_name

    with BagReader(both_bag) as r:
        traj = r.trajectory()
        gt = r.ground_truth()
        for _, t, msg in r.messages(["/ground_truth/detections", "/CAM_BACK/image/compressed"]):
            assert t == stamp_to_ns(msg.header.stamp)  # receive time = header stamp
    assert [g.sample_token for g in gt] == [s["token"] for s in scene_samples]
    for s, g in zip(scene_samples, gt):
        sd = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
        assert g.stamp_ns == sd["timestamp"] * 1000 and g.frame_id == "base_link"
        ep = nusc.get("ego_pose", sd["ego_pose_token"])
        e2g = make_transform(ep["rotation"], ep["translation"])
        np.testing.assert_allclose(traj.at(g.stamp_ns), e2g, atol=1e-9)
        anns = [nusc.get("sample_annotation", t) for t in s["anns"]]
        anns = [a for a in anns if category_to_detection_name(a["category_name"])
                and a["num_lidar_pts"] + a["num_radar_pts"] > 0]
        assert len(anns) == len(g.boxes) > 0
        want = nuscenes_to_boxes([a["translation"] for a in anns], [a["size"] for a in anns],
                                 [a["rotation"] for a in anns], [nusc.box_velocity(a["token"])[:2] for a in anns],
                                 invert_transform(e2g))
        np.testing.assert_allclose(g.boxes, want, atol=1e-6)
        assert g.ids == [a["instance_token"] for a in anns]
        assert g.names == [category_to_detection_name(a["category_name"]) for a in anns]


def test_sqlite3_storage_reads_the_same(make_bag, both_bag, first_scene):
    sq = make_bag("compressed_sqlite3", scenes=[first_scene], storage="sqlite3")
    assert (sq / "metadata.yaml").is_file() and list(sq.glob("*.db3"))
    with BagReader(sq) as a, BagReader(both_bag) as b:
        ga, gb = a.ground_truth(), b.ground_truth()
        assert [g.sample_token for g in ga] == [g.sample_token for g in gb]
        np.testing.assert_array_equal(np.concatenate([g.boxes for g in ga]), np.concatenate([g.boxes for g in gb]))
        ia, ib = list(a.images(compressed=True)), list(b.images(compressed=True))
        assert [(i.camera, i.stamp_ns, i.data) for i in ia] == [(i.camera, i.stamp_ns, i.data) for i in ib]
        assert a.topics().keys() <= b.topics().keys() and "/CAM_FRONT/image" not in a.topics()


def test_trajectory_interpolates():
    T0 = make_transform(np.array([1.0, 0, 0, 0]), [0, 0, 0])
    T1 = make_transform(np.array([np.cos(0.25), 0, 0, np.sin(0.25)]), [2.0, 4.0, 0])  # yaw 0.5 rad
    tr = PoseTrajectory([100, 200], [T1, T0][::-1], max_extrapolation_ns=100_000_000)
    mid = tr.at(150)
    np.testing.assert_allclose(mid[:3, 3], [1.0, 2.0, 0.0])
    assert np.isclose(np.arctan2(mid[1, 0], mid[0, 0]), 0.25)
    np.testing.assert_allclose(tr.at(200 + 10**6), T1)  # within the extrapolation allowance: end pose
    with pytest.raises(LookupError):
        tr.at(200 + 10**9)


def test_player_publishes_bag_bytes_with_clock(make_bag, first_scene, rclpy_context):
    """Real rclpy: a late subscriber still gets /tf_static (transient_local); image bytes and /clock follow
    the bag."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage
    from tf2_msgs.msg import TFMessage

    from labeldistill_ros.bag.player import BagPlayer
    from ros_helpers import spin_until

    bag = make_bag("compressed_mcap", scenes=[first_scene])
    node = rclpy.create_node("bag_player_test", context=rclpy_context)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    got = {"img": [], "clock": [], "static": []}
    node.create_subscription(CompressedImage, "/CAM_FRONT/image/compressed", lambda m: got["img"].append(m),
                             QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    node.create_subscription(Clock, "/clock", lambda m: got["clock"].append(m), QoSProfile(depth=200))
    player = BagPlayer(node, bag, rate=0.0, clock=True)
    assert not player.wait_for_subscribers(["/CAM_FRONT/image/compressed"], 10.0)
    spin_until(ex, lambda: False, 0.3)
    import threading

    th = threading.Thread(target=player.play)
    th.start()
    spin_until(ex, lambda: not th.is_alive(), 30.0)
    th.join()
    with BagReader(bag) as r:
        want = [i.data for i in r.images(["CAM_FRONT"])]
        t_end = r.end_ns
    def last_clock():
        return stamp_to_ns(got["clock"][-1].clock) if got["clock"] else 0

    spin_until(ex, lambda: len(got["img"]) >= len(want) and last_clock() == t_end, 5.0)
    assert [bytes(m.data) for m in got["img"]] == want
    clocks = [stamp_to_ns(c.clock) for c in got["clock"]]
    assert clocks and clocks == sorted(clocks) and clocks[-1] == t_end
    # A subscriber that joins after the calibration was sent still receives it (transient_local).
    node.create_subscription(TFMessage, "/tf_static", lambda m: got["static"].append(m),
                             QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                        durability=DurabilityPolicy.TRANSIENT_LOCAL))
    assert spin_until(ex, lambda: got["static"], 5.0)
    assert {t.child_frame_id for t in got["static"][0].transforms} >= set(CAMS)
    player.close()
    node.destroy_node()
    time.sleep(0.1)


def test_cli_all_scenes_one_bag_or_clear_refusal(nusc_dataset, nusc, tmp_path, capsys):
    """Several scenes go into one bag only if they share the calibration; otherwise the tool refuses before
    writing anything."""
    from labeldistill_training.tools.nusc2bag import main, plan_scenes

    out = tmp_path / "all"
    args = ["--dataroot", str(nusc_dataset[0]), "--version", nusc_dataset[1], "--out", str(out), "--no-progress"]
    try:
        plan_scenes(nusc, list(nusc.scene), None)
    except SystemExit as exc:
        with pytest.raises(SystemExit) as err:
            main(args)
        assert "one bag per scene" in str(err.value) and str(exc) == str(err.value)
        assert not out.exists()
    else:
        assert main(args) == 0
        with BagReader(out) as r:
            assert len(r.ground_truth()) == len(nusc.sample)
    with pytest.raises(SystemExit, match="not in"):
        main([a if a != str(out) else str(tmp_path / "none") for a in args] + ["--scenes", "no-such-scene"])
    assert not (tmp_path / "none").exists()


def test_player_keeps_the_bag_timing_scaled_by_rate(make_bag, first_scene, rclpy_context):
    import rclpy

    from labeldistill_ros.bag.player import BagPlayer

    bag = make_bag("compressed_mcap", scenes=[first_scene])
    node = rclpy.create_node("bag_player_timing", context=rclpy_context)
    sent: list[tuple[int, float]] = []
    player = BagPlayer(node, bag, rate=3.0, clock=True, on_publish=lambda _t, ns, wall: sent.append((ns, wall)))
    player.play()
    player.close()
    node.destroy_node()
    bag_s = np.array([(ns - sent[0][0]) / 1e9 for ns, _ in sent])
    wall_s = np.array([w - sent[0][1] for _, w in sent])
    assert bag_s[-1] > 1.0  # the scene spans several key frames
    np.testing.assert_allclose(wall_s, bag_s / 3.0, atol=0.08)


def test_multi_scene_bag_resends_each_scenes_calibration(make_bag, nusc):
    """Scenes from different logs (different calibration) share a bag: /tf_static is re-sent at each scene start
    and the reader gives each scene's calibration at that scene's times."""
    bag = make_bag("all_scenes")
    with BagReader(bag) as r:
        gt = r.ground_truth()
        timeline = r.static_timeline()
        assert len(gt) == len(nusc.sample) and len(timeline.stamps) == len(nusc.scene)
        for g in gt:
            sd = nusc.get("sample_data", nusc.get("sample", g.sample_token)["data"]["CAM_FRONT"])
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            _, T = r.static_transforms(g.stamp_ns)["CAM_FRONT"]
            np.testing.assert_allclose(T, make_transform(cs["rotation"], cs["translation"]), atol=1e-9)
