"""``labeldistill-nusc2bag``: a nuScenes-format dataset (real or synthetic) -> rosbag2 (MCAP or sqlite3).

Reads the dataset with nuscenes-devkit and writes the project's bag conventions (see
:mod:`labeldistill_ros.bag`):

* ``/tf_static`` (tf2_msgs/TFMessage, transient_local): ``base_link -> CAM_*`` / ``LIDAR_TOP`` from
  ``calibrated_sensor`` (sensor -> ego), once per scene just before its first message (scenes of different
  logs may differ; a later static transform overrides an earlier one);
* ``/tf``: ``map -> base_link`` (``ego_pose``, ego -> global) at every written sample_data's ego-pose stamp;
* per camera ``/CAM_X/image/compressed`` (CompressedImage, the JPEG bytes as they are) and/or ``/CAM_X/image``
  (Image rgb8, decoded), plus ``/CAM_X/camera_info`` (plumb_bob, zero D, K, R = I, P = [K|0]) at the image stamp;
* ground truth at each key frame's LIDAR_TOP stamp, boxes in ``base_link``: ``/ground_truth/detections``
  (Detection3DArray; class_id = detection name, id = instance token, size = (l, w, h), score 1),
  ``/ground_truth/sample_token`` (std_msgs/String), ``/ground_truth/velocities`` (Float64MultiArray (N, 2),
  vx, vy in base_link, m/s, NaN -> 0) and ``/ground_truth/markers`` (MarkerArray).

Stamps are the dataset's (µs x 1000 -> ns); receive time = header stamp. By default only key-frame camera images
are written (``--sweeps`` adds the non-key frames) and only ground truth the devkit's detection eval keeps
(``--min-points 1``: boxes without LiDAR/radar points are dropped by the eval and invisible to a camera anyway).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labeldistill_ros.bag.reader import (BASE_FRAME, GT_DETECTIONS, GT_MARKERS, GT_SAMPLE_TOKEN, GT_VELOCITIES,
                                         MAP_FRAME, TF, TF_STATIC)
from labeldistill_ros.bag.typestore import typestore
from labeldistill_ros.geometry import box_to_pose, invert_transform, make_transform, nuscenes_to_boxes
from labeldistill_ros.ros_convert import class_rgb, decode_compressed, duration_msg, header_msg, transform_msg

CAMERAS = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
LIDAR = "LIDAR_TOP"

@dataclass
class Options:
    """Conversion options (see ``--help``)."""

    dataroot: str
    version: str
    out: str
    scenes: list[str] | None = None
    split: str | None = None
    storage: str = "mcap"
    images: str = "compressed"  # compressed | raw | both
    sweeps: bool = False
    min_points: int = 1
    max_samples: int | None = None
    progress: bool = True


# --------------------------------------------------------------------------------------------------------------
# Message builders (rosbags dataclasses)
# --------------------------------------------------------------------------------------------------------------
class _Msgs:
    """Builds rosbags message objects for the bag (one typestore)."""

    def __init__(self):
        self.ts = typestore()
        t = self.ts.types
        self.T = t

    def header(self, stamp_ns: int, frame: str):
        return header_msg(stamp_ns, frame, self.T)

    def transform(self, stamp_ns: int, parent: str, child: str, T: np.ndarray):
        return transform_msg(parent, child, T, stamp_ns, self.T)

    def tf_message(self, transforms):
        return self.T["tf2_msgs/msg/TFMessage"](transforms=list(transforms))

    def compressed_image(self, stamp_ns: int, frame: str, jpeg: bytes):
        return self.T["sensor_msgs/msg/CompressedImage"](header=self.header(stamp_ns, frame), format="jpeg",
                                                         data=np.frombuffer(jpeg, dtype=np.uint8))

    def raw_image(self, stamp_ns: int, frame: str, rgb: np.ndarray):
        h, w = rgb.shape[:2]
        return self.T["sensor_msgs/msg/Image"](header=self.header(stamp_ns, frame), height=h, width=w,
                                               encoding="rgb8", is_bigendian=0, step=w * 3,
                                               data=np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1))

    def camera_info(self, stamp_ns: int, frame: str, K: np.ndarray, width: int, height: int):
        g = self.T
        P = np.zeros((3, 4))
        P[:, :3] = K
        roi = g["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return g["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp_ns, frame), height=int(height), width=int(width),
            distortion_model="plumb_bob", d=np.zeros(5), k=np.asarray(K, np.float64).reshape(9),
            r=np.eye(3).reshape(9), p=P.reshape(12), binning_x=0, binning_y=0, roi=roi)

    def pose(self, box: np.ndarray):
        g = self.T
        pos, q = box_to_pose(box)
        return g["geometry_msgs/msg/Pose"](
            position=g["geometry_msgs/msg/Point"](x=float(pos[0]), y=float(pos[1]), z=float(pos[2])),
            orientation=g["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                          w=float(q[3])))

    def detections(self, stamp_ns: int, frame: str, boxes: np.ndarray, names, ids):
        g = self.T
        hdr = self.header(stamp_ns, frame)
        dets = []
        for b, name, ident in zip(boxes, names, ids):
            pose = self.pose(b)
            hyp = g["vision_msgs/msg/ObjectHypothesisWithPose"](
                hypothesis=g["vision_msgs/msg/ObjectHypothesis"](class_id=name, score=1.0),
                pose=g["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)))
            bbox = g["vision_msgs/msg/BoundingBox3D"](
                center=pose, size=g["geometry_msgs/msg/Vector3"](x=float(b[3]), y=float(b[4]), z=float(b[5])))
            dets.append(g["vision_msgs/msg/Detection3D"](header=hdr, results=[hyp], bbox=bbox, id=ident))
        return g["vision_msgs/msg/Detection3DArray"](header=hdr, detections=dets)

    def string(self, text: str):
        return self.T["std_msgs/msg/String"](data=text)

    def velocities(self, v: np.ndarray):
        g = self.T
        n = len(v)
        layout = g["std_msgs/msg/MultiArrayLayout"](
            dim=[g["std_msgs/msg/MultiArrayDimension"](label="boxes", size=n, stride=2 * n),
                 g["std_msgs/msg/MultiArrayDimension"](label="vx_vy", size=2, stride=2)],
            data_offset=0)
        return g["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(v, np.float64).reshape(-1))

    def markers(self, stamp_ns: int, frame: str, boxes: np.ndarray, names, ids):
        g = self.T
        hdr = self.header(stamp_ns, frame)
        zero = duration_msg(0.0, self.T)

        def marker(**kw):
            base = dict(header=hdr, ns="", id=0, type=1, action=0, pose=self.pose(np.zeros(7)),
                        scale=g["geometry_msgs/msg/Vector3"](x=1.0, y=1.0, z=1.0),
                        color=g["std_msgs/msg/ColorRGBA"](r=1.0, g=1.0, b=1.0, a=0.5), lifetime=zero,
                        frame_locked=False, points=[], colors=[], texture_resource="",
                        texture=g["sensor_msgs/msg/CompressedImage"](header=hdr, format="", data=np.zeros(0, np.uint8)),
                        uv_coordinates=[], text="", mesh_resource="",
                        mesh_file=g["visualization_msgs/msg/MeshFile"](filename="", data=np.zeros(0, np.uint8)),
                        mesh_use_embedded_materials=False)
            base.update(kw)
            return g["visualization_msgs/msg/Marker"](**base)

        out = [marker(action=3)]  # DELETEALL: the previous key frame's boxes go away
        for i, (b, name) in enumerate(zip(boxes, names)):
            r, gg, bb = class_rgb(name)
            out.append(marker(ns=name, id=i, type=1, pose=self.pose(b),
                              scale=g["geometry_msgs/msg/Vector3"](x=float(b[3]), y=float(b[4]), z=float(b[5])),
                              color=g["std_msgs/msg/ColorRGBA"](r=r, g=gg, b=bb, a=0.5)))
        return g["visualization_msgs/msg/MarkerArray"](markers=out)


# --------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------
def _qos(transient_local: bool, depth: int = 10):
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)

    zero = QosTime(0, 0)
    return [Qos(QosHistory.KEEP_LAST, 1 if transient_local else depth, QosReliability.RELIABLE,
                QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE, zero, zero,
                QosLiveliness.AUTOMATIC, zero, False)]


def select_scenes(nusc, scenes: list[str] | None, split: str | None) -> list[dict]:
    """Scene records by name list and/or split name (predefined or the dataset's custom ``splits.json``)."""
    names = None
    if split:
        from nuscenes.utils.splits import get_scenes_of_split

        names = list(get_scenes_of_split(split, nusc))
    if scenes:
        names = [s for s in scenes if names is None or s in names]
    recs = [s for s in nusc.scene if names is None or s["name"] in names]
    if names is not None:
        missing = sorted(set(names) - {s["name"] for s in recs})
        if scenes and missing:
            raise SystemExit(f"labeldistill-nusc2bag: scene(s) {missing} not in {nusc.version} "
                             f"(have {[s['name'] for s in nusc.scene][:20]}...)")
    if not recs:
        raise SystemExit("labeldistill-nusc2bag: no scene selected")
    return recs


def _scene_samples(nusc, scene: dict) -> list[dict]:
    out, tok = [], scene["first_sample_token"]
    while tok:
        s = nusc.get("sample", tok)
        out.append(s)
        tok = s["next"]
    return out


def gt_boxes_ego(nusc, sample: dict, ego2global: np.ndarray, min_points: int):
    """Key-frame annotations -> ``(boxes (N, 9) in base_link, names, instance tokens)``.

    Only annotations with a detection name and at least ``min_points`` LiDAR + radar points are kept;
    velocity from ``nusc.box_velocity`` (global, NaN when unknown -> 0) is rotated into base_link.
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    trans, sizes, rots, vels, names, ids = [], [], [], [], [], []
    for tok in sample["anns"]:
        a = nusc.get("sample_annotation", tok)
        name = category_to_detection_name(a["category_name"])
        if name is None or a["num_lidar_pts"] + a["num_radar_pts"] < min_points:
            continue
        trans.append(a["translation"])
        sizes.append(a["size"])
        rots.append(a["rotation"])
        vels.append(nusc.box_velocity(tok)[:2])
        names.append(name)
        ids.append(a["instance_token"])
    if not names:
        return np.zeros((0, 9)), [], []
    boxes = nuscenes_to_boxes(trans, sizes, rots, vels, invert_transform(ego2global))
    return boxes, names, ids


def plan_scenes(nusc, scenes: list[dict], max_samples: int | None) -> list[tuple[dict, list[dict], dict]]:
    """Per scene, in time order: ``(scene, samples, calibration {channel: (sensor -> base_link 4x4, K)})``.

    Each scene's calibration is sent on /tf_static at its start (later messages override earlier ones, so
    scenes from different vehicles/logs can share a bag). Raises SystemExit before anything is written when the
    scenes' times overlap (one bag plays one timeline).
    """
    plan, last_end = [], None
    for scene in sorted(scenes, key=lambda sc: nusc.get("sample", sc["first_sample_token"])["timestamp"]):
        samples = _scene_samples(nusc, scene)[: max_samples or None]
        static = {}
        for ch in CAMERAS + (LIDAR,):
            if ch in samples[0]["data"]:
                sd = nusc.get("sample_data", samples[0]["data"][ch])
                cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
                static[ch] = (make_transform(cs["rotation"], cs["translation"]), cs["camera_intrinsic"])
        if last_end is not None and samples[0]["timestamp"] <= last_end:
            raise SystemExit(f"labeldistill-nusc2bag: scene {scene['name']} starts before the previous selected "
                             f"scene ends: write one bag per scene (--scenes NAME)")
        last_end = samples[-1]["timestamp"] + 1_000_000
        plan.append((scene, samples, static))
    return plan


def convert(opt: Options) -> dict:
    """Write the bag; returns a summary (counts, duration, size). Raises SystemExit on bad input; a failed
    conversion leaves no partial bag behind."""
    from nuscenes.nuscenes import NuScenes
    from rosbags.rosbag2 import StoragePlugin

    out = Path(opt.out)
    if out.exists():
        raise SystemExit(f"labeldistill-nusc2bag: {out} exists; choose a new output folder")
    if opt.images not in ("compressed", "raw", "both"):
        raise SystemExit(f"labeldistill-nusc2bag: --images must be compressed, raw or both (got {opt.images})")
    t0 = time.monotonic()
    nusc = NuScenes(version=opt.version, dataroot=opt.dataroot, verbose=False)
    plan = plan_scenes(nusc, select_scenes(nusc, opt.scenes, opt.split), opt.max_samples)
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[opt.storage]
    counts: dict[str, int] = {}
    try:
        _write(opt, nusc, plan, out, plugin, counts)
        if opt.storage == "mcap":  # rosbags leaves chunk CRCs at 0: fill them so damage is detected on read
            from labeldistill_ros.bag.mcap import add_chunk_crcs

            for f in out.glob("*.mcap"):
                add_chunk_crcs(f)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"bag": str(out), "storage": opt.storage, "scenes": [p[0]["name"] for p in plan],
            "key_frames": counts.get(GT_DETECTIONS, 0), "messages": sum(counts.values()), "topics": counts,
            "bytes": size, "seconds": round(time.monotonic() - t0, 2)}


def _write(opt: Options, nusc, plan, out: Path, plugin, counts: dict) -> None:
    """Write the planned scenes, each in stamp order, to a new bag at ``out``; message counts go to ``counts``."""
    from rosbags.rosbag2 import Writer
    from tqdm import tqdm


    m = _Msgs()
    ts = m.ts
    want_comp = opt.images in ("compressed", "both")
    want_raw = opt.images in ("raw", "both")
    with Writer(out, version=9, storage_plugin=plugin) as w:
        conns: dict[str, object] = {}

        def write(topic: str, msgtype: str, t_ns: int, msg, latched: bool = False):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=ts, offered_qos_profiles=_qos(latched))
            w.write(conns[topic], t_ns, ts.serialize_cdr(msg, msgtype))
            counts[topic] = counts.get(topic, 0) + 1

        bar = tqdm(total=sum(len(p[1]) for p in plan), desc="nusc2bag", unit="sample", disable=not opt.progress)
        for _scene, samples, static in plan:
            events: list[tuple[int, int, str, object]] = []  # (stamp_ns, order, kind, payload)
            seen_pose: set[int] = set()
            for s in samples:
                for ch in CAMERAS + (LIDAR,):
                    if ch not in s["data"]:
                        continue
                    sd = nusc.get("sample_data", s["data"][ch])
                    sds = [sd]
                    if opt.sweeps and ch != LIDAR:  # camera sweeps up to the next key frame
                        nxt = sd["next"]
                        while nxt:
                            n = nusc.get("sample_data", nxt)
                            if n["is_key_frame"]:
                                break
                            sds.append(n)
                            nxt = n["next"]
                    for d in sds:
                        ep = nusc.get("ego_pose", d["ego_pose_token"])
                        if ep["timestamp"] not in seen_pose:
                            seen_pose.add(ep["timestamp"])
                            events.append((ep["timestamp"] * 1000, 1, "tf", ep))
                        if ch != LIDAR:
                            events.append((d["timestamp"] * 1000, 2, "camera", (ch, d)))
                    if ch == LIDAR:
                        events.append((sd["timestamp"] * 1000, 3, "gt", (s, sd)))
            # Calibration first (1 ns before the scene's first message), latched for late subscribers.
            events.append((min(e[0] for e in events) - 1, 0, "tf_static", static))
            events.sort(key=lambda e: (e[0], e[1]))
            for t_ns, _, kind, payload in events:
                if kind == "tf_static":
                    tfs = [m.transform(t_ns, BASE_FRAME, ch, T) for ch, (T, _) in payload.items()]
                    write(TF_STATIC, "tf2_msgs/msg/TFMessage", t_ns, m.tf_message(tfs), latched=True)
                elif kind == "tf":
                    T = make_transform(payload["rotation"], payload["translation"])
                    write(TF, "tf2_msgs/msg/TFMessage", t_ns,
                          m.tf_message([m.transform(t_ns, MAP_FRAME, BASE_FRAME, T)]))
                elif kind == "camera":
                    ch, d = payload
                    path = Path(opt.dataroot) / d["filename"]
                    jpeg = path.read_bytes()
                    # CameraInfo first: a subscriber has the intrinsics when the image arrives.
                    K = np.asarray(static[ch][1], dtype=np.float64).reshape(3, 3)
                    write(f"/{ch}/camera_info", "sensor_msgs/msg/CameraInfo", t_ns,
                          m.camera_info(t_ns, ch, K, d["width"], d["height"]))
                    if want_comp:
                        write(f"/{ch}/image/compressed", "sensor_msgs/msg/CompressedImage", t_ns,
                              m.compressed_image(t_ns, ch, jpeg))
                    if want_raw:
                        write(f"/{ch}/image", "sensor_msgs/msg/Image", t_ns,
                              m.raw_image(t_ns, ch, decode_compressed(jpeg)))
                elif kind == "gt":
                    s, sd = payload
                    ep = nusc.get("ego_pose", sd["ego_pose_token"])
                    boxes, names, ids = gt_boxes_ego(nusc, s, make_transform(ep["rotation"], ep["translation"]),
                                                     opt.min_points)
                    write(GT_DETECTIONS, "vision_msgs/msg/Detection3DArray", t_ns,
                          m.detections(t_ns, BASE_FRAME, boxes, names, ids))
                    write(GT_SAMPLE_TOKEN, "std_msgs/msg/String", t_ns, m.string(s["token"]))
                    write(GT_VELOCITIES, "std_msgs/msg/Float64MultiArray", t_ns, m.velocities(boxes[:, 7:9]))
                    write(GT_MARKERS, "visualization_msgs/msg/MarkerArray", t_ns,
                          m.markers(t_ns, BASE_FRAME, boxes, names, ids))
                    bar.update(1)
        bar.close()
        w.set_custom_data("labeldistill.source", f"{opt.version}@{Path(opt.dataroot).resolve()}")
        w.set_custom_data("labeldistill.scenes", ",".join(p[0]["name"] for p in plan))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labeldistill-nusc2bag",
        description="Convert a nuScenes-format dataset (real or synthetic) to a rosbag2 with the project's "
                    "topic/frame conventions (docs/bag_eval.md).")
    p.add_argument("--dataroot", required=True, help="dataset root (holds samples/ and <version>/)")
    p.add_argument("--version", default="v1.0-mini", help="table folder, e.g. v1.0-mini, v1.0-trainval")
    p.add_argument("--out", required=True, help="output bag folder (must not exist)")
    p.add_argument("--scenes", default="", help="comma-separated scene names (default: all, or the split's)")
    p.add_argument("--split", default=None, help="a split name (mini_val, val, or one of the dataset's "
                                                 "splits.json)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--images", choices=("compressed", "raw", "both"), default="compressed",
                   help="CompressedImage with the original JPEG bytes (default), decoded rgb8 Image, or both")
    p.add_argument("--sweeps", action="store_true", help="also write the non-key-frame camera images")
    p.add_argument("--min-points", type=int, default=1,
                   help="drop GT boxes with fewer LiDAR+radar points (the devkit eval drops 0-point GT)")
    p.add_argument("--max-samples", type=int, default=None, help="at most this many key frames per scene")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    opt = Options(dataroot=a.dataroot, version=a.version, out=a.out,
                  scenes=[s for s in a.scenes.split(",") if s] or None, split=a.split, storage=a.storage,
                  images=a.images, sweeps=a.sweeps, min_points=a.min_points, max_samples=a.max_samples,
                  progress=not a.no_progress)
    summary = convert(opt)
    import json

    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
