"""The one box coder (labeldistill_ros.model.box_coder): encode -> decode round trip, hand values, the size clamp,
and equality with the encoders/decoders it replaced (kept here, verbatim, as references)."""
from __future__ import annotations

import math

import pytest
import torch

from labeldistill_ros.model import BoxCoder
from labeldistill_ros.model.box_coder import LOG_SIZE_MAX
from labeldistill_ros.model.config import BEVGridConfig

GRID = BEVGridConfig(x=(-51.2, 51.2, 0.8), y=(-51.2, 51.2, 0.8))


# ------------------------------------------------------------------------------------------ previous versions
def old_encode_boxes(boxes: torch.Tensor, grid: BEVGridConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``model/decode.py``'s ``encode_boxes`` before the box coder."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    cx = (boxes[:, 0] - grid.x[0]) / grid.x[2]
    cy = (boxes[:, 1] - grid.y[0]) / grid.y[2]
    ix, iy = torch.floor(cx), torch.floor(cy)
    code = torch.stack(
        [cx - ix, cy - iy, boxes[:, 2], *torch.log(boxes[:, 3:6]).unbind(1),
         torch.sin(boxes[:, 6]), torch.cos(boxes[:, 6]), boxes[:, 7], boxes[:, 8]],
        dim=1,
    )
    return torch.stack([ix, iy], dim=1).long(), code


def old_decode_code(code: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor, grid: BEVGridConfig) -> torch.Tensor:
    """``model/decode.py``'s ``decode_code`` before the box coder (inference decoding, no clamp)."""
    code = code.float()
    x = (ix.float() + code[..., 0]) * grid.x[2] + grid.x[0]
    y = (iy.float() + code[..., 1]) * grid.y[2] + grid.y[0]
    dims = torch.exp(code[..., 3:6])
    yaw = torch.atan2(code[..., 6], code[..., 7])
    return torch.cat([x[..., None], y[..., None], code[..., 2:3], dims, yaw[..., None], code[..., 8:10]], dim=-1)


def old_stereodistill_decode_reg(r: torch.Tensor, ind: torch.Tensor, x_min: float, y_min: float, cell: float,
                                 W: int) -> torch.Tensor:
    """``losses/stereodistill.py``'s ``decode_reg`` before the box coder (the only one that clamped, at 6)."""
    col = (ind % W).float()
    row = torch.div(ind, W, rounding_mode="floor").float()
    x = (col + r[:, 0]) * cell + x_min
    y = (row + r[:, 1]) * cell + y_min
    dims = r[:, 3:6].clamp(max=6.0).exp()
    yaw = torch.atan2(r[:, 6], r[:, 7])
    return torch.cat([x[:, None], y[:, None], r[:, 2:3], dims, yaw[:, None], r[:, 8:10]], 1)


def random_boxes(n: int, seed: int = 0, span: float = 50.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 9, generator=g)
    return torch.stack([(u[:, 0] * 2 - 1) * span, (u[:, 1] * 2 - 1) * span, u[:, 2] * 4 - 2,
                        0.3 + u[:, 3] * 12, 0.3 + u[:, 4] * 3, 0.5 + u[:, 5] * 3,
                        (u[:, 6] * 2 - 1) * math.pi * 0.999, (u[:, 7] * 2 - 1) * 10, (u[:, 8] * 2 - 1) * 10], 1)


# ---------------------------------------------------------------------------------------------------- tests
def test_encode_hand_values():
    coder = BoxCoder(BEVGridConfig(x=(0.0, 8.0, 1.0), y=(-4.0, 4.0, 0.5)))
    cells, code = coder.encode(torch.tensor([[3.25, -1.1, 0.8, 4.0, 2.0, 1.5, 0.3, 1.0, -2.0]]))
    assert cells.tolist() == [[3, 5]]  # y: (-1.1 + 4) / 0.5 = 5.8
    expect = [0.25, 0.8, 0.8, math.log(4), math.log(2), math.log(1.5), math.sin(0.3), math.cos(0.3), 1.0, -2.0]
    torch.testing.assert_close(code[0], torch.tensor(expect), atol=1e-6, rtol=0)
    assert int(coder.flat_index(cells)[0]) == 5 * 8 + 3
    assert [int(v) for v in coder.unflatten(torch.tensor(43))] == [3, 5]


def test_round_trip_random_boxes():
    boxes = random_boxes(2000)
    coder = BoxCoder(GRID)
    cells, code = coder.encode(boxes)
    assert bool(coder.inside(cells).all())
    back = coder.decode(code, cells[:, 0], cells[:, 1])
    torch.testing.assert_close(back[:, :6], boxes[:, :6], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(back[:, 7:], boxes[:, 7:], atol=1e-6, rtol=0)
    dyaw = torch.remainder(back[:, 6] - boxes[:, 6] + math.pi, 2 * math.pi) - math.pi
    assert float(dyaw.abs().max()) < 1e-5
    assert bool(((code[:, :2] >= 0) & (code[:, :2] < 1)).all())


def test_equal_to_the_previous_encoder_and_decoders():
    boxes = random_boxes(2000, seed=1)
    coder = BoxCoder(GRID)
    cells, code = coder.encode(boxes)
    old_cells, old_code = old_encode_boxes(boxes, GRID)
    assert torch.equal(cells, old_cells)
    # offsets now from float64 cells: the old float32 ones were off by up to an ulp of the cell number (7.6e-6)
    torch.testing.assert_close(code, old_code, atol=1.6e-5, rtol=0)
    # decoding arbitrary codes (log-sizes within the clamp) is bit-identical to the old inference decoder
    g = torch.Generator().manual_seed(2)
    codes = torch.randn(4, 500, 10, generator=g) * 2
    codes[..., 3:6] = codes[..., 3:6].clamp(-6.0, 5.9)  # inside the clamp; outside it, see the clamp test
    ix, iy = torch.randint(0, 128, (2, 4, 500), generator=g)
    assert torch.equal(coder.decode(codes, ix, iy), old_decode_code(codes, ix, iy, GRID))
    ind = iy[0] * 128 + ix[0]
    assert torch.equal(coder.decode_at(codes[0], ind), old_stereodistill_decode_reg(codes[0], ind, -51.2, -51.2, 0.8, 128))


def test_size_clamp_decided_once():
    coder = BoxCoder(GRID)
    code = torch.zeros(3, 10)
    code[:, 7] = 1.0
    code[0, 3:6] = 100.0  # exp(100) overflows float32: clamped to exp(6) = 403 m
    code[1, 3:6] = -50.0  # clamped to 1 mm
    code[2, 3:6] = math.log(2.0)
    zeros = torch.zeros(3, dtype=torch.long)
    sizes = coder.decode(code, zeros, zeros)[:, 3:6]
    torch.testing.assert_close(sizes[0], torch.full((3,), math.exp(LOG_SIZE_MAX)))
    torch.testing.assert_close(sizes[1], torch.full((3,), 1e-3))
    torch.testing.assert_close(sizes[2], torch.full((3,), 2.0))
    assert math.isinf(float(BoxCoder(GRID, clamp_log_size=False).decode(code, zeros, zeros)[0, 3]))
    # a zero-size GT box encodes to log(1 mm), not -inf
    _, c = coder.encode(torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]]))
    assert float(c[0, 3]) == pytest.approx(math.log(1e-3), rel=1e-6)
    # a narrower range (UniDistill's IoU target: [1 mm, 30 m])
    narrow = BoxCoder(GRID, log_size_range=(math.log(1e-3), math.log(30.0)))
    assert float(narrow.decode(code, zeros, zeros)[0, 3]) == pytest.approx(30.0, rel=1e-6)


def test_out_size_factor_and_outside_cells():
    coder = BoxCoder(GRID, out_size_factor=2)
    assert (coder.nx, coder.ny, coder.cell_x) == (64, 64, 1.6)
    cells, code = coder.encode(torch.tensor([[0.0, 0.0, 0, 1, 1, 1, 0, 0, 0], [60.0, 0, 0, 1, 1, 1, 0, 0, 0],
                                             [float("nan"), 0, 0, 1, 1, 1, 0, 0, 0]]))
    assert cells[0].tolist() == [32, 32] and coder.inside(cells).tolist() == [True, False, False]
    assert int(cells[2, 0]) == -1
    with pytest.raises(ValueError, match="out_size_factor"):
        BoxCoder(GRID, out_size_factor=3)


def test_bev_grid_config_geometry():
    assert (GRID.nx, GRID.ny, GRID.x_min, GRID.y_min, GRID.cell) == (128, 128, -51.2, -51.2, 0.8)
    with pytest.raises(ValueError, match="square cells"):
        _ = BEVGridConfig(x=(0.0, 8.0, 1.0), y=(0.0, 8.0, 0.5)).cell
