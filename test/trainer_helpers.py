"""Helpers for the trainer tests (no tests here): a deterministic fake LiDAR dataset for the teacher stage and a
command-line entry that trains with it (used by the stop/kill/resume and torchrun DDP tests): ``--max-steps N``
stops cleanly (trainer.max_steps), ``--kill-at-step N`` SIGKILLs the process from a step callback (a crash)."""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


class FakeLidarSet(torch.utils.data.Dataset):
    """Samples with a few car/pedestrian boxes and LiDAR points on their surfaces (ego frame, 5 features)."""

    def __init__(self, n: int, seed: int = 0, points: int = 600) -> None:
        self.n, self.seed, self.points = n, seed, points

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 7919 + i)
        k = 3
        xy = torch.rand(k, 2, generator=g) * 60 - 30
        labels = torch.randint(0, 2, (k,), generator=g) * 8  # car (0) or pedestrian (8)
        lwh = torch.where(labels[:, None] == 0, torch.tensor([[4.5, 1.9, 1.6]]), torch.tensor([[0.7, 0.7, 1.8]]))
        yaw = torch.rand(k, 1, generator=g) * 2 * math.pi - math.pi
        boxes = torch.cat([xy, lwh[:, 2:3] / 2, lwh, yaw, torch.zeros(k, 2)], 1)
        per = self.points // (k + 1)
        pts = []
        for b in boxes:
            u = torch.rand(per, 3, generator=g) - 0.5
            loc = u * b[3:6]
            c, s = math.cos(float(b[6])), math.sin(float(b[6]))
            x = b[0] + loc[:, 0] * c - loc[:, 1] * s
            y = b[1] + loc[:, 0] * s + loc[:, 1] * c
            pts.append(torch.stack([x, y, b[2] + loc[:, 2], torch.full_like(x, 0.5), torch.zeros_like(x)], 1))
        ground = torch.cat([torch.rand(per, 2, generator=g) * 100 - 50, torch.zeros(per, 1), torch.full((per, 1), 0.1),
                            torch.zeros(per, 1)], 1)
        pts.append(ground)
        return {"points": torch.cat(pts), "gt_boxes": boxes, "gt_labels": labels, "sample_token": f"fake{i}"}


def collate(samples: list[dict]) -> dict:
    n = max(s["points"].shape[0] for s in samples)
    pts = torch.full((len(samples), n, 5), -999.0)
    for i, s in enumerate(samples):
        pts[i, : s["points"].shape[0]] = s["points"]
    return {"points": pts, "gt_boxes": [s["gt_boxes"] for s in samples],
            "gt_labels": [s["gt_labels"] for s in samples], "sample_token": [s["sample_token"] for s in samples]}


class FakeCameraSet(torch.utils.data.Dataset):
    """Student-stage samples without a data pipeline: 2 cameras at the small model's 128x352 input, random images,
    two GT boxes, sparse depth targets (the ``images`` batch layout :func:`student_inputs` accepts)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 7919 + i)
        N = 2
        R0 = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # optical -> ego
        cam2ego = torch.zeros(N, 4, 4)
        for n in range(N):
            a = math.pi * n
            Rz = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])
            cam2ego[n, :3, :3] = Rz @ R0
            cam2ego[n, :3, 3] = torch.tensor([1.0, 0.0, 1.5])
            cam2ego[n, 3, 3] = 1
        depth = torch.zeros(N, 8, 22)
        depth[:, 4, 5:9] = 12.0
        boxes = torch.tensor([[10.0, 2.0, 0.8, 4.5, 1.9, 1.6, 0.3, 1.0, 0.0], [-5.0, 8.0, 0.9, 0.7, 0.7, 1.8, 0, 0, 0]])
        return {"images": torch.randn(N, 3, 128, 352, generator=g),
                "K": torch.tensor([[120.0, 0, 176], [0, 120.0, 64], [0, 0, 1]]).expand(N, 3, 3).clone(),
                "cam2ego": cam2ego, "ida": torch.eye(4).expand(N, 4, 4).clone(), "bda": torch.eye(4),
                "gt_boxes": boxes, "gt_labels": torch.tensor([0, 8]), "depth": depth, "sample_token": f"cam{i}"}


def camera_collate(samples: list[dict]) -> dict:
    out = {k: torch.stack([s[k] for s in samples]) for k in ("images", "K", "cam2ego", "ida", "bda", "depth")}
    out.update({k: [s[k] for s in samples] for k in ("gt_boxes", "gt_labels", "sample_token")})
    return out


def camera_factory(cfg, model_cfg, split, stage):
    return FakeCameraSet(4 if split == "train" else 2, seed=0 if split == "train" else 1)


def fake_factory(cfg, model_cfg, split, stage):
    return FakeLidarSet(16 if split == "train" else 4, seed=0 if split == "train" else 1)


def fake_config(work_dir: Path, epochs: int = 3, iters: int = 4) -> dict:
    """A tiny teacher-stage config on the small CPU grid (64 x 64 cells of 1.6 m)."""
    return {
        "model_config": str(REPO / "config/model/r18_128x352_cpu.yaml"),
        "loader": {"batch_size": 2, "num_workers": 0},
        "teacher": {"pillar_size": [0.8, 0.8], "pillar_channels": 8, "encoder_channels": 16,
                    "backbone_channels": [16, 32], "backbone_layers": [1, 1], "neck_channels": [16, 16],
                    "head_share_channels": 16, "head_conv_channels": 16},
        "stages": {"teacher": {"epochs": epochs, "lr": 2e-3, "milestones": [2], "max_iters_per_epoch": iters,
                               "amp": False}},
        "trainer": {"work_dir": str(work_dir), "seed": 3, "ema_ramp": 5.0, "eval_at_end": False, "progress": False,
                    "log_interval": 1},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--kill-at-step", type=int, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from labeldistill_training.config import train_config_from_dict
    from labeldistill_training.trainer import Trainer

    raw = fake_config(Path(args.work_dir), args.epochs)
    raw["trainer"]["max_steps"] = args.max_steps
    cfg = train_config_from_dict(raw)

    def crash(info):
        if info.step == args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    summary = Trainer(cfg, "teacher", dataset_factory=fake_factory, collate_fn=collate,
                      on_step=crash if args.kill_at_step else None).fit()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
