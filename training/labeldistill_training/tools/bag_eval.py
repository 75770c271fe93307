"""``labeldistill-bag-eval``: evaluate the detector on a rosbag2 written by ``labeldistill-nusc2bag``.

Three ways to get detections, one scorer:

* ``offline``: reads the bag and runs the node's own pipeline without middleware
  (:func:`labeldistill_ros.bag.replay.run_offline`);
* ``live``: starts ``detector_node`` (``use_sim_time:=true``) as a subprocess, plays the bag through real
  rclpy with ``/clock`` and records ``/labeldistill_detector/output/detections``
  (:func:`labeldistill_ros.bag.replay.run_live`); ``--lockstep`` waits for each set's output before the next
  set (deterministic, nothing superseded), otherwise the bag plays at ``--rate``. Detection3DArray has no
  velocity: with ``--autoware`` the node also publishes ``autoware_perception_msgs/DetectedObjects``
  (``~/output/objects``), which is recorded and gives every box its velocity, so mAVE scores the model (without
  it, live mAVE is the error of zero velocities; offline always has the model's);
* ``--detections-topic TOPIC`` (both modes' scorer on a topic already in the bag, e.g. a recorded run, or
  ``/ground_truth/detections`` to check the pipeline: mAP = NDS = 1), with ``--objects-topic`` for the
  velocities of a recorded DetectedObjects topic.

Scoring: each detection frame (stamp = its camera set's stamp) is matched to the nearest ground-truth key frame
(LIDAR_TOP stamp) within ``--match-tol-ms``; its boxes (base_link) go to the global frame with the recorded
``map -> base_link`` TF at the detection stamp; a nuScenes results JSON is written and scored with the devkit's
``DetectionEval`` on exactly the bag's key frames. Reported: mAP, NDS, TP errors, per-class AP, latency
distribution (ms) and drop rate (key frames without a detection frame), as ``bag_eval.json`` and a table, plus
BEV PNGs (base_link, metres) of GT against detections. Nothing is written to ``--out`` unless the whole run
succeeds (a damaged bag exits with status 2 and a message naming the file).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from labeldistill_ros.bag.detections import BoxFrame
from labeldistill_ros.bag.reader import BagError, BagReader, nearest_index
from labeldistill_ros.bag.replay import (NODE_OBJECTS, NODE_OUTPUT, Run, frames_from_topic, run_live, run_offline,
                                         summary_stats)
from labeldistill_ros.geometry import CLASS_NAMES, box_corners
from labeldistill_ros.ros_convert import PoseTrajectory

__all__ = ["NODE_OBJECTS", "NODE_OUTPUT", "Run", "frames_from_topic", "run_live", "run_offline", "match_frames", "results_json",
           "detection_eval", "score", "format_table", "main"]

MAX_BOXES = 500  # devkit limit per sample


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------
def match_frames(gt: list[BoxFrame], frames: list[BoxFrame], tol_ns: int) -> dict[int, BoxFrame]:
    """Key-frame index -> the detection frame nearest to it in stamp (within ``tol_ns``; one frame per key)."""
    stamps = [g.stamp_ns for g in gt]
    best: dict[int, BoxFrame] = {}
    for f in frames:
        k = nearest_index(stamps, f.stamp_ns)
        if k < 0 or abs(stamps[k] - f.stamp_ns) > tol_ns:
            continue
        if k not in best or abs(stamps[k] - f.stamp_ns) < abs(stamps[k] - best[k].stamp_ns):
            best[k] = f
    return best


def results_json(gt: list[BoxFrame], matched: dict[int, BoxFrame], traj: PoseTrajectory) -> dict:
    """nuScenes results (global frame) for every key frame of the bag (empty list where nothing matched).

    A matched frame's boxes (base_link at the frame's stamp) go to the global frame with the recorded ego pose
    at that stamp; boxes of unknown classes are dropped and at most 500 (the highest scores) kept per sample.
    """
    from labeldistill_training.eval.results import SampleDetections, detections_to_results

    dets = []
    for k, f in sorted(matched.items()):
        keep = [i for i, n in enumerate(f.names) if n in CLASS_NAMES]
        keep = sorted(keep, key=lambda i: -f.scores[i])[:MAX_BOXES]
        dets.append(SampleDetections(
            sample_token=gt[k].sample_token, boxes=f.boxes[keep].reshape(-1, 9), scores=f.scores[keep],
            labels=np.array([CLASS_NAMES.index(f.names[i]) for i in keep], dtype=np.int64),
            ego2global=traj.at(f.stamp_ns)))
    return detections_to_results(dets, sample_tokens=[g.sample_token for g in gt])


def detection_eval(dataroot: str, version: str, result_path: str, sample_tokens: list[str], out_dir: str,
                   config: str = "detection_cvpr_2019") -> dict:
    """The devkit's ``DetectionEval`` on exactly ``sample_tokens`` (the bag's key frames): GT loaded from the
    dataset, the devkit's distance/point filters, ``evaluate()`` without plots. Returns its metrics summary."""
    from nuscenes import NuScenes

    from labeldistill_training.eval.evaluate import detection_eval_on_tokens

    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        metrics, _ = detection_eval_on_tokens(nusc, result_path, sample_tokens, out_dir, config).evaluate()
    return metrics.serialize()


def _validate(results: dict, dataroot: str, version: str, tokens: list[str]) -> str:
    """The training side's results checks (structure, global frame, [w, l, h] order): 'ok' or the problem
    (reported, not fatal: an untrained model may legitimately trip the size-order heuristic)."""
    from nuscenes import NuScenes

    from labeldistill_training.eval.evaluate import lidar_ego_xy
    from labeldistill_training.eval.results import ResultsValidationError, validate_results

    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    try:
        validate_results(results, ego_xy=lidar_ego_xy(nusc, tokens))
    except ResultsValidationError as exc:
        return f"warning: {exc}"
    return "ok"


def plot_bev(path: Path, gt: BoxFrame, det: BoxFrame | None, title: str, extent_m: float = 60.0) -> None:
    """BEV plot of one key frame in base_link (x forward to the right, y left upwards, metres): GT boxes green,
    detections red (opacity grows with the score); a line marks each heading."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=80)
    for frame, colour, lw in ((gt, "tab:green", 1.8), (det, "tab:red", 1.0)):
        if frame is None or not len(frame.boxes):
            continue
        corners = box_corners(frame.boxes)[:, :4, :2]
        for i, c in enumerate(corners):
            alpha = 1.0 if frame is gt else float(np.clip(0.25 + frame.scores[i], 0.25, 1.0))
            ax.plot(*np.vstack([c, c[:1]]).T, color=colour, lw=lw, alpha=alpha)
            ax.plot([frame.boxes[i, 0], (c[0, 0] + c[1, 0]) / 2], [frame.boxes[i, 1], (c[0, 1] + c[1, 1]) / 2],
                    color=colour, lw=lw, alpha=alpha)
    ax.plot([0], [0], marker=">", color="k")
    ax.set_xlim(-extent_m, extent_m)
    ax.set_ylim(-extent_m, extent_m)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_xlabel("x (m, forward)")
    ax.set_ylabel("y (m, left)")
    ax.set_title(title + "  (GT green, detections red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def score(bag: str | Path, run: Run, dataroot: str, version: str, out_dir: str | Path,
          match_tol_ms: float = 60.0, bev: int = 4, extra: dict[str, Path] | None = None) -> dict:
    """Match, transform, write the results JSON, run DetectionEval, report. Files appear in ``out_dir`` only at
    the end (built in a temporary folder and moved), together with ``extra`` ``{name: path}`` (e.g. the live
    run's recording)."""
    with BagReader(bag) as r:
        gt = r.ground_truth()
        traj = r.trajectory()
    if not gt:
        raise BagError(f"{bag}: no ground-truth key frames")
    if not all(g.sample_token for g in gt):
        raise BagError(f"{bag}: ground-truth frames without a sample token: record /ground_truth/sample_token "
                       f"together with /ground_truth/detections")
    matched = match_frames(gt, run.frames, int(match_tol_ms * 1e6))
    res = results_json(gt, matched, traj)
    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".bag_eval_", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        rp = tmp / "results_nusc.json"
        rp.write_text(json.dumps(res))
        validation = _validate(res, dataroot, version, [g.sample_token for g in gt])
        metrics = detection_eval(dataroot, version, str(rp), [g.sample_token for g in gt], str(tmp / "devkit"))
        shutil.rmtree(tmp / "devkit", ignore_errors=True)
        n_key = len(gt)
        report = {
            "bag": str(bag), "mode": run.mode, "key_frames": n_key, "detection_frames": len(run.frames),
            "camera_sets": run.sets, "matched_key_frames": len(matched),
            "drop_rate": 1.0 - len(matched) / n_key,
            "mAP": metrics["mean_ap"], "NDS": metrics["nd_score"],
            "tp_errors": metrics["tp_errors"], "class_ap": {k: float(v) for k, v in metrics["mean_dist_aps"].items()},
            "latency_ms": summary_stats(run.latency_ms), "boxes": int(sum(len(f.boxes) for f in run.frames)),
            "validation": validation, "info": run.info,
            "velocity_source": run.info.get("velocity_source", "unknown"),
        }
        (tmp / "bag_eval.json").write_text(json.dumps(report, indent=2))
        if bev:
            (tmp / "bev").mkdir()
            for k in np.linspace(0, n_key - 1, min(bev, n_key)).round().astype(int):
                plot_bev(tmp / "bev" / f"{k:04d}_{gt[k].sample_token[:8]}.png", gt[k], matched.get(k),
                         f"key frame {k} ({gt[k].sample_token[:8]})")
        for name, path in (extra or {}).items():
            if Path(path).exists():
                shutil.move(str(path), tmp / name)
        out_dir.mkdir(parents=True, exist_ok=True)
        for p in tmp.iterdir():
            dest = out_dir / p.name
            if dest.is_dir():
                shutil.rmtree(dest)
            shutil.move(str(p), dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def format_table(rep: dict) -> str:
    """A readable summary of :func:`score`'s report."""
    lat = rep["latency_ms"]
    lines = [
        f"bag {rep['bag']}  mode {rep['mode']}",
        f"key frames {rep['key_frames']}  matched {rep['matched_key_frames']}  drop rate {rep['drop_rate']:.1%}"
        f"  camera sets {rep['camera_sets']}  detection frames {rep['detection_frames']}  boxes {rep['boxes']}",
        f"mAP {rep['mAP']:.4f}   NDS {rep['NDS']:.4f}   velocity from: {rep.get('velocity_source', 'unknown')}",
        "TP errors: " + "  ".join(f"{k} {v:.3f}" for k, v in rep["tp_errors"].items()),
        f"{'class':<22}{'AP':>8}",
        *[f"{k:<22}{v:>8.4f}" for k, v in rep["class_ap"].items()],
    ]
    for label, st in (("latency ms", lat), ("node processing ms", rep["info"].get("node_processing_ms", {}))):
        if st.get("count"):
            lines.append(f"{label}: mean {st['mean']:.1f}  p50 {st['p50']:.1f}  p90 {st['p90']:.1f}  "
                         f"p99 {st['p99']:.1f}  max {st['max']:.1f}  (n={st['count']})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labeldistill-bag-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("offline", "live"))
    p.add_argument("--bag", required=True)
    p.add_argument("--dataroot", required=True, help="the nuScenes-format dataset the bag was made from")
    p.add_argument("--version", default="v1.0-mini")
    p.add_argument("--out", required=True, help="output folder (bag_eval.json, results_nusc.json, bev/)")
    p.add_argument("--checkpoint", default="", help="student checkpoint (.pt)")
    p.add_argument("--detections-topic", default=None,
                   help="score this Detection3DArray topic of the bag instead of running the model "
                        "(e.g. /ground_truth/detections, or a recorded node output)")
    p.add_argument("--objects-topic", default=None,
                   help="with --detections-topic: an autoware_perception_msgs/DetectedObjects topic of the same bag "
                        f"(e.g. {NODE_OBJECTS} in a live run's recording) whose twists give the boxes their velocity")
    p.add_argument("--autoware", action="store_true",
                   help="live: the node also publishes autoware_perception_msgs/DetectedObjects; they are recorded "
                        "and give every box its velocity (mAVE of the model, not of zero velocities)")
    p.add_argument("--detections-bag", default=None,
                   help="read --detections-topic from this bag (e.g. a live run's 'recording' or a ros2 bag "
                        "record of the node) while GT and TF come from --bag")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--score-threshold", type=float, default=0.1,
                   help="node/detector score threshold while evaluating (default 0.1, BEVDepth's test setting: mAP "
                        "integrates over the low-score boxes a deployment threshold such as 0.3 would drop)")
    p.add_argument("--max-detections", type=int, default=200)
    p.add_argument("--match-tol-ms", type=float, default=60.0,
                   help="largest |detection stamp - key frame stamp| for a match")
    p.add_argument("--slop-ms", type=float, default=60.0, help="camera set spread (the node's sync_slop_s)")
    p.add_argument("--rate", type=float, default=1.0, help="live: playback speed factor")
    p.add_argument("--lockstep", action="store_true", help="live: wait for each set's output before the next")
    p.add_argument("--node-log", default=None, help="live: write the node's output here")
    p.add_argument("--bev", type=int, default=4, help="number of BEV PNGs (0: none)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        with BagReader(a.bag) as r:  # damaged bags fail here, before anything runs or is written
            r.check()
        extra: dict[str, Path] = {}
        if a.detections_topic:
            if a.detections_bag:
                with BagReader(a.detections_bag) as r:
                    r.check()
            run = frames_from_topic(a.detections_bag or a.bag, a.detections_topic, a.objects_topic)
            run.mode = f"{a.mode}:{a.detections_topic}"
        elif not a.checkpoint:
            print("labeldistill-bag-eval: --checkpoint is required (or --detections-topic)", file=sys.stderr)
            return 2
        elif a.mode == "offline":
            run = run_offline(a.bag, a.checkpoint, a.device, a.precision, a.score_threshold, a.max_detections,
                              slop_s=a.slop_ms / 1e3, progress=not a.no_progress)
        else:
            from labeldistill_ros.dds import apply_dds_environment

            if not any(v in os.environ for v in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")):
                apply_dds_environment("local")  # large shared memory, nothing leaves the host
            rec_dir = Path(tempfile.mkdtemp(prefix=".bag_eval_rec_"))
            extra["recording"] = rec_dir / "recording"
            try:
                run = run_live(a.bag, a.checkpoint, a.device, a.score_threshold, a.max_detections, rate=a.rate,
                               lockstep=a.lockstep, slop_s=a.slop_ms / 1e3, log_path=a.node_log,
                               record_path=extra["recording"], objects=a.autoware)
                rep = score(a.bag, run, a.dataroot, a.version, a.out, a.match_tol_ms, a.bev, extra)
            finally:
                shutil.rmtree(rec_dir, ignore_errors=True)
            print(format_table(rep))
            return 0
        rep = score(a.bag, run, a.dataroot, a.version, a.out, a.match_tol_ms, a.bev, extra)
    except BagError as exc:
        print(f"labeldistill-bag-eval: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - model/node/dataset failures: one clear message, no results
        from labeldistill_ros.inference import DetectorError

        if not isinstance(exc, (DetectorError, RuntimeError, FileNotFoundError, AssertionError)):
            raise
        print(f"labeldistill-bag-eval: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(format_table(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
