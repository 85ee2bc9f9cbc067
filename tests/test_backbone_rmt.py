"""RMT (vision/backbones/rmt.py), what is particular to it: the Manhattan decay masks, non-square maps, and the
authors' checkpoint layout. The checks every backbone gets: tests/test_backbones.py."""

import timm
import torch
from safetensors.torch import save_file
from test_backbones import assert_loads_as, randomised, to_stage_end_layout

from vision.backbones.rmt import SpatialDecay, checkpoint_filter_fn


def test_decomposed_decay_masks_add_up_to_the_manhattan_mask():
    decay = SpatialDecay(dim=32, num_heads=4, initial_value=2, heads_range=4)
    H, W = 3, 5
    whole = decay.manhattan_mask(H, W).view(4, H, W, H, W)
    rows, cols = decay.axis_mask(H)[:, 0], decay.axis_mask(W)[:, 0]
    torch.testing.assert_close(whole, rows[:, :, None, :, None] + cols[:, None, :, None, :])
    # gamma_h = 1 - 2^-(2 + 4h/4): distance 2 between (0, 0) and (1, 1) costs 2 * log(gamma_h)
    expected = 2 * torch.log(1 - 2.0 ** -(2 + torch.arange(4.0)))
    torch.testing.assert_close(whole[:, 0, 0, 1, 1], expected)
    sin, cos = decay.rotation(H, W)
    assert sin.shape == cos.shape == (H, W, 8)


def test_non_square_maps():
    torch.manual_seed(0)
    model = timm.create_model("rmt_t", num_classes=10).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 10)  # a 1x2 last map


def _authors_layout(state: dict) -> dict:
    """Our state dict in the layout of github.com/qhfan/RMT: `layers.{i}` stages that end with the next
    stage's downsampling, and each stage's Relpos buffers."""
    out = to_stage_end_layout(state, "layers")
    for i, (dim, heads) in enumerate(zip((64, 128, 256, 512), (4, 4, 8, 16))):
        relpos = SpatialDecay(dim, heads, 2, (4, 4, 6, 6)[i])
        out[f"layers.{i}.Relpos.angle"], out[f"layers.{i}.Relpos.decay"] = relpos.angle, relpos.decay
    return out


def test_authors_checkpoint_layout_loads(tmp_path):
    torch.manual_seed(1)
    reference = randomised(timm.create_model("rmt_t"))  # with its 1000-class head, as their checkpoints come
    theirs = _authors_layout(reference.state_dict())
    assert "layers.0.downsample.reduction.weight" in theirs and "layers.2.Relpos.decay" in theirs
    # their torch checkpoints wrap the weights as {"model": ..., "optimizer": ..., "model_ema": ...}
    mapped = checkpoint_filter_fn({"model": theirs, "epoch": 299}, reference)
    assert mapped.keys() == reference.state_dict().keys()
    assert all(torch.equal(mapped[k], v) for k, v in reference.state_dict().items())
    assert checkpoint_filter_fn(reference.state_dict(), reference).keys() == reference.state_dict().keys()

    save_file({k: v.contiguous() for k, v in theirs.items()}, tmp_path / "rmt_t.safetensors")
    assert_loads_as(reference, tmp_path / "rmt_t.safetensors", "rmt_t", 32)
