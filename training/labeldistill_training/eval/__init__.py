"""Evaluation: detections -> nuScenes results JSON -> nuscenes-devkit ``DetectionEval`` (mAP, NDS, TP errors)."""
