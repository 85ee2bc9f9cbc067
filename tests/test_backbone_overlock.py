"""OverLoCK (vision/backbones/overlock.py), what is particular to it: the dynamic convolution, maps large and
small against its kernels, the pyramid through forward_intermediates, and the authors' checkpoints (plain and
merged). The checks every backbone gets: tests/test_backbones.py."""

import timm
import torch
from safetensors.torch import save_file
from test_backbones import assert_loads_as, randomised

from vision.backbones.overlock import (
    checkpoint_filter_fn,
    neighborhood_aggregate,
    relative_position_bias,
)

NAME = "overlock_xt"
# The XT layout at a fraction of the width and depth; two Focus-Net blocks a stage keep the non-first /
# non-last paths (context rescaling, split streams) in play, the kernels stay 17-15-13-7.
TINY = {"depth": (1, 1, 1, 1), "sub_depth": (2, 2), "embed_dim": (16, 32, 64, 96), "sub_num_heads": (2, 2),
        "projection": 64}
TINY_DIM, TINY_PYRAMID = 96 + 24, [16, 32, 64 + 24, 96 + 24]


def _model(name=NAME, seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, **{**TINY, **kwargs})


def _authors_layout(state, classes=1000, wrap=False):
    """Our state dict in the layout of LMMMEng/OverLoCK's models/overlock.py: Sequential head with a 1x1-conv
    classifier, plus the auxiliary head on the Overview-Net that their training keeps."""
    renames = {"head.proj.": "head.0.", "head.norm.": "head.1.", "head.fc.": "head.4."}
    out = {}
    for key, value in state.items():
        for ours, theirs in renames.items():
            key = key.replace(ours, theirs)
        out[key] = value[..., None, None] if key == "head.4.weight" else value
    generator = torch.Generator().manual_seed(2)
    hidden, overview = state["head.norm.weight"].shape[0], state["high_level_proj.weight"].shape[1]
    out.setdefault("head.4.weight", torch.randn(classes, hidden, 1, 1, generator=generator))
    out.setdefault("head.4.bias", torch.zeros(classes))
    out.update({"aux_head.0.weight": torch.ones(overview), "aux_head.0.bias": torch.zeros(overview),
                "aux_head.0.running_mean": torch.zeros(overview), "aux_head.0.running_var": torch.ones(overview),
                "aux_head.0.num_batches_tracked": torch.tensor(0),
                "aux_head.2.weight": torch.randn(classes, overview, 1, 1, generator=generator),
                "aux_head.2.bias": torch.zeros(classes)})
    return {"state_dict": {f"module.{k}": v for k, v in out.items()}} if wrap else out


# ---- the dynamic convolution -------------------------------------------------------------------
def test_neighborhood_aggregation_matches_a_direct_loop():
    """natten's semantics: each pixel's kxk window, shifted inward at the borders, weighted by its kernel;
    the bias of key offset d from the query comes from table entry d + k - 1."""
    torch.manual_seed(0)
    B, G, H, W, C, k = 2, 3, 6, 7, 4, 5
    attn, value = torch.randn(B, G, H, W, k * k), torch.randn(B, G, H, W, C)
    table = torch.randn(G, 2 * k - 1, 2 * k - 1)
    out, bias = neighborhood_aggregate(attn, value, k), relative_position_bias(table, H, W, k)
    for i in range(H):
        top = min(max(i - k // 2, 0), H - k)
        for j in range(W):
            left = min(max(j - k // 2, 0), W - k)
            window = value[:, :, top:top + k, left:left + k].reshape(B, G, k * k, C)
            expected = torch.einsum("bgk,bgkc->bgc", attn[:, :, i, j], window)
            torch.testing.assert_close(out[:, :, i, j], expected)
            offsets = torch.cartesian_prod(torch.arange(top, top + k) - i, torch.arange(left, left + k) - j) + k - 1
            torch.testing.assert_close(bias[:, i, j], table[:, offsets[:, 0], offsets[:, 1]])


# ---- maps against kernels, and the pyramid ---------------------------------------------------------
def test_maps_at_least_a_kernel_wide_and_odd_sizes():
    """At 224 the Focus-Net maps (14, 7) are as wide as their kernels (13, 7): no upsampling for the
    aggregation; odd inputs pool back to their own map size."""
    model = _model(num_classes=0).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 64)
        assert model.forward_features(torch.randn(1, 3, 40, 72)).shape == (1, TINY_DIM, 2, 3)


def test_features_only_equals_forward_intermediates():
    extractor, model = _model(features_only=True).eval(), _model().eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        maps = extractor(pixels)
        final, intermediates = model.forward_intermediates(pixels)
        assert torch.equal(final, model.forward_features(pixels))
    for ours, theirs in zip(maps, intermediates, strict=True):
        torch.testing.assert_close(ours, theirs)
    assert timm.create_model(NAME, features_only=True, out_indices=(1, 3), **TINY).feature_info.channels() == \
        TINY_PYRAMID[1::2]


# ---- the authors' checkpoints ------------------------------------------------------------------
def test_authors_checkpoint_loads_through_the_filter(tmp_path):
    reference = randomised(_model())
    save_file(_authors_layout(reference.state_dict()), tmp_path / "authors.safetensors")
    assert_loads_as(reference, tmp_path / "authors.safetensors", NAME, 32, **TINY)


def test_filter_unwraps_and_maps_a_classifier_checkpoint():
    reference = _model(num_classes=7)
    wrapped = _authors_layout(reference.state_dict(), classes=7, wrap=True)
    assert wrapped["state_dict"]["module.head.4.weight"].shape == (7, 64, 1, 1)
    model = _model(num_classes=7, seed=1)
    state = checkpoint_filter_fn(wrapped, model)
    model.load_state_dict(state)  # strict: every tensor present, none left over (aux_head dropped)
    assert torch.equal(model.head.fc.weight, reference.head.fc.weight)
    assert checkpoint_filter_fn({"model": reference.state_dict()}, model).keys() == reference.state_dict().keys()


def test_merged_and_unmerged_checkpoints_load_into_either_form(tmp_path):
    """The authors' "_reparam" checkpoints merge each large kernel's BatchNorms and dilated branches into
    one biased conv; the filter expands them into the trainable form, or merges plain ones, exactly."""
    reference = randomised(_model())
    merged_model = _model()
    merged_model.load_state_dict(reference.state_dict())
    merged = _authors_layout(merged_model.eval().reparameterize().state_dict())
    assert "blocks1.0.proj.1.lk_origin.bias" in merged and "blocks1.0.proj.1.origin_bn.weight" not in merged
    save_file(_authors_layout(reference.state_dict()), tmp_path / "plain.safetensors")
    save_file(merged, tmp_path / "merged.safetensors")
    for name, file in ((NAME, "merged"), (f"{NAME}_reparam", "plain"), (f"{NAME}_reparam", "merged")):
        assert_loads_as(reference, tmp_path / f"{file}.safetensors", name, 32, rtol=1e-4, atol=1e-5, **TINY)
