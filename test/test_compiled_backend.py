"""``backend: compiled`` (torch.compile of the student parts that pay for it, labeldistill_ros.inference: the image
backbone on a CPU): built and checked against eager in the warm-up, the same boxes as eager on the real key frame,
never compiling inside a set (a set with another camera count runs eager). Compiling it takes about 15 s on 2 cores
with a cold compiler cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from labeldistill_ros.inference import Detector, DetectorError, compiled_part_names
from node_support import make_checkpoint, real_sample, tf_roundtrip

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(1200)]


def test_compiled_backend_gives_eager_boxes(tmp_path, real_sample_dir):
    sample = real_sample(real_sample_dir)
    ckpt = make_checkpoint(tmp_path / "student.pt", seed=0)
    eager = Detector(ckpt, device="cpu", score_threshold=0.05, max_detections=100)
    compiled = Detector(ckpt, device="cpu", score_threshold=0.05, max_detections=100, backend="compiled")
    assert "compiled" in compiled.describe()
    compiled.warmup(6, iterations=1)  # compiles here, and checks the compiled graphs against eager
    T = tf_roundtrip(sample)
    ref = eager.detect(sample.images, sample.Ks, T)
    got = compiled.detect(sample.images, sample.Ks, T)
    assert len(got) == len(ref) > 0
    assert got.names == ref.names
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)
    np.testing.assert_allclose(got.boxes, ref.boxes, atol=1e-3)
    # A set with another camera count takes the eager parts: no compilation on the node's path.
    parts = dict(compiled._compiled_parts)
    assert set(parts) == set(compiled_part_names("cpu")) == {"backbone"}
    five = compiled.detect(sample.images[:5], sample.Ks[:5], T[:5], cameras=[0, 1, 2, 3, 4])
    ref5 = eager.detect(sample.images[:5], sample.Ks[:5], T[:5], cameras=[0, 1, 2, 3, 4])
    np.testing.assert_array_equal(five.boxes, ref5.boxes)
    assert compiled._compiled_parts == parts and compiled.model.backbone is compiled._eager_parts["backbone"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (no GPU in the CPU sessions)")
def test_compiled_backend_on_cuda_gives_eager_boxes(tmp_path, real_sample_dir):
    """On CUDA the compiled backend compiles every convolutional part (triton kernels) in the warm-up and, in fp16,
    gives eager fp16's boxes on the real key frame, up to the fused kernels' own rounding (the warm-up's own
    check: 2e-2 m + 1e-3 relative, boxes matched, as fp16 near-ties of random weights may swap places)."""
    sample = real_sample(real_sample_dir)
    ckpt = make_checkpoint(tmp_path / "student.pt", seed=0)
    eager = Detector(ckpt, device="cuda", precision="fp16", score_threshold=0.05, max_detections=100)
    compiled = Detector(ckpt, device="cuda", precision="fp16", score_threshold=0.05, max_detections=100,
                        backend="compiled")
    compiled.warmup(6, iterations=1)
    assert set(compiled._compiled_parts) == set(compiled_part_names("cuda"))
    T = tf_roundtrip(sample)
    ref = eager.detect(sample.images, sample.Ks, T)
    got = compiled.detect(sample.images, sample.Ks, T)
    assert len(ref) > 0 and got.agrees_with(ref, rtol=1e-3, atol=2e-2)


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(DetectorError, match="backend 'tensorrt' is not supported"):
        Detector(make_checkpoint(tmp_path / "s.pt"), device="cpu", backend="tensorrt")
