#!/usr/bin/env python3
"""Data-pipeline throughput of the r50_256x704 configuration (BEVDepth R50 input) with 0, 1 and 2 workers.

Per sample: six 1600x900 JPEG decodes, random image augmentation (resize/crop/flip/rotate, one ``warpAffine`` per
image) to 256x704, normalisation, camera geometry, BEV augmentation of the boxes, and depth targets at stride 16
from the projected key-frame LiDAR cloud (the student's training input). Data: a small synthetic set rendered at
the real nuScenes image size (generated into a temporary folder, ~1 min). Prints a table and writes
``bench/results/data.json``. Timings are wall-clock on a possibly shared machine.

    python bench/bench_data.py            # 3 epochs of 12 samples per worker count
    python bench/bench_data.py --quick    # 1 epoch
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "data.json"


def measure(ds, workers: int, batch_size: int, epochs: int) -> dict:
    """Samples/s over ``epochs`` passes, after one warm-up batch (worker start-up excluded)."""
    from labeldistill_training.data.dataset import build_dataloader

    dl = build_dataloader(ds, batch_size=batch_size, num_workers=workers, shuffle=False,
                          persistent_workers=workers > 0)
    it = iter(dl)
    next(it)  # warm-up: worker start, first decode
    n, t0 = 0, time.perf_counter()
    for batch in it:
        n += len(batch["sample_token"])
    for _ in range(epochs - 1):
        for batch in dl:
            n += len(batch["sample_token"])
    dt = time.perf_counter() - t0
    return {"workers": workers, "samples": n, "seconds": round(dt, 3), "samples_per_s": round(n / dt, 2),
            "ms_per_sample": round(1000 * dt / n, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one epoch per worker count")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--source", default="1600x900", help="rendered image size WxH (default: real nuScenes)")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)

    from labeldistill_training.data.config import preset
    from labeldistill_training.data.dataset import NuScenesDataset
    from labeldistill_training.data.infos import create_infos, load_nuscenes
    from labeldistill_training.synth.config import SIZES
    from labeldistill_training.synth.generate import generate

    w, h = (int(v) for v in a.source.lower().split("x"))
    synth = SIZES["tiny"].replace(num_scenes=2, key_frames_per_scene=6, image_width=w, image_height=h,
                                  write_masks=False)
    epochs = 1 if a.quick else 3
    with tempfile.TemporaryDirectory(prefix="bench_data_") as root:
        t0 = time.perf_counter()
        generate(synth, 0, root)
        gen_s = time.perf_counter() - t0
        infos = create_infos(load_nuscenes(root, synth.version), "synth_all")
        cfg = preset("r50_256x704", root, load_points=False)
        ds = NuScenesDataset(cfg, infos, training=True, seed=0)
        rows = [measure(ds, wk, a.batch_size, epochs) for wk in (0, 1, 2)]
    out = {
        "benchmark": "data",
        "pipeline": "r50_256x704",
        "what": "6 cameras: JPEG decode + image aug (warpAffine) to 256x704 + normalise; BEV aug; depth targets "
                "at stride 16 from the key-frame LiDAR; no LiDAR points returned (camera student input)",
        "source_images": f"{w}x{h} synthetic JPEG (q{synth.jpeg_quality})",
        "batch_size": a.batch_size,
        "samples_per_epoch": len(infos),
        "epochs": epochs,
        "generation_s": round(gen_s, 1),
        "results": rows,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0], "load_avg_1m": round(os.getloadavg()[0], 2)},
        "note": "wall-clock on a possibly shared machine; workers > 0 exclude worker start-up",
    }
    print(f"\nr50_256x704 data pipeline ({w}x{h} JPEGs, 6 cameras, depth targets, batch {a.batch_size})")
    print(f"{'workers':>8} {'samples/s':>10} {'ms/sample':>10}")
    for r in rows:
        print(f"{r['workers']:>8} {r['samples_per_s']:>10.2f} {r['ms_per_sample']:>10.1f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
