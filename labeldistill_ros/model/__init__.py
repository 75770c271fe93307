"""The camera student (BEVDepth-style BEV detector) and what runs around it.

Public API::

    from labeldistill_ros.model import (load_model_config, StudentDetector, ImageTransform, save_checkpoint,
                                        load_checkpoint, export_student, load_exported)

    cfg = load_model_config("config/model/r18_128x352_cpu.yaml")
    model = StudentDetector.from_config(cfg).eval()
    transform = ImageTransform(cfg.input_size, cfg.image)
    ida = [transform.ida(img.shape[1], img.shape[0]) for img in rgb_uint8_images]   # (4, 4) each
    images = torch.stack([transform(img, a) for img, a in zip(rgb_uint8_images, ida)])  # (N, 3, h, w)
    out = model(images[None], K[None], cam2ego[None], ida[None], torch.eye(4)[None])
    detections = model.decode(out.head_outputs)                        # per sample: boxes (M, 9), scores, labels
"""
from .box_coder import BoxCoder
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .config import ConfigError, ModelConfig, load_model_config, model_config_from_dict, model_config_to_dict
from .decode import Detections, circle_nms
from .export import export_student, load_exported, unflatten_head_outputs
from .image_transform import ImageTransform, ImageTransformConfig
from .student import StudentDetector, StudentOutput

__all__ = [
    "BoxCoder", "CheckpointError", "ConfigError", "Detections", "ImageTransform", "ImageTransformConfig", "ModelConfig",
    "StudentDetector", "StudentOutput",
    "circle_nms", "export_student", "load_checkpoint", "load_exported",
    "load_model_config", "model_config_from_dict", "model_config_to_dict",
    "read_checkpoint", "save_checkpoint", "unflatten_head_outputs",
]
