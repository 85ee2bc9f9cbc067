"""MOAT (vision/backbones/moat.py), what is particular to it: TF "SAME" padding, the relative position bias,
window attention, and the authors' TF checkpoint layout. The checks every backbone gets: tests/test_backbones.py."""

import pytest
import timm
import torch
from safetensors.torch import save_file
from test_backbones import assert_loads_as, randomised

from indexes.errors import UserError
from vision.backbones.moat import MOATBlock, checkpoint_filter_fn
from vision.encoders import create_encoder

NAME = "moat_tiny_0"


def _model(**kwargs):
    torch.manual_seed(0)
    return timm.create_model(NAME, **kwargs)


def test_tf_same_padding_takes_odd_sizes():
    """Shortcut pooling and strided convs agree on odd maps: 40 -> 20, 10, 5, 3, 2."""
    with torch.inference_mode():
        assert _model(num_classes=0).eval().forward_features(torch.randn(1, 3, 40, 40)).shape == (1, 256, 2, 2)


def test_position_bias_matches_the_authors_one_hot_reindexing():
    """deeplab2 reindexes the (heads, 2h-1, 2w-1) table with one-hot lookups L[i, x, v] = 1{x - i + h - 1 = v}."""
    torch.manual_seed(0)
    attention = MOATBlock(8, 64, position_size=3).attention
    torch.nn.init.normal_(attention.relative_position_embedding)
    h, w = 3, 2
    table = torch.nn.functional.interpolate(attention.relative_position_embedding.detach()[None], size=(5, 3),
                                            mode="bilinear", align_corners=False)[0]

    def lookup(n):
        out = torch.zeros(n, n, 2 * n - 1)
        for i in range(n):
            for x in range(n):
                out[i, x, x - i + n - 1] = 1
        return out

    expected = torch.einsum("nhw,ixh,jyw->nijxy", table, lookup(h), lookup(w)).reshape(-1, h * w, h * w)
    torch.testing.assert_close(attention.position_bias(h, w).detach(), expected)


def test_window_attention_equal_to_the_map_is_global_and_windows_must_tile():
    torch.manual_seed(0)
    block = MOATBlock(64, 64).eval()
    x = torch.randn(2, 64, 4, 4)
    with torch.inference_mode():
        global_out = block(x)
        block.window_size = (4, 4)
        torch.testing.assert_close(block(x), global_out)
        block.window_size = (2, 2)
        assert block(x).shape == x.shape and not torch.allclose(block(x), global_out)
        block.window_size = (3, 3)
        with pytest.raises(ValueError, match="tile"):
            block(x)
    windowed = _model(window_size=(None, None, (2, 2), (1, 1))).eval()
    assert windowed(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


# ---- the authors' TF checkpoint layout (deeplab2) -------------------------------------------------
def _tf_scope(path: str) -> str:
    """Our module path -> the authors' TF scope (the inverse of the filter's renaming)."""
    parts = path.split(".")
    if parts[0] == "stages":
        return "/".join([f"moat/block_{int(parts[1]):02d}_{int(parts[2]):02d}", *parts[3:]])
    return {"head.norm": "moat/final_layer_norm", "head.fc": "moat/logits_head"}.get(path, "moat/" + "/".join(parts))


def _to_tf_layout(model):
    """Our state dict written as the authors' TF variables: names, HWIO kernels, einsum-dense weights."""
    out = {}
    for key, tensor in model.state_dict().items():
        path, leaf = key.rsplit(".", 1)
        module, scope = model.get_submodule(path), _tf_scope(path)
        if leaf == "num_batches_tracked":
            continue
        if isinstance(module, torch.nn.BatchNorm2d):
            name = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                    "running_var": "moving_variance"}[leaf]
        elif isinstance(module, torch.nn.LayerNorm):
            name = {"weight": "gamma", "bias": "beta"}[leaf]
        elif isinstance(module, torch.nn.Conv2d) and leaf == "weight":
            name = "depthwise_kernel" if module.groups > 1 else "kernel"
            tensor = tensor.permute(2, 3, 0, 1) if module.groups > 1 else tensor.permute(2, 3, 1, 0)
        elif path == "head.fc":
            name = "kernel" if leaf == "weight" else "bias"
            tensor = tensor.t().reshape(1, 1, *tensor.t().shape) if leaf == "weight" else tensor
        elif isinstance(module, torch.nn.Linear):  # attention q/k/v/o: TrailDense over (heads, head_dim)
            name, heads = leaf, tensor.shape[0] // 32
            if leaf == "weight":
                tensor = tensor.t().reshape(heads, 32, -1) if path.endswith(".o") else tensor.t().reshape(-1, heads, 32)
            elif not path.endswith(".o"):
                tensor = tensor.reshape(heads, 32)
        else:
            name = leaf
        out[f"{scope}/{name}"] = tensor.contiguous()
    return out


def test_the_authors_tf_checkpoint_layout_loads(tmp_path):
    reference = randomised(_model())
    tf_state = _to_tf_layout(reference)
    assert "moat/stem/conv_0/kernel" in tf_state and "moat/block_02_06/attention/o/weight" in tf_state
    assert tf_state["moat/block_02_00/attention/q/weight"].shape == (128, 4, 32)
    # an EMA shadow and training bookkeeping ride along in TF checkpoints; the plain variable wins
    tf_state["moat/block_00_00/pre_norm/gamma/ExponentialMovingAverage"] = torch.zeros(32)
    tf_state["moat/block_00_00/pre_norm/gamma/Momentum"] = torch.zeros(32)
    tf_state["global_step"] = torch.tensor(7)
    save_file(tf_state, tmp_path / "moat_tf.safetensors")
    assert_loads_as(reference, tmp_path / "moat_tf.safetensors", NAME, 64)
    # the filter converts for a model with a head too (TF2 names: ':0' suffix, stem without its scope)
    tf2 = {k.replace("moat/stem/", "") + ":0": v for k, v in _to_tf_layout(reference).items()}
    model = _model()
    model.load_state_dict(checkpoint_filter_fn(tf2, model))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model.eval()(pixels), reference(pixels))


def test_the_tf_layout_of_another_variant_is_refused(tmp_path):
    save_file(_to_tf_layout(timm.create_model(NAME, relative_position=False)), tmp_path / "no_pe.safetensors")
    with pytest.raises(UserError, match="do not fit"):  # no position tables for a model that has them
        create_encoder(NAME, weights=tmp_path / "no_pe.safetensors", image_size=64)
