"""labeldistill_ros.inference.Detector (the node's and the bag evaluator's pipeline) with a random-weight
checkpoint of the small CPU student: detection output, non-finite outputs dropped and counted, clear start-up errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from labeldistill_ros.inference import Detector, DetectorError
from node_support import make_checkpoint, real_sample, tf_roundtrip


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "student.pt", seed=0)


@pytest.fixture(scope="module")
def sample(real_sample_dir):
    return real_sample(real_sample_dir)


@pytest.fixture(scope="module")
def det(ckpt) -> Detector:
    return Detector(ckpt, device="cpu", score_threshold=0.05, max_detections=50)


def test_detect_returns_sorted_boxes_in_the_target_frame(det, sample):
    out = det.detect(sample.images, sample.Ks, tf_roundtrip(sample))
    assert 0 < len(out) <= 50 and out.boxes.shape == (len(out), 9) and out.boxes.dtype == np.float64
    assert np.all(np.diff(out.scores) <= 0) and np.all(out.scores >= 0.05)
    assert set(out.names) <= set(det.class_names) and out.nonfinite == 0
    assert np.all(np.abs(out.boxes[:, :2]) <= 61.2) and np.all(out.boxes[:, 3:6] > 0)
    assert set(out.timing_ms) == {"preprocess", "forward", "postprocess"}
    again = det.detect(sample.images, sample.Ks, tf_roundtrip(sample))
    np.testing.assert_array_equal(again.boxes, out.boxes)  # deterministic
    five = det.detect(sample.images[:5], sample.Ks[:5], tf_roundtrip(sample)[:5], cameras=[0, 1, 2, 3, 4])
    assert five.boxes.shape[1] == 9  # a set without a camera runs


def test_nonfinite_outputs_are_dropped_and_counted(tmp_path, sample):
    poisoned = Detector(make_checkpoint(tmp_path / "nan.pt", seed=0, poison_task=0), device="cpu",
                        score_threshold=0.05)
    out = poisoned.detect(sample.images, sample.Ks, tf_roundtrip(sample))
    assert out.nonfinite > 0
    assert np.isfinite(out.boxes).all() and np.isfinite(out.scores).all()
    assert "car" not in out.names and len(out) > 0  # task 0 (car) is poisoned; the other tasks still detect


def test_startup_errors_are_clear(tmp_path, ckpt):
    with pytest.raises(DetectorError, match="does not exist"):
        Detector(tmp_path / "missing.pt", device="cpu")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DetectorError, match="bad.pt' cannot be loaded: .*not a readable torch checkpoint"):
        Detector(bad, device="cpu")
    with pytest.raises(DetectorError, match="fp16 needs a CUDA device"):
        Detector(ckpt, device="cpu", precision="fp16")
    with pytest.raises(DetectorError, match="precision 'int8'"):
        Detector(ckpt, device="cpu", precision="int8")
    if not torch.cuda.is_available():
        with pytest.raises(DetectorError, match="CUDA is not available"):
            Detector(ckpt, device="cuda")
