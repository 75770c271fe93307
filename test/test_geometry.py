"""Geometry checks: synthetic round trips and the one real nuScenes key frame in ../shared/real-nuscenes-sample."""
import json

import numpy as np
import pytest

from labeldistill_ros import geometry as g



@pytest.fixture(scope="module")
def sample(real_sample_dir):
    d = json.loads((real_sample_dir / "sample.json").read_text())
    d["boxes_lidar"] = np.array([i["box"] for i in d["instances_lidar_frame"]])
    d["dir"] = real_sample_dir
    return d


def random_rotation(rng):
    q = rng.normal(size=4)
    return g.quat_to_matrix(q / np.linalg.norm(q))


def random_boxes(rng, n=20):
    b = np.zeros((n, 9))
    b[:, :2] = rng.uniform(-40, 40, (n, 2))
    b[:, 2] = rng.uniform(-2, 2, n)
    b[:, 3:6] = rng.uniform(0.5, 10, (n, 3))
    b[:, 6] = rng.uniform(-np.pi, np.pi, n)
    b[:, 7:9] = rng.normal(0, 5, (n, 2))
    return b


def angle_diff(a, b):
    return np.abs(g.wrap_angle(np.asarray(a) - np.asarray(b)))


# ------------------------------------------------------------------------------------------------ constants
def test_class_names_and_task_groups():
    assert g.CLASS_NAMES == (
        "car", "truck", "construction_vehicle", "bus", "trailer",
        "barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone",
    )
    assert tuple(c for grp in g.TASK_GROUPS for c in grp) == g.CLASS_NAMES
    assert len(g.TASK_GROUPS) == 6


# ------------------------------------------------------------------------------------------------ rotations
def test_quaternion_round_trips():
    rng = np.random.default_rng(0)
    for _ in range(50):
        R = random_rotation(rng)
        q = g.matrix_to_quat(R)
        assert q[0] >= 0 and np.isclose(np.linalg.norm(q), 1)
        np.testing.assert_allclose(g.quat_to_matrix(q), R, atol=1e-12)
    Rs = np.stack([random_rotation(rng) for _ in range(10)])
    np.testing.assert_allclose(g.quat_to_matrix(g.matrix_to_quat(Rs)), Rs, atol=1e-12)
    # 180-degree rotations exercise the non-w branches
    for axis in np.eye(3):
        R = 2 * np.outer(axis, axis) - np.eye(3)
        np.testing.assert_allclose(g.quat_to_matrix(g.matrix_to_quat(R)), R, atol=1e-12)
    yaws = rng.uniform(-np.pi, np.pi, 100)
    np.testing.assert_allclose(angle_diff(g.quat_to_yaw(g.yaw_to_quat(yaws)), yaws), 0, atol=1e-12)
    assert np.all(g.yaw_to_quat(yaws)[:, 0] >= 0)


def test_slerp_quat_interpolates_yaw_on_the_short_arc():
    q0, q1 = g.yaw_to_quat(np.deg2rad(170.0)), g.yaw_to_quat(np.deg2rad(-170.0))
    mid = g.slerp_quat(q0, q1, 0.5)  # 20 degrees apart across +-180: the middle is 180, not 0
    assert abs(abs(float(g.quat_to_yaw(mid))) - np.pi) < 1e-9 and abs(np.linalg.norm(mid) - 1) < 1e-12
    a, b = g.yaw_to_quat(0.0), g.yaw_to_quat(1.0)
    for t in (0.0, 0.25, 0.9, 1.0):
        assert np.isclose(float(g.quat_to_yaw(g.slerp_quat(a, b, t))), t)
    # nearly equal inputs take the linear branch and stay unit length; the component order does not matter
    q = g.slerp_quat(a, g.yaw_to_quat(1e-5), 0.5)
    assert np.isclose(float(g.quat_to_yaw(q)), 5e-6) and np.isclose(np.linalg.norm(q), 1.0)
    xyzw = g.slerp_quat(np.roll(a, -1), np.roll(b, -1), 0.3)
    assert np.allclose(np.roll(xyzw, 1), g.slerp_quat(a, b, 0.3))


def test_transforms_invert_and_compose():
    rng = np.random.default_rng(1)
    T = g.make_transform(g.matrix_to_quat(random_rotation(rng)), rng.normal(size=3))
    np.testing.assert_allclose(T @ g.invert_transform(T), np.eye(4), atol=1e-12)
    pts = rng.normal(size=(30, 3))
    np.testing.assert_allclose(g.transform_points(g.invert_transform(T), g.transform_points(T, pts)), pts, atol=1e-12)
    with pytest.raises(ValueError, match="rotation must be"):
        g.make_transform(np.eye(2), [0, 0, 0])


# ------------------------------------------------------------------------------------------------ projection
def test_project_unproject_round_trip():
    rng = np.random.default_rng(2)
    K = np.array([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]])
    # a front camera: optical z = ego x, optical x = -ego y, optical y = -ego z
    cam2ego = g.make_transform(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float), [1.7, 0.0, 1.5])
    pts = np.stack([rng.uniform(2, 60, 200), rng.uniform(-20, 20, 200), rng.uniform(-2, 3, 200)], axis=1)
    uv, depth = g.project_points(pts, cam2ego, K)
    np.testing.assert_allclose(depth, pts[:, 0] - 1.7, atol=1e-12)
    np.testing.assert_allclose(g.unproject_points(uv, depth, cam2ego, K), pts, atol=1e-9)
    # a point straight ahead on the optical axis lands on the principal point
    uv0, d0 = g.project_points(np.array([[11.7, 0.0, 1.5]]), cam2ego, K)
    np.testing.assert_allclose(uv0[0], K[:2, 2], atol=1e-9)
    assert np.isclose(d0[0], 10.0)


def test_real_sample_projected_centres(sample):
    """All 84 per-camera box centres of the real key frame, via K @ lidar2cam, to well under 0.01 px."""
    boxes = sample["boxes_lidar"]
    n_checked, worst = 0, 0.0
    for cam, cal in sample["cameras"].items():
        K, lidar2cam = np.array(cal["cam2img"]), np.array(cal["lidar2cam"])
        centres_cam = g.transform_points(lidar2cam, boxes[:, :3])
        for inst in sample["camera_instances"][cam]:
            j = int(np.argmin(np.linalg.norm(centres_cam - inst["box_camera_frame"][:3], axis=1)))
            assert np.linalg.norm(centres_cam[j] - inst["box_camera_frame"][:3]) < 1e-3
            # the LiDAR frame plays "ego" here: cam2ego := inv(lidar2cam)
            uv, depth = g.project_points(boxes[j : j + 1, :3], g.invert_transform(lidar2cam), K)
            worst = max(worst, float(np.abs(uv[0] - inst["center_2d"]).max()))
            assert abs(depth[0] - inst["depth"]) < 1e-4
            n_checked += 1
    assert n_checked == 84
    assert worst < 1e-3, worst


def test_real_sample_ego_path_differs_only_by_ego_motion(sample):
    """Projecting through inv(cam2ego) @ lidar2ego ignores the ~10-45 ms between LiDAR and camera timestamps:
    the difference must be a consistent forward ego motion (one speed for all six cameras) and stay small."""
    boxes = sample["boxes_lidar"]
    lidar2ego = np.array(sample["lidar"]["lidar2ego"])
    speeds = []
    for cal in sample["cameras"].values():
        K, lidar2cam, cam2ego = (np.array(cal[k]) for k in ("cam2img", "lidar2cam", "cam2ego"))
        centres = boxes[:, :3]
        uv_exact, d_exact = g.project_points(centres, g.invert_transform(lidar2cam), K)
        uv_ego, d_ego = g.project_points(g.transform_points(lidar2ego, centres), cam2ego, K)
        vis = (d_exact > 1.0) & np.all((uv_exact > 0) & (uv_exact < [cal["width"], cal["height"]]), axis=1)
        assert np.abs(uv_ego - uv_exact)[vis].max() < 40.0
        assert np.abs(d_ego - d_exact)[vis].max() < 0.5
        # ego(LiDAR time) -> ego(camera time) implied by the two calibrations
        motion = cam2ego @ lidar2cam @ g.invert_transform(lidar2ego)
        dt = cal["timestamp_s"] - sample["timestamp_s"]
        assert abs(np.degrees(np.arctan2(motion[1, 0], motion[0, 0]))) < 0.1
        if abs(dt) > 5e-3:
            speeds.append(-motion[0, 3] / dt)
    speeds = np.array(speeds)
    assert np.all((speeds > 5) & (speeds < 15)), speeds  # forward, urban speed
    assert np.ptp(speeds) < 0.1, speeds  # one rigid ego motion explains every camera


def test_real_sample_points_in_boxes(sample):
    boxes = sample["boxes_lidar"]
    annotated = np.array([i["num_lidar_pts"] for i in sample["instances_lidar_frame"]])
    pts = np.fromfile(sample["dir"] / sample["lidar"]["file"], dtype=np.float32).reshape(-1, 5)[:, :3]
    inside = g.points_in_boxes(pts, boxes).sum(0)
    # The annotation counts come from the annotator's own sweep handling: agree to a few points per box.
    assert np.all(np.abs(inside - annotated) <= np.maximum(2, 0.11 * annotated))
    assert np.minimum(inside, annotated).sum() >= 0.97 * annotated.sum()
    # Reading the size as (w, l, h) instead of (l, w, h) breaks the agreement: the test discriminates.
    swapped = boxes.copy()
    swapped[:, [3, 4]] = boxes[:, [4, 3]]
    wrong = g.points_in_boxes(pts, swapped).sum(0)
    assert np.minimum(wrong, annotated).sum() < 0.9 * annotated.sum()


# ------------------------------------------------------------------------------------------------ boxes
def test_box_corners_and_points_in_boxes():
    box = np.array([[1.0, 2.0, 0.5, 4.0, 2.0, 1.0, np.pi / 2, 0, 0]])
    c = g.box_corners(box)[0]
    # heading +y: the l extent runs along y
    np.testing.assert_allclose(c[:, 1].max() - c[:, 1].min(), 4.0, atol=1e-12)
    np.testing.assert_allclose(c[:, 0].max() - c[:, 0].min(), 2.0, atol=1e-12)
    np.testing.assert_allclose(c[0], [0.0, 4.0, 0.0], atol=1e-12)  # front-left-bottom
    assert g.points_in_boxes(c * 0.999 + box[0, :3] * 0.001, box).all()
    assert not g.points_in_boxes(np.array([[1.0, 2.0 + 2.1, 0.5]]), box).any()


def test_nuscenes_round_trip_real_pose(sample):
    rng = np.random.default_rng(3)
    ego2global = np.array(sample["ego2global"])
    boxes = random_boxes(rng)
    nus = g.boxes_to_nuscenes(boxes, ego2global)
    assert set(nus[0]) == {"translation", "size", "rotation", "velocity"}
    np.testing.assert_allclose(nus[0]["size"], boxes[0, [4, 3, 5]])
    back = g.nuscenes_to_boxes(
        [b["translation"] for b in nus], [b["size"] for b in nus], [b["rotation"] for b in nus],
        [b["velocity"] for b in nus], g.invert_transform(ego2global),
    )
    np.testing.assert_allclose(back[:, :6], boxes[:, :6], atol=1e-9)
    # the stored pose is float32-rounded (not exactly orthonormal): the quaternion fit costs ~1e-8 rad
    assert angle_diff(back[:, 6], boxes[:, 6]).max() < 1e-7
    # velocity goes through the xy of a (slightly tilted) 3D rotation: exact to the tilt's second order
    np.testing.assert_allclose(back[:, 7:9], boxes[:, 7:9], atol=2e-3 * np.abs(boxes[:, 7:9]).max())
    # a flat ego pose: global yaw = ego yaw + pose yaw, velocity rotates exactly
    flat = g.make_transform(g.yaw_to_quat(0.7), [100.0, -50.0, 0.0])
    nus = g.boxes_to_nuscenes(boxes, flat)
    assert angle_diff([g.quat_to_yaw(b["rotation"]) for b in nus], boxes[:, 6] + 0.7).max() < 1e-9
    c, s = np.cos(0.7), np.sin(0.7)
    np.testing.assert_allclose([b["velocity"] for b in nus], boxes[:, 7:9] @ np.array([[c, -s], [s, c]]).T, atol=1e-9)


def test_nuscenes_nan_velocity_becomes_zero():
    out = g.nuscenes_to_boxes([[1, 2, 3]], [[2, 4, 1.5]], [[1, 0, 0, 0]], [[np.nan, np.nan]], np.eye(4))
    np.testing.assert_allclose(out[0], [1, 2, 3, 4, 2, 1.5, 0, 0, 0])


def test_pose_round_trip():
    rng = np.random.default_rng(4)
    for box in random_boxes(rng, 10):
        pos, q_xyzw = g.box_to_pose(box)
        assert np.isclose(np.linalg.norm(q_xyzw), 1)
        back = g.pose_to_box(pos, q_xyzw, box[3:6], box[7:9])
        np.testing.assert_allclose(back[:6], box[:6])
        assert angle_diff(back[6], box[6]) < 1e-12


# ------------------------------------------------------------------------------------------------ augmentation
def test_img_aug_matrix_properties():
    rng = np.random.default_rng(5)
    uv = rng.uniform(0, 1600, (50, 2))
    hom = np.concatenate([uv, np.ones((50, 2))], axis=1).T  # [u, v, 1, 1]
    # resize + crop only: u' = s u - x0
    ida = g.img_aug_matrix(0.44, (0, 140, 704, 396))
    out = ida @ hom
    np.testing.assert_allclose(out[0], 0.44 * uv[:, 0], atol=1e-9)
    np.testing.assert_allclose(out[1], 0.44 * uv[:, 1] - 140, atol=1e-9)
    np.testing.assert_allclose(out[2:], 1.0)
    # flip mirrors about the crop's vertical centre line: u' = W - u
    flip = g.img_aug_matrix(1.0, (0, 0, 704, 256), flip=True)
    np.testing.assert_allclose((flip @ hom)[0], 704 - uv[:, 0], atol=1e-9)
    # rotation keeps the crop centre fixed; rotating by a then -a is the identity; 90 deg = (u,v)->(v, -u) about it
    r = g.img_aug_matrix(1.0, (0, 0, 704, 256), rotate_deg=5.4)
    np.testing.assert_allclose(r @ np.array([352, 128, 1, 1]), [352, 128, 1, 1], atol=1e-9)
    r_back = g.img_aug_matrix(1.0, (0, 0, 704, 256), rotate_deg=-5.4)
    np.testing.assert_allclose(r_back @ r, np.eye(4), atol=1e-12)
    r90 = g.img_aug_matrix(1.0, (0, 0, 100, 100), rotate_deg=90)
    np.testing.assert_allclose(r90 @ np.array([60, 50, 1, 1]), [50, 40, 1, 1], atol=1e-9)  # right -> up (CCW)
    # the inverse maps augmented pixels back to the original image
    full = g.img_aug_matrix(0.5, (10, 60, 714, 316), flip=True, rotate_deg=-3.0)
    np.testing.assert_allclose(np.linalg.inv(full) @ (full @ hom), hom, atol=1e-9)


def test_img_aug_matches_projection_with_augmented_intrinsics():
    rng = np.random.default_rng(6)
    K = np.array([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]])
    cam2ego = g.make_transform(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float), [1.7, 0.0, 1.5])
    pts = np.stack([rng.uniform(5, 50, 40), rng.uniform(-5, 5, 40), rng.uniform(-1, 2, 40)], axis=1)
    ida = g.img_aug_matrix(0.44, (0, 140, 704, 396), flip=True, rotate_deg=4.0)
    uv, d = g.project_points(pts, cam2ego, K)
    expected = (ida @ np.concatenate([uv, np.ones((40, 2))], axis=1).T).T[:, :2]
    uv_aug, d_aug = g.project_points(pts, cam2ego, g.augment_intrinsics(K, ida))
    np.testing.assert_allclose(uv_aug, expected, atol=1e-9)
    np.testing.assert_allclose(d_aug, d)
    # the network's geometry: ego = cam2ego @ K4^-1 @ [u d, v d, d, 1] with [u, v] = ida^-1 [u', v']
    back = np.linalg.inv(ida) @ np.concatenate([uv_aug, d[:, None], np.ones((40, 1))], axis=1).T
    back[:2] *= back[2]
    ego = (cam2ego @ np.linalg.inv(g.intrinsics_4x4(K)) @ back).T[:, :3]
    np.testing.assert_allclose(ego, pts, atol=1e-9)


def test_bev_aug_matrix_and_boxes():
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng)
    pts = np.concatenate([g.box_corners(boxes[i : i + 1])[0] * 0.98 + boxes[i, :3] * 0.02 for i in range(len(boxes))])
    owner = np.repeat(np.arange(len(boxes)), 8)
    for rot, scale, fx, fy in [(0.3, 1.0, False, False), (-0.39, 1.05, True, False), (0.2, 0.95, False, True),
                               (1.0, 1.02, True, True)]:
        bda = g.bev_aug_matrix(rot, scale, fx, fy)
        moved = g.transform_boxes(boxes, bda)
        inside = g.points_in_boxes(g.transform_points(bda, pts), moved)
        assert inside[np.arange(len(pts)), owner].all()  # points stay in their boxes
        np.testing.assert_allclose(moved[:, 3:6], boxes[:, 3:6] * scale)
        # BEVDepth's closed forms for yaw
        yaw = boxes[:, 6] + rot
        yaw = np.pi - yaw if fx else yaw
        yaw = -yaw if fy else yaw
        assert angle_diff(moved[:, 6], yaw).max() < 1e-9
        # the inverse matrix undoes everything
        back = g.transform_boxes(moved, np.linalg.inv(bda))
        np.testing.assert_allclose(back[:, [0, 1, 2, 3, 4, 5, 7, 8]], boxes[:, [0, 1, 2, 3, 4, 5, 7, 8]], atol=1e-9)
        assert angle_diff(back[:, 6], boxes[:, 6]).max() < 1e-9
    # composition: two rotations = one rotation by the sum
    np.testing.assert_allclose(g.bev_aug_matrix(0.1) @ g.bev_aug_matrix(0.2), g.bev_aug_matrix(0.3), atol=1e-12)
    np.testing.assert_allclose(g.bev_aug_matrix(0, 1, True, True), np.diag([-1, -1, 1, 1.0]))


def test_transform_boxes_rigid_matches_points():
    rng = np.random.default_rng(8)
    boxes = random_boxes(rng)
    T = g.make_transform(g.yaw_to_quat(2.5), [10.0, -3.0, 0.5])
    moved = g.transform_boxes(boxes, T)
    np.testing.assert_allclose(
        g.box_corners(moved), g.transform_points(T, g.box_corners(boxes).reshape(-1, 3)).reshape(-1, 8, 3), atol=1e-9
    )
    c, s = np.cos(2.5), np.sin(2.5)
    np.testing.assert_allclose(moved[:, 7:9], boxes[:, 7:9] @ np.array([[c, -s], [s, c]]).T, atol=1e-12)


def test_camera_vector_27_layout_numpy_and_torch():
    import torch

    K = np.array([[100.0, 0, 50], [0, 110, 60], [0, 0, 1]])
    cam2ego = np.arange(16, dtype=float).reshape(4, 4)
    cam2ego[3] = [0, 0, 0, 1]
    ida = g.img_aug_matrix(0.5, (1, 2, 101, 52), rotate_deg=10)
    bda = g.bev_aug_matrix(0.3, 1.1, True)
    v = g.camera_vector_27(K, cam2ego, ida, bda)
    assert v.shape == (27,)
    np.testing.assert_allclose(v[:4], [100, 110, 50, 60])
    np.testing.assert_allclose(v[4:10], [ida[0, 0], ida[0, 1], ida[0, 3], ida[1, 0], ida[1, 1], ida[1, 3]])
    np.testing.assert_allclose(v[10:15], [bda[0, 0], bda[0, 1], bda[1, 0], bda[1, 1], bda[2, 2]])
    np.testing.assert_allclose(v[15:], cam2ego[:3].reshape(-1))
    vt = g.camera_vector_27(*(torch.as_tensor(np.stack([m, m])) for m in (K, cam2ego, ida, bda)))
    assert vt.shape == (2, 27)
    np.testing.assert_allclose(vt[1].numpy(), v)


def test_quaternions_and_slerp_agree_with_pyquaternion():
    """Cross-check against an independent implementation (pyquaternion, which nuscenes-devkit uses): matrix <->
    quaternion in both directions (up to the sign of q), yaw, and slerp at several fractions, on random rotations
    including nearly equal and nearly opposite pairs."""
    from pyquaternion import Quaternion

    rng = np.random.default_rng(7)
    for _ in range(200):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        ref = Quaternion(q)  # [w, x, y, z]
        np.testing.assert_allclose(g.quat_to_matrix(q), ref.rotation_matrix, atol=1e-12)
        back = g.matrix_to_quat(ref.rotation_matrix)
        np.testing.assert_allclose(back * np.sign(back @ q), q, atol=1e-9)
        yaw = rng.uniform(-np.pi, np.pi)
        np.testing.assert_allclose(g.yaw_to_quat(yaw), Quaternion(axis=[0, 0, 1], angle=yaw).elements, atol=1e-12)
        assert abs(g.wrap_angle(g.quat_to_yaw(g.yaw_to_quat(yaw)) - yaw)) < 1e-12
    for near in (False, True, "opposite"):
        for _ in range(50):
            q0 = rng.normal(size=4)
            q0 /= np.linalg.norm(q0)
            q1 = q0 + 1e-4 * rng.normal(size=4) if near is True else rng.normal(size=4)
            if near == "opposite":
                q1 = -q0 + 0.05 * rng.normal(size=4)  # the same rotation's other sign: the shorter arc is taken
            q1 /= np.linalg.norm(q1)
            for a in (0.0, 0.25, 0.5, 0.9, 1.0):
                got = g.slerp_quat(q0, q1, a)
                want = Quaternion.slerp(Quaternion(q0), Quaternion(q1), a).elements
                # same rotation (q and -q are one rotation)
                np.testing.assert_allclose(g.quat_to_matrix(got), g.quat_to_matrix(want), atol=1e-6)
