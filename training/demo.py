"""The main job on the embedded default (``make demo``): each step runs only when its output is missing.

Steps are added as the capabilities land; today: the environment check. Output goes to ``demo_output/``.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

OUT = Path("demo_output")


def step_environment() -> None:
    code = ("import rclpy, torch; from vision_msgs.msg import Detection3DArray; "
            "from tf2_msgs.msg import TFMessage; print('rclpy + torch', torch.__version__, "
            "'+ vision_msgs + tf2_msgs: ok')")
    subprocess.run([sys.executable, "-c", code], check=True)


STEPS = [("environment", step_environment)]


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for i, (name, fn) in enumerate(STEPS, 1):
        t0 = time.monotonic()
        print(f"[demo] step {i}/{len(STEPS)}: {name}", flush=True)
        fn()
        print(f"[demo] step {i}/{len(STEPS)}: {name} done ({time.monotonic() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
