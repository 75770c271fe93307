"""nuScenes data pipeline: infos through nuscenes-devkit, a torch Dataset with BEVDepth-style augmentation,
depth targets and previous key frames, a collate function and the typed data config. Works unchanged on real
v1.0-mini / v1.0-trainval and on the synthetic set of :mod:`labeldistill_training.synth`."""
