"""Size presets of the synthetic world (typed, validated)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class SynthConfig:
    """Everything that sets the size and cost of one synthetic dataset.

    Attributes:
        version: nuScenes version folder name (``DATAROOT/<version>/*.json``). Custom splits need no particular
            suffix; ``v1.0-synth`` is used by default.
        num_scenes: number of scenes (one log each).
        key_frames_per_scene: key frames (samples) per scene, 2 Hz.
        sweeps_between_keys: non-key LiDAR sweeps between two key frames (evenly spaced in time).
        image_width, image_height: rendered image size in pixels; intrinsics are the real nuScenes ones scaled by
            ``image_width / 1600`` (16:9 sizes keep the aspect).
        lidar_azimuth_steps: horizontal rays per revolution (real HDL-32E at 20 Hz: about 1084).
        actors_per_scene: total actors (boxes) per scene, at least one per class.
        val_fraction: fraction of scenes (at least one) in the ``synth_val`` split.
        write_masks: also write instance-id masks (``synth_masks/``, 16-bit png) next to the images (for tests).
        jpeg_quality: JPEG quality of the camera images.
    """

    version: str = "v1.0-synth"
    num_scenes: int = 2
    key_frames_per_scene: int = 4
    sweeps_between_keys: int = 1
    image_width: int = 400
    image_height: int = 225
    lidar_azimuth_steps: int = 1084
    actors_per_scene: int = 24
    val_fraction: float = 0.5
    write_masks: bool = False
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        checks = {
            "num_scenes >= 1": self.num_scenes >= 1,
            "key_frames_per_scene >= 2": self.key_frames_per_scene >= 2,
            "sweeps_between_keys >= 0": self.sweeps_between_keys >= 0,
            "image size >= 32x18": self.image_width >= 32 and self.image_height >= 18,
            "lidar_azimuth_steps >= 90": self.lidar_azimuth_steps >= 90,
            "actors_per_scene >= 10": self.actors_per_scene >= 10,
            "0 < val_fraction < 1": 0.0 < self.val_fraction < 1.0,
            "1 <= jpeg_quality <= 100": 1 <= self.jpeg_quality <= 100,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"SynthConfig: violated {bad}")

    def replace(self, **kw) -> "SynthConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **kw)


SIZES: dict[str, SynthConfig] = {
    # Seconds to generate; for unit tests. 8 samples.
    "tiny": SynthConfig(num_scenes=2, key_frames_per_scene=4, sweeps_between_keys=1, image_width=400,
                        image_height=225, actors_per_scene=22, val_fraction=0.5, write_masks=True),
    # Demo / short CPU training runs: 256 samples (192 train, 64 val) at 400x225.
    "demo": SynthConfig(num_scenes=16, key_frames_per_scene=16, sweeps_between_keys=2, image_width=400,
                        image_height=225, actors_per_scene=30, val_fraction=0.25),
    # Distillation benchmark: 480 samples (384 train, 96 val) at 704x396 (nuScenes x 0.44).
    "bench": SynthConfig(num_scenes=24, key_frames_per_scene=20, sweeps_between_keys=3, image_width=704,
                         image_height=396, actors_per_scene=32, val_fraction=0.2),
}
"""Named presets for ``labeldistill-synth --size``."""
