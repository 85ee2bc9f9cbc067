"""Explanations (`vision.explain`, `index query --explain`): Grad-CAM on the similarity points where it must
on a model whose answer is known by construction, follows FocalLens's condition, works for timm CNNs, ViTs
and our backbones, and draws on the contact sheet."""

import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from helpers import one_line_error, run
from indexes import UserError, open_index
from indexes.http import create_app
from vision.encoders import ImageEncoder, TimmBackbone, create_encoder
from vision.explain import explain, explain_pair, heat_on_object, pointing_hit
from vision.focallens import FocalLens
from vision.sheet import CAPTION_HEIGHT, GAP
from vision.synthetic import make_conditional
from vision.train_focallens import TrainSettings, train_focallens

RED, BLUE = (255, 0, 0), (0, 0, 255)


class RedBlue(nn.Module):
    """Embedding = (mean redness, mean blueness) of a 1x1-conv feature map: known by construction."""

    feature_info = [{"module": "conv", "num_chs": 2, "reduction": 1}]
    num_features = 2
    pretrained_cfg = {"input_size": (3, 32, 32), "crop_pct": 1.0, "interpolation": "nearest", "mean": (0, 0, 0),
                      "std": (1, 1, 1)}  # pixels as they are: the map's coordinates are the image's

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -0.5, -0.5], [-0.5, -0.5, 1.0]]).view(2, 3, 1, 1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x.mean((2, 3))


def _picture(*objects):
    """A 32 px black image with (colour, top, left) 10 px squares; and the mask of each square."""
    pixels, masks = np.zeros((32, 32, 3), np.uint8), []
    for colour, top, left in objects:
        pixels[top:top + 10, left:left + 10] = colour
        mask = np.zeros((32, 32), bool)
        mask[top:top + 10, left:left + 10] = True
        masks.append(mask)
    return Image.fromarray(pixels), masks


def test_the_map_points_at_what_the_two_images_share():
    encoder = ImageEncoder(TimmBackbone(RedBlue(), image_size=32), "test:redblue")
    query, (red, blue) = _picture((RED, 2, 2), (BLUE, 20, 20))
    neighbour, _ = _picture((RED, 20, 2))  # only red: the query's red square is what they share
    query_map, _ = explain_pair(encoder, query, neighbour)
    assert query_map.shape == (32, 32) and 0 <= query_map.min() and query_map.max() <= 1
    assert pointing_hit(query_map, red) and not pointing_hit(query_map, blue)
    assert heat_on_object(query_map, red) > 0.9
    blue_neighbour, _ = _picture((BLUE, 2, 20))
    assert pointing_hit(explain_pair(encoder, query, blue_neighbour)[0], blue)


def test_focallens_maps_follow_the_condition():  # the default text tower: instructions must differ
    torch.manual_seed(0)
    splits = make_conditional(n=320, size=32, seed=1)
    lens = FocalLens(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, condition_tokens=2)
    train_focallens(lens, splits["train"], TrainSettings(epochs=6, batch_size=64, lr=3e-3, device="cpu"))
    first, second = (Image.fromarray(splits["test"].images[i]) for i in (0, 1))
    under = {c: explain_pair(lens, first, second, condition=c) for c in ("focus on the colour", "focus on the shape")}
    for maps in under.values():
        assert all(m.shape == (32, 32) and np.isfinite(m).all() for m in maps)
    assert any(m.max() > 0 for maps in under.values() for m in maps)
    assert not np.allclose(under["focus on the colour"][0], under["focus on the shape"][0], atol=1e-3)


@pytest.mark.parametrize("spec", ["timm:test_vit", "timm:resnet18", "van_b0", "hf-vit", "hf-clip"])
def test_maps_for_vits_cnns_our_backbones_and_hf_towers(spec, tmp_path):
    torch.manual_seed(0)
    if spec.startswith("hf-"):
        from test_vision_encoders import _tiny_hf

        encoder = create_encoder(f"hf:{_tiny_hf(tmp_path, spec[3:])[0]}")
    else:
        encoder = create_encoder(spec, image_size=32)
    first, _ = _picture((RED, 2, 2))
    second, _ = _picture((BLUE, 18, 18))
    for heat in explain_pair(encoder, first, second):
        assert heat.shape == (32, 32) and np.isfinite(heat).all() and 0 <= heat.min() and heat.max() <= 1


def test_index_query_explain_draws_two_rows_and_python_gets_the_maps(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (colour, top) in enumerate([(RED, 2), (BLUE, 10), (RED, 20), (BLUE, 4)]):
        _picture((colour, top, top))[0].save(folder / f"{i}.png")
    torch.manual_seed(0)
    create_encoder("timm:test_vit", image_size=32).save_pretrained(tmp_path / "encoder")
    assert run("index", "build", "--corpus", "images", "--images", folder, "--encoder", tmp_path / "encoder",
               "--name", "pics", "--device", "cpu").exit_code == 0
    sheet = tmp_path / "sheet.png"
    result = run("index", "query", "pics", "--image", folder / "0.png", "-k", 3, "--sheet", sheet, "--explain",
                 "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    with Image.open(sheet) as image:
        assert image.size == (4 * (128 + GAP) + GAP, 2 * (128 + CAPTION_HEIGHT + GAP) + GAP)
    hit = json.loads(result.stdout)[1]["id"]
    query_map, neighbour_map = explain(open_index("pics", device="cpu"), folder / "0.png", hit)
    assert query_map.shape == neighbour_map.shape == (32, 32)
    one_line_error(run("index", "query", "pics", "--image", folder / "0.png", "--explain"), "--sheet")
    client = TestClient(create_app({"pics": open_index("pics", device="cpu")}))  # `ragcli serve`: the pair as a PNG
    with open(folder / "0.png", "rb") as upload:
        response = client.post("/indexes/pics/explain", files={"image": ("q.png", upload)}, data={"id": hit})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (512, 256)
    with open(folder / "0.png", "rb") as upload:
        assert client.post("/indexes/pics/explain", files={"image": ("q.png", upload)}, data={"id": "nope"}).status_code == 400
    with pytest.raises(UserError, match="unknown ids"):
        explain(open_index("pics", device="cpu"), folder / "0.png", "nope.png")
