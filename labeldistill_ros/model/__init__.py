"""The camera student (BEVDepth-style BEV detector) and what runs around it.

Public API::

    from labeldistill_ros.model import (load_model_config, StudentDetector, preprocess, preprocess_image,
                                        save_checkpoint, load_checkpoint, export_student, load_exported)

    cfg = load_model_config("config/model/r18_128x352_cpu.yaml")
    model = StudentDetector.from_config(cfg).eval()
    images, ida = preprocess(rgb_uint8_images, cfg.input_size)          # (N, 3, h, w), (N, 4, 4)
    out = model(images[None], K[None], cam2ego[None], ida[None], torch.eye(4)[None])
    detections = model.decode(out.head_outputs)                        # per sample: boxes (M, 9), scores, labels
"""
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .config import ConfigError, ModelConfig, load_model_config, model_config_from_dict, model_config_to_dict
from .decode import Detections, circle_nms, decode_code, encode_boxes
from .export import export_student, load_exported, unflatten_head_outputs
from .preprocess import preprocess, preprocess_image
from .student import StudentDetector, StudentOutput

__all__ = [
    "CheckpointError", "ConfigError", "Detections", "ModelConfig", "StudentDetector", "StudentOutput",
    "circle_nms", "decode_code", "encode_boxes", "export_student", "load_checkpoint", "load_exported",
    "load_model_config", "model_config_from_dict", "model_config_to_dict", "preprocess", "preprocess_image",
    "read_checkpoint", "save_checkpoint", "unflatten_head_outputs",
]
