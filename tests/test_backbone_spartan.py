"""SpaRTAN (vision/backbones/spartan.py), what is particular to it: its width rule and the authors' checkpoint
layout. The checks every backbone gets: tests/test_backbones.py."""

import pytest
import timm
import torch
from safetensors.torch import save_file
from test_backbones import assert_loads_as, randomised

from vision.backbones.spartan import SpaRTAN, checkpoint_filter_fn

NAME = "spartan_t"


def _authors_layout(state: dict[str, torch.Tensor], depths=(3, 3, 12, 2)) -> dict[str, torch.Tensor]:
    """Our state dict renamed as the authors' code names it: conv.*, a flat layers.{i}.*, linear.*."""
    names, index = {}, 0
    for s, depth in enumerate(depths):
        if s > 0:
            names[f"stages.{s}.downsample."], index = f"layers.{index}.", index + 1
        for b in range(depth):
            names[f"stages.{s}.blocks.{b}."], index = f"layers.{index}.", index + 1
    out = {}
    for key, value in state.items():
        prefix = next((p for p in names if key.startswith(p)), None)
        if prefix is not None:
            key = names[prefix] + key[len(prefix):]
        key = key.replace("stem.", "conv.", 1) if key.startswith("stem.") else key
        key = key.replace("head.fc.", "linear.", 1) if key.startswith("head.fc.") else key
        out[key] = value.reshape(1, 1, 1, -1, 2) if key.endswith(".cmixer.complex") else value
    return out


def test_authors_checkpoint_loads_through_the_filter(tmp_path):
    torch.manual_seed(0)
    reference = randomised(timm.create_model(NAME))  # with its 1000-class head, as checkpoints come
    theirs = _authors_layout(reference.state_dict())
    assert theirs["layers.3.conv.weight"].shape == (64, 32, 2, 2)  # first downsample, after 3 blocks
    assert theirs["layers.20.conv.weight"].shape == (256, 128, 2, 2)  # last downsample
    assert theirs["layers.22.smixer.proj_out.weight"].shape == (256, 256, 1, 1)  # last block
    assert theirs["linear.weight"].shape == (1000, 256) and "conv.0.conv.weight" in theirs
    # their training script wraps the weights as {"model": ..., "optim": ...}
    unwrapped = checkpoint_filter_fn({"model": theirs, "optim": {}}, reference)
    assert unwrapped.keys() == reference.state_dict().keys()
    assert all(torch.equal(unwrapped[k], v) for k, v in reference.state_dict().items())

    save_file({k: v.contiguous() for k, v in theirs.items()}, tmp_path / "spartan.safetensors")
    assert_loads_as(reference, tmp_path / "spartan.safetensors", NAME, 32)


def test_widths_must_split_into_channel_pairs_and_halves():
    with pytest.raises(ValueError, match="multiples of 8"):
        SpaRTAN(embed_dims=(30, 64, 128, 256))
