"""The main job on the embedded default (``make demo``), end to end on 2 CPU cores.

Steps (each is skipped when its output already exists; a killed run resumes where it stopped):
  1. synth          ``labeldistill-synth --size demo``: a synthetic nuScenes-format world (256 key frames)
  2. teacher        ``labeldistill-train --stage teacher``: the LiDAR teacher (config/train/cpu_small.yaml)
  3. label_encoder  ``labeldistill-train --stage label_encoder``: LabelDistill's label encoder
  4. student        ``labeldistill-train --stage student``: the camera student distilled with LabelDistill
  5. export         the student's inference graph with torch.export (``student.pt2``)
  6. bag            ``labeldistill-nusc2bag``: the validation scenes as a rosbag2 (MCAP, JPEG images)
  7. replay         ``labeldistill-bag-eval live --autoware``: the bag played through the real ROS 2 detector
                    node, its Detection3DArray and DetectedObjects (the velocities) recorded and scored with
                    nuscenes-devkit (mAP, NDS, mAVE), BEV PNGs
Everything lands in ``demo_output/``. Options: ``--out DIR``, ``--seed N``, ``--fresh`` (start over).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (training/labeldistill_training/demo.py)
TRAIN_CONFIG = ROOT / "config" / "train" / "cpu_small.yaml"


class Demo:
    """Paths of every artefact; one method per step."""

    def __init__(self, out: Path, seed: int):
        self.out, self.seed = out, seed
        self.dataroot = out / "synth_demo"
        self.work = out / "work_dirs"
        self.student_ckpt = self.work / "student" / "student.pt"
        self.exported = out / "student.pt2"
        self.bag = out / "bag_synth_val"
        self.eval_dir = out / "eval_live"

    def _run(self, module: str, *args: str) -> None:
        cmd = [sys.executable, "-m", module, *map(str, args)]
        print("[demo] $ " + " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)

    def _train(self, stage: str) -> None:
        # the student is scored live through the node (step 7), not a second time offline
        extra = ["--set", "trainer.eval_at_end=false"] if stage == "student" else []
        self._run("labeldistill_training.cli", "--config", TRAIN_CONFIG, "--stage", stage,
                  "--set", f"data.dataroot={self.dataroot}", "--set", f"trainer.work_dir={self.work}",
                  "--set", f"trainer.seed={self.seed}", "--set", "distill.method=labeldistill", *extra)

    # -- steps: (output that marks the step done, action) ------------------------------------------------
    def synth(self):
        return self.dataroot / "v1.0-synth" / "sample.json", lambda: self._run(
            "labeldistill_training.synth.cli", "--size", "demo", "--seed", self.seed, "--out", self.dataroot)

    def teacher(self):
        return self.work / "teacher" / "final.pt", lambda: self._train("teacher")

    def label_encoder(self):
        return self.work / "label_encoder" / "final.pt", lambda: self._train("label_encoder")

    def student(self):
        return self.student_ckpt, lambda: self._train("student")

    def export(self):
        def go():
            from labeldistill_ros.model.checkpoint import load_checkpoint
            from labeldistill_ros.model.export import example_inputs, export_student

            model = load_checkpoint(self.student_ckpt)
            export_student(model, example_inputs(model.cfg), self.exported)
            print(f"[demo] exported {self.exported}")
        return self.exported, go

    def bag_step(self):
        return self.bag / "metadata.yaml", lambda: self._run(
            "labeldistill_training.tools.nusc2bag", "--dataroot", self.dataroot, "--version", "v1.0-synth",
            "--split", "synth_val", "--out", self.bag)

    def replay(self):
        return self.eval_dir / "bag_eval.json", lambda: self._run(
            "labeldistill_training.tools.bag_eval", "live", "--bag", self.bag, "--dataroot", self.dataroot,
            "--version", "v1.0-synth", "--checkpoint", self.student_ckpt, "--out", self.eval_dir,
            "--lockstep", "--autoware", "--node-log", self.out / "detector_node.log")

    def steps(self):
        return [("synth", self.synth), ("teacher", self.teacher), ("label_encoder", self.label_encoder),
                ("student", self.student), ("export", self.export), ("bag", self.bag_step),
                ("replay", self.replay)]


def summarise(demo: Demo) -> None:
    report = json.loads((demo.eval_dir / "bag_eval.json").read_text())
    print("\n[demo] LabelDistill student, live replay through the ROS 2 node (synthetic validation scenes)")
    print(f"    mAP {report['mAP']:.4f}   NDS {report['NDS']:.4f}   key frames {report['key_frames']}   "
          f"drop rate {report['drop_rate']:.3f}")
    print("    TP errors: " + ", ".join(f"{k} {v:.3f}" for k, v in report["tp_errors"].items()))
    print("    latency ms: " + json.dumps(report["latency_ms"]))
    print(f"[demo] outputs in {demo.out}/: {demo.bag.name}/ (open in RViz/Foxglove), {demo.eval_dir.name}/bev/*.png, "
          f"{demo.exported.name}, {demo.student_ckpt.relative_to(demo.out)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "demo_output"), help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="delete the output folder first")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(out, args.seed)
    steps = demo.steps()
    t_all = time.monotonic()
    for i, (name, step) in enumerate(steps, 1):
        marker, action = step()
        if marker.exists():
            print(f"[demo] step {i}/{len(steps)} {name}: already done ({marker.relative_to(out)})", flush=True)
            continue
        print(f"[demo] step {i}/{len(steps)} {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            action()
        except subprocess.CalledProcessError as e:
            print(f"[demo] step {i}/{len(steps)} {name} FAILED (exit {e.returncode}); rerun `make demo` to "
                  f"resume from this step", file=sys.stderr)
            return 1
        print(f"[demo] step {i}/{len(steps)} {name}: done in {time.monotonic() - t0:.0f} s", flush=True)
    print(f"[demo] all steps done in {time.monotonic() - t_all:.0f} s")
    summarise(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
