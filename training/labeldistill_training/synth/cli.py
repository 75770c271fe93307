"""Console script ``labeldistill-synth``: write a synthetic nuScenes-format dataset.

Example::

    labeldistill-synth --size tiny --seed 0 --out /tmp/synth_tiny
"""
from __future__ import annotations

import argparse
import sys

from .config import SIZES
from .generate import generate


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, generate, print a one-line summary; returns the exit status."""
    p = argparse.ArgumentParser(prog="labeldistill-synth", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny", help="dataset preset")
    p.add_argument("--seed", type=int, default=0, help="master seed (same seed -> identical files)")
    p.add_argument("--out", required=True, help="output dataroot")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: up to 2)")
    p.add_argument("--scenes", type=int, default=None, help="override the preset's number of scenes")
    p.add_argument("--masks", action="store_true", help="also write instance-id masks (synth_masks/)")
    a = p.parse_args(argv)
    cfg = SIZES[a.size]
    if a.scenes is not None:
        cfg = cfg.replace(num_scenes=a.scenes)
    if a.masks:
        cfg = cfg.replace(write_masks=True)
    s = generate(cfg, a.seed, a.out, workers=a.workers)
    print(f"labeldistill-synth: {s.num_scenes} scenes, {s.num_samples} samples, {s.num_annotations} annotations, "
          f"splits {s.splits}, version {s.version} -> {s.dataroot} in {s.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
