"""DiNAT (vision/backbones/dinat.py), what is particular to it: neighbourhood attention checked by construction
(whole-map kernel = self-attention; natten's window formulas at the borders), dilated windows at 224, non-square
maps, and the authors' checkpoint layout. The checks every backbone gets: tests/test_backbones.py."""

import pytest
import timm
import torch
from safetensors.torch import save_file
from test_backbones import assert_loads_as, randomised, to_stage_end_layout

from vision.backbones.dinat import (
    _NATTEN,
    axis_windows,
    checkpoint_filter_fn,
    neighborhood_attention,
)


def _qkv(H, W, heads=2, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, 2, heads, H, W, dim, generator=generator).unbind(0)


# ---- neighbourhood attention -------------------------------------------------------------------
@pytest.mark.parametrize("H, W, kernel", [(7, 7, 7), (5, 6, 7), (3, 3, 3), (1, 4, 5)])
def test_kernel_covering_the_map_is_full_self_attention(H, W, kernel):
    """A window that spans the whole map (or more: the window is clipped to the map) sees every token."""
    q, k, v = _qkv(H, W)
    out = neighborhood_attention(q, k, v, kernel, dilation=1, rpb=None)
    full = torch.nn.functional.scaled_dot_product_attention(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3),
                                                            scale=1.0)
    torch.testing.assert_close(out, full.view_as(q))


def _natten_window_start(i, length, kernel, dilation):
    """natten's window start for position i (its CPU kernels' formula, dilated case included)."""
    half = kernel // 2
    if i - half * dilation < 0:
        return i % dilation
    if i + half * dilation >= length:
        last_full = (length // dilation) * dilation
        if i % dilation < length - last_full:
            return last_full + i % dilation - (kernel - 1) * dilation
        return last_full + i % dilation - kernel * dilation
    return i - half * dilation


def _reference(q, k, v, kernel, dilation, rpb):
    """Query by query: keys at start + t * dilation, bias rpb[(key - query) / dilation + kernel - 1]."""
    out = torch.zeros_like(q)
    H, W = q.shape[2:4]
    for y in range(H):
        ys = [_natten_window_start(y, H, kernel, dilation) + t * dilation for t in range(kernel)]
        for x in range(W):
            xs = [_natten_window_start(x, W, kernel, dilation) + t * dilation for t in range(kernel)]
            keys, values = k[:, :, ys][:, :, :, xs].flatten(2, 3), v[:, :, ys][:, :, :, xs].flatten(2, 3)
            bias = rpb[:, [(a - y) // dilation + kernel - 1 for a in ys]][:, :, [(b - x) // dilation + kernel - 1
                                                                                for b in xs]]
            logits = torch.einsum("bnd,bnkd->bnk", q[:, :, y, x], keys) + bias.flatten(1)
            out[:, :, y, x] = torch.einsum("bnk,bnkd->bnd", logits.softmax(-1), values)
    return out


@pytest.mark.parametrize("H, W, kernel, dilation", [(9, 11, 3, 1), (9, 11, 3, 2), (13, 10, 3, 3), (10, 10, 5, 2)])
def test_windows_shift_inwards_at_borders_as_in_natten(H, W, kernel, dilation):
    q, k, v = _qkv(H, W, seed=1)
    rpb = torch.randn(2, 2 * kernel - 1, 2 * kernel - 1, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(neighborhood_attention(q, k, v, kernel, dilation, rpb),
                               _reference(q, k, v, kernel, dilation, rpb))


def test_axis_windows_never_leave_the_map_or_the_dilation_group():
    index, bias, valid = axis_windows(length=10, kernel=3, dilation=4)
    for i in range(10):
        members = index[i][valid[i]]
        assert ((members % 4) == i % 4).all() and (0 <= members).all() and (members < 10).all()
        assert i in members.tolist() and len(set(members.tolist())) == len(members)
    # position 1's group is {1, 5, 9}: its window is the whole group; position 2's group {2, 6} is shorter
    assert index[1].tolist() == [1, 5, 9] and valid[2].tolist() == [True, True, False]
    assert bias[1].tolist() == [2, 3, 4] and bias[9].tolist() == [0, 1, 2]


@pytest.mark.skipif(_NATTEN is None or not torch.cuda.is_available(), reason="needs natten 0.15-0.17 and CUDA")
def test_natten_kernels_agree_with_pure_pytorch():
    q, k, v = (t.cuda() for t in _qkv(16, 16, seed=3))
    rpb = torch.randn(2, 13, 13, device="cuda")
    from vision.backbones import dinat

    fast = neighborhood_attention(q, k, v, 7, 2, rpb)
    natten, dinat._NATTEN = dinat._NATTEN, None
    try:
        torch.testing.assert_close(fast, neighborhood_attention(q, k, v, 7, 2, rpb))
    finally:
        dinat._NATTEN = natten


# ---- the model -----------------------------------------------------------------------------------
def test_works_at_224_where_dilated_windows_span_each_map():
    torch.manual_seed(0)
    model = timm.create_model("dinat_mini", num_classes=0, embed_dim=8, num_heads=(1, 1, 2, 2)).eval()
    with torch.inference_mode():
        assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 64, 7, 7)
        assert model.forward_features(torch.randn(1, 3, 32, 48)).shape == (1, 64, 1, 2)  # non-square


def test_authors_checkpoint_layout_loads(tmp_path):
    """Theirs (classification/nat.py): `levels.{i}` stages that end with the next stage's downsampling."""
    torch.manual_seed(1)
    narrow = {"embed_dim": 16, "num_heads": (1, 2, 2, 4)}  # DiNAT-Mini's depths and dilations, a quarter as wide
    reference = randomised(timm.create_model("dinat_mini", **narrow))  # with its 1000-class head, as theirs come
    theirs = to_stage_end_layout(reference.state_dict(), "levels")
    assert "levels.0.downsample.reduction.weight" in theirs and "levels.3.blocks.4.attn.rpb" in theirs
    mapped = checkpoint_filter_fn(theirs, reference)  # their .pth files hold the bare state dict
    assert mapped.keys() == reference.state_dict().keys()
    assert all(torch.equal(mapped[k], v) for k, v in reference.state_dict().items())
    assert checkpoint_filter_fn({"state_dict": theirs}, reference).keys() == mapped.keys()
    assert checkpoint_filter_fn(reference.state_dict(), reference).keys() == mapped.keys()

    save_file({k: v.contiguous() for k, v in theirs.items()}, tmp_path / "dinat_mini.safetensors")
    assert_loads_as(reference, tmp_path / "dinat_mini.safetensors", "dinat_mini", 32, **narrow)
