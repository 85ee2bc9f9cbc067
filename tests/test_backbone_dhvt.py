"""DHVT (vision/backbones/dhvt.py), what is particular to it: SOPE on odd sizes, average pooling, block outputs
as intermediates, DAFF and HI-MHSA behaviour, and the authors' checkpoints. The checks every backbone gets:
tests/test_backbones.py."""

import timm
import torch
from safetensors.torch import save_file
from test_backbones import assert_loads_as, randomised

from vision.backbones.dhvt import DAFF, HIAttention, checkpoint_filter_fn

NAME = "dhvt_tiny"
SMALL = {"embed_dim": 32, "depth": 4, "num_heads": 2}  # DHVT-T's layout (16x16 patches), narrow and shallow


def _model(**kwargs):
    torch.manual_seed(0)
    return timm.create_model(NAME, **{**SMALL, **kwargs})


def test_overlapping_patches_of_any_size_and_average_pooling():
    model = _model(num_classes=0).eval()
    x = torch.randn(1, 3, 50, 36)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == (1, 1 + 4 * 3, 32)  # class token + a ceil(50/16) x ceil(36/16) grid
        assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 1 + 14 * 14, 32)
        model.reset_classifier(0, global_pool="avg")
        torch.testing.assert_close(model(x), tokens[:, 1:].mean(dim=1))


def test_intermediates_are_the_block_outputs():
    model, x = _model().eval(), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        last = model.forward_intermediates(x, indices=[-1], norm=True, output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(last[0], model.forward_features(x)[:, 1:])  # the patch tokens, normed


def test_daff_patches_ignore_the_class_token_which_they_rescale():
    torch.manual_seed(0)
    daff = DAFF(16, 32).eval()
    x = torch.randn(2, 1 + 3 * 2, 16)
    other_cls = x.clone()
    other_cls[:, 0] = torch.randn(2, 16)
    other_patches = x.clone()
    other_patches[:, 1:] = torch.randn(2, 6, 16)
    with torch.no_grad():
        out, out_cls, out_patches = daff(x, (3, 2)), daff(other_cls, (3, 2)), daff(other_patches, (3, 2))
    torch.testing.assert_close(out[:, 1:], out_cls[:, 1:])  # patch tokens do not see the class token
    ratio = out[:, 0] / x[:, 0]  # the class token is only rescaled, channel by channel
    torch.testing.assert_close(out_cls[:, 0] / other_cls[:, 0], ratio)
    assert not torch.allclose(out_patches[:, 0] / x[:, 0], ratio)  # by weights the patches decide


def test_head_tokens_join_attention_and_fold_into_the_class_token():
    torch.manual_seed(0)
    attn = HIAttention(16, num_heads=4).eval()
    x = torch.randn(2, 1 + 4, 16)
    assert attn.head_tokens(x).shape == (2, 4, 16)  # one token per head, full width
    with torch.no_grad():
        out = attn(x)
        assert out.shape == x.shape  # head tokens are dropped again
        attn.pos_embed.add_(1.0)  # head tokens change: every token sees them, the class token also adds them
        moved = attn(x)
    assert not torch.allclose(out, moved)


def test_checkpoint_filter_maps_the_authors_layout(tmp_path):
    reference = randomised(_model())  # with its 1000-class head, as checkpoints come
    authors = {k: v.clone() for k, v in reference.state_dict().items()}  # their names are ours
    assert {"cls_token", "patch_embed.proj.0.0.weight", "patch_embed.proj.6.1.running_var",
            "patch_embed.pre_affine.alpha", "blocks.0.attn.ht_proj.weight", "blocks.0.attn.pos_embed",
            "blocks.0.mlp.excitation.weight", "head.weight"} <= authors.keys()

    mapped = checkpoint_filter_fn({"model": authors}, reference)  # their checkpoints wrap the weights in "model"
    assert mapped.keys() == reference.state_dict().keys()
    headless = checkpoint_filter_fn({"model": authors}, _model(num_classes=0))
    assert headless.keys() == mapped.keys() - {"head.weight", "head.bias"}

    save_file(authors, tmp_path / "dhvt_authors.safetensors")
    assert_loads_as(reference, tmp_path / "dhvt_authors.safetensors", NAME, 32, **SMALL)
