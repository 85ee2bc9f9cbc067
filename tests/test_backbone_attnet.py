"""AttNet / ATConv (vision/backbones/attnet.py), what is particular to it: the attentive convolution itself and
the authors' checkpoint layout. The checks every backbone gets: tests/test_backbones.py."""

import timm
import torch
from safetensors.torch import save_file
from test_backbones import assert_loads_as, randomised

from vision.backbones.attnet import (
    ATConv,
    checkpoint_filter_fn,
    per_sample_depthwise_conv,
)

NAME = "attnet_xxs"


def _authors_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict renamed as the authors' code names it: downsample_layers.{i}, stages.{i}.{j}, norm, head."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "stem":
            key = ".".join(["downsample_layers", "0", *parts[1:]])
        elif parts[0] == "stages" and parts[2] == "downsample":
            key = ".".join(["downsample_layers", parts[1], *parts[3:]])
        elif parts[0] == "stages" and parts[2] == "blocks":
            key = ".".join(["stages", parts[1], *parts[3:]])
        elif parts[:2] == ["head", "norm"]:
            key = ".".join(["norm", *parts[2:]])
        elif parts[:2] == ["head", "fc"]:
            key = ".".join(["head", *parts[2:]])
        out[key] = value
    return out


def test_per_sample_depthwise_conv_equals_a_loop_of_plain_convs():
    torch.manual_seed(0)
    x, kernels = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 3, 3)
    expected = torch.stack([torch.nn.functional.conv2d(x[b:b + 1], kernels[b].unsqueeze(1), padding=1, groups=3)[0]
                            for b in range(2)])
    torch.testing.assert_close(per_sample_depthwise_conv(x, kernels), expected)


def test_atconv_kernels_depend_on_the_input_and_inhibition_removes_their_mean():
    torch.manual_seed(0)
    conv = ATConv(4).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        kernels = conv.kernels(x)
        assert kernels.shape == (2, 4, 3, 3) and not torch.allclose(kernels[0], kernels[1])  # adaptive routing
        conv.difference_control.fill_(50.0)  # sigmoid -> 1: full inhibition, zero-mean kernels
        torch.testing.assert_close(conv.kernels(x).mean(dim=(2, 3)), torch.zeros(2, 4), atol=1e-6, rtol=0)
        assert conv(x).shape == x.shape


def test_authors_checkpoint_loads_through_the_filter(tmp_path):
    torch.manual_seed(0)
    reference = randomised(timm.create_model(NAME))  # with its 1000-class head, as checkpoints come
    theirs = _authors_layout(reference.state_dict())
    assert theirs["downsample_layers.0.2.0.weight"].shape == (32, 16, 3, 3)  # stem: ConvBN, GELU, ConvBN
    assert theirs["downsample_layers.3.0.weight"].shape == (240, 128, 3, 3)
    assert theirs["stages.2.3.token_mixer.kernel_gen.weight"].shape == (9, 9)
    assert theirs["norm.weight"].shape == (240,) and theirs["head.weight"].shape == (1000, 240)
    # their train.py wraps the weights as {"model": ..., "model_ema": ..., "optimizer": ...}
    unwrapped = checkpoint_filter_fn({"model": theirs, "model_ema": theirs, "optimizer": {}}, reference)
    assert unwrapped.keys() == reference.state_dict().keys()
    assert all(torch.equal(unwrapped[k], v) for k, v in reference.state_dict().items())

    save_file(theirs, tmp_path / "attnet.safetensors")
    assert_loads_as(reference, tmp_path / "attnet.safetensors", NAME, 32)
