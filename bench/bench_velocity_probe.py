"""Velocity probe: what a trained LiDAR teacher and camera students predict for (vx, vy) at the ground-truth centres.

Velocity error (mAVE) only says how far off the matched boxes are; this probe says *why*: for every task group it
gathers the head's velocity regression at each GT object's centre cell (the cells the L1 losses train) on the
first ``--samples`` samples of a split, without augmentation, and compares it with the target (both in the key ego
frame, m/s):

  speed        mean |v| predicted / of the targets (all objects of the group)
  err / err0   mean |v_pred - v_gt|, and the same for a prediction of zero (what an unlearned head scores)
  moving       objects whose target moves faster than 1 m/s: the predicted component along the target's direction
               (``along``; = the target speed for a perfect head, ~0 for one that has not learned motion), and
               the share with a positive component (0.5: no idea of the direction)
  slope        least-squares ``p = slope * t`` over both components of every object (1: learned, 0: not)

Why it exists (2026-12-04): LabelDistill's response term is an L1 from the student's regression to the teacher's,
with the same weight as the GT L1. Where the teacher predicts ~0 velocity, the two gradients on the student's
velocity cancel anywhere between 0 and the target, so the student's velocity cannot leave 0
(test_losses.py). This probe measured the demo's teacher at ~0 for every class but car; the temporal CPU config
(``cpu_small_2key.yaml``) now leaves velocity out of the response (``distill.labeldistill.response_code_weights``).

    python bench/bench_velocity_probe.py        # the demo's teacher and student (after `make demo`)
    python bench/bench_velocity_probe.py --teacher demo_output/work_dirs/teacher/final.pt \\
        --student 2key=work_dirs/cpu_small_2key/student/student.pt --split synth_train --samples 32

``--config`` (default ``config/train/cpu_small.yaml``) gives the data section; a temporal student is read with
``config/train/cpu_small_2key.yaml``'s previous-frame offsets when its model uses previous frames (``--config-2key``).
Writes ``bench/results/velocity_probe.json`` (``--out``) and prints a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "training"))

from labeldistill_ros.model.checkpoint import load_checkpoint  # noqa: E402
from labeldistill_ros.model.config import load_model_config  # noqa: E402
from labeldistill_training.batch import padded_points  # noqa: E402
from labeldistill_training.builders import build_teacher, load_frozen, task_class_ids  # noqa: E402
from labeldistill_training.config import load_train_config, resolve_path  # noqa: E402
from labeldistill_training.data.collate import collate_batch  # noqa: E402
from labeldistill_training.data.dataset import NuScenesDataset  # noqa: E402
from labeldistill_training.losses.detection import (CenterPointTargetAssigner, concat_regression,  # noqa: E402
                                                    gather_feat)
from labeldistill_training.stage_data import data_config_for_stage  # noqa: E402
from labeldistill_training.stages import gt_lists, student_inputs  # noqa: E402

MOVING_MPS = 1.0


def velocity_stats(pred: np.ndarray, target: np.ndarray) -> dict:
    """``pred``, ``target`` ``(M, 2)`` m/s -> the probe's figures (module docstring)."""
    speed_t = np.hypot(*target.T)
    out = {"objects": int(len(pred)), "speed_pred": float(np.hypot(*pred.T).mean()) if len(pred) else 0.0,
           "speed_gt": float(speed_t.mean()) if len(pred) else 0.0,
           "err": float(np.hypot(*(pred - target).T).mean()) if len(pred) else 0.0,
           "err0": float(speed_t.mean()) if len(pred) else 0.0}
    tt = float((target * target).sum())
    out["slope"] = float((pred * target).sum() / tt) if tt > 0 else None
    mv = speed_t > MOVING_MPS
    out["moving"] = int(mv.sum())
    if mv.any():
        along = (pred[mv] * target[mv]).sum(1) / speed_t[mv]
        out.update(moving_speed_gt=float(speed_t[mv].mean()), moving_along=float(along.mean()),
                   moving_positive_share=float((along > 0).mean()))
    return out


def probe(run, dataset, assigner, groups, samples: int, batch: int = 4) -> dict[str, dict]:
    """``run(batch) -> head outputs``; per task group (named ``"truck/construction_vehicle"``) the stats of the
    velocity at the GT centres."""
    preds: dict[int, list] = {}
    targets: dict[int, list] = {}
    n = min(samples, len(dataset))
    for start in range(0, n, batch):
        b = collate_batch([dataset[i] for i in range(start, min(n, start + batch))])
        with torch.no_grad():
            heads = run(b)
        boxes, labels = gt_lists(b)
        for t, (out, tg) in enumerate(zip(heads, assigner(boxes, labels))):
            reg = gather_feat(concat_regression(out).float(), tg.ind)
            preds.setdefault(t, []).append(reg[tg.mask][:, 8:10].numpy())
            targets.setdefault(t, []).append(tg.box[tg.mask][:, 8:10].numpy())
    return {"/".join(groups[t]): velocity_stats(np.concatenate(preds[t]), np.nan_to_num(np.concatenate(targets[t])))
            for t in sorted(preds)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", help="the LiDAR teacher's final.pt")
    ap.add_argument("--student", action="append", default=[], metavar="NAME=CKPT",
                    help="a camera student (student.pt / epoch_NNN.pt); repeatable")
    ap.add_argument("--config", default=str(REPO / "config/train/cpu_small.yaml"), help="data + teacher config")
    ap.add_argument("--config-2key", default=str(REPO / "config/train/cpu_small_2key.yaml"),
                    help="data config for students with previous frames")
    ap.add_argument("--dataroot", default=None, help="override data.dataroot")
    ap.add_argument("--split", default="synth_train")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--out", default=str(REPO / "bench/results/velocity_probe.json"))
    args = ap.parse_args(argv)
    if not args.teacher and not args.student:  # the demo's (bench/run_all.py runs it so)
        demo = REPO / "demo_output" / "work_dirs"
        args.teacher = str(demo / "teacher" / "final.pt")
        args.student = [f"demo={demo / 'student' / 'student.pt'}"]
    missing = [p for p in [args.teacher] + [s.partition("=")[2] for s in args.student] if p and not Path(p).exists()]
    if missing:
        print(f"bench_velocity_probe: no checkpoint at {missing}: run `make demo` first, or give --teacher / "
              f"--student NAME=CKPT", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)

    def dataset_for(cfg, model_cfg, points: bool) -> NuScenesDataset:
        if args.dataroot:
            cfg = dataclasses.replace(cfg, data=cfg.data.replace(dataroot=args.dataroot))
        dc = data_config_for_stage(cfg, model_cfg, "student").replace(load_points=points)
        dc = dc.replace(depth=dataclasses.replace(dc.depth, enabled=False))
        return NuScenesDataset.from_config(dc, args.split, training=False)

    results = {"command": shlex.join(["python", "bench/bench_velocity_probe.py", *(argv or sys.argv[1:])]),
               "split": args.split, "samples": args.samples, "moving_threshold_mps": MOVING_MPS,
               "checkpoints": {"teacher": args.teacher} if args.teacher else {}, "models": {}}
    if args.teacher:
        cfg = load_train_config(args.config)
        model_cfg = load_model_config(str(resolve_path(cfg, cfg.model_config)))
        cfg.stages.student.teacher_checkpoint = str(Path(args.teacher).resolve())
        teacher = load_frozen(cfg, "student", "teacher", build_teacher(cfg, model_cfg))
        ds = dataset_for(cfg, model_cfg, points=True)
        results["models"]["teacher"] = probe(lambda b: teacher(padded_points(b))["head_outputs"], ds,
                                             CenterPointTargetAssigner(model_cfg.bev_grid, task_class_ids(model_cfg)),
                                             model_cfg.head.task_groups, args.samples)
    for spec in args.student:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"--student {spec!r}: write NAME=CKPT")
        results["checkpoints"][name] = path
        model = load_checkpoint(path)
        model.eval()
        config = args.config_2key if model.cfg.temporal.num_prev_frames else args.config
        ds = dataset_for(load_train_config(config), model.cfg, points=False)
        results["models"][name] = probe(lambda b, m=model: m(**student_inputs(b)).head_outputs, ds,
                                        CenterPointTargetAssigner(model.cfg.bev_grid, task_class_ids(model.cfg)),
                                        model.cfg.head.task_groups, args.samples)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")

    print(f"velocity at the GT centres, {args.split}, first {args.samples} samples (m/s; key ego frame)")
    print(f"{'model':<18} {'group':<30} {'n':>4} {'|v| pred':>8} {'|v| gt':>7} {'err':>6} {'err0':>6} "
          f"{'moving':>6} {'along':>6} {'dir ok':>6} {'slope':>6}")
    for name, per_group in results["models"].items():
        for g, s in per_group.items():
            along = f"{s['moving_along']:6.2f}" if s["moving"] else f"{'-':>6}"
            share = f"{s['moving_positive_share']:6.2f}" if s["moving"] else f"{'-':>6}"
            slope = f"{s['slope']:6.2f}" if s["slope"] is not None else f"{'-':>6}"
            print(f"{name:<18} {g:<30} {s['objects']:>4} {s['speed_pred']:8.2f} {s['speed_gt']:7.2f} "
                  f"{s['err']:6.2f} {s['err0']:6.2f} {s['moving']:>6} {along} {share} {slope}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
