"""Image encoders: timm / HF / own backbones, EViT, pooling heads, persistence, `ragcli embed images`."""

import json

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image

import vision  # noqa: F401  (registers van_* / evit_* with timm)
from cli import ragcli
from indexes.errors import UserError
from vision.encoders import ImageEncoder, create_encoder
from vision.pooling import AttentivePool, GeMPool, create_pooling



def _images(n=2, size=(40, 48), mode="RGB"):
    rng = np.random.default_rng(0)
    shape = size if mode == "L" else (*size, 3)
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(n)]


def _tiny_vit(**kwargs):
    torch.manual_seed(0)
    return create_encoder("timm:vit_tiny_patch16_224", image_size=32, **kwargs)


# ---- timm and own backbones ------------------------------------------------------------------
@pytest.mark.parametrize("spec, size, dim", [
    ("timm:vit_tiny_patch16_224", 32, 192),
    ("timm:focalnet_tiny_srf", 32, 768),
    ("timm:davit_tiny", 32, 768),
    ("timm:volo_d1_224", 32, 384),
    ("timm:convit_tiny", 32, 192),
    ("timm:tnt_s_patch16_224", 32, 384),
    pytest.param("timm:halonet26t", 256, 2048, marks=pytest.mark.slow),  # halo blocks need 8x8 maps at stride 32
    ("evit_tiny_patch16_224", 32, 192),
])
def test_backbone_embeds_tiny_batch(spec, size, dim):
    torch.manual_seed(0)
    encoder = create_encoder(spec, image_size=size)
    vectors = encoder.embed(_images(), batch_size=2, device="cpu")
    assert encoder.dim == dim
    assert vectors.shape == (2, dim) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all() and not np.allclose(vectors[0], vectors[1])


def test_preprocessing_comes_from_the_timm_data_config():
    encoder = _tiny_vit()
    pixels = encoder.preprocess(_images(1, mode="L"))  # grayscale is converted to RGB
    assert pixels.shape == (1, 3, 32, 32)
    config = timm.data.resolve_data_config({"input_size": (3, 32, 32)}, model=encoder.backbone.model)
    expected = timm.data.create_transform(**config)(_images(1, mode="L")[0].convert("RGB"))
    assert torch.equal(pixels[0], expected)


def test_registered_models_work_through_timm_create_model():
    evit = timm.create_model("evit_tiny_patch16_224", img_size=64, keep_rate=0.5, num_classes=0)
    tokens = evit.forward_features(torch.randn(2, 3, 64, 64))
    # 16 patches -> 8 kept + 1 fused (block 3) -> 5 + 1 (block 6) -> 3 + 1 (block 9), plus the class token
    assert tokens.shape == (2, 1 + 4, 192)


def test_evit_keep_rate_one_equals_plain_vit():
    plain, evit = _tiny_vit(), _tiny_vit(evit_keep_rate=1.0)
    evit.load_state_dict(plain.state_dict())  # EViT keeps the ViT's parameter names
    pixels = plain.preprocess(_images(3))
    with torch.inference_mode():
        torch.testing.assert_close(evit(pixels), plain(pixels), rtol=0, atol=1e-5)
        cut = _tiny_vit(evit_keep_rate=0.5)
        cut.load_state_dict(plain.state_dict())
        assert not torch.allclose(cut(pixels), plain(pixels), atol=1e-3)


def test_evit_cuts_tokens_by_keep_rate():
    from vision.backbones.evit import reorganize_tokens

    x = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)  # 1 class token + 4 patches
    attn = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.5, 0.1, 0.1, 0.3]])
    out = reorganize_tokens(x, attn, keep_rate=0.5, num_prefix_tokens=1)
    # row 0: keep patches 2, 4 (attn .4, .3); fuse 1 and 3 as .1*1 + .2*3
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.0, 2.0, 4.0, 0.1 * 1 + 0.2 * 3]))
    torch.testing.assert_close(out[1, :, 0], torch.tensor([5.0, 6.0, 9.0, 0.1 * 7 + 0.1 * 8]))


# ---- HF --------------------------------------------------------------------------------------
def _tiny_hf(tmp_path, kind):
    """A tiny random transformers vision model of `kind` and its image processor, saved to tmp_path."""
    import transformers as tf

    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                  image_size=32, patch_size=8)
    square = {"height": 32, "width": 32}
    model, processor = {
        "clip": lambda: (tf.CLIPVisionModel(tf.CLIPVisionConfig(**common)),
                         tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=square)),
        "vit": lambda: (tf.ViTModel(tf.ViTConfig(**common)), tf.ViTImageProcessor(size=square)),
        "siglip": lambda: (tf.SiglipVisionModel(tf.SiglipVisionConfig(**common)), tf.SiglipImageProcessor(size=square)),
        "dinov2": lambda: (tf.Dinov2Model(tf.Dinov2Config(**common)),
                           tf.BitImageProcessor(size={"shortest_edge": 32}, crop_size=square)),
    }[kind]()
    path = tmp_path / kind
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path, model.eval()


@pytest.mark.parametrize("kind, prefix", [("clip", 1), ("vit", 1), ("siglip", 0), ("dinov2", 1)])
def test_hf_encoder_matches_its_model(tmp_path, kind, prefix):
    path, model = _tiny_hf(tmp_path, kind)
    encoder = create_encoder(f"hf:{path}")
    images = _images()
    vectors = encoder.embed(images, batch_size=2, device="cpu")
    assert encoder.dim == 32 and vectors.shape == (2, 32)
    with torch.inference_mode():
        expected = model(pixel_values=encoder.preprocess(images)).pooler_output
    np.testing.assert_allclose(vectors, expected.numpy(), atol=1e-5)
    assert encoder.backbone.num_prefix_tokens == prefix
    assert create_encoder(f"hf:{path}", pooling="mean").embed(images).shape == (2, 32)


def test_hf_config_without_weights_is_random_init_and_weights_load(tmp_path):
    path, model = _tiny_hf(tmp_path, "vit")
    (path / "model.safetensors").rename(tmp_path / "weights.safetensors")
    random_init = create_encoder(f"hf:{path}").embed(_images())
    loaded = create_encoder(f"hf:{path}", weights=tmp_path / "weights.safetensors").embed(_images())
    with torch.inference_mode():
        expected = model(pixel_values=create_encoder(f"hf:{path}").preprocess(_images())).pooler_output
    np.testing.assert_allclose(loaded, expected.numpy(), atol=1e-5)
    assert not np.allclose(random_init, loaded, atol=1e-3)


# ---- persistence -----------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda tmp: _tiny_vit(pooling="attentive", evit_keep_rate=0.7),
    lambda tmp: create_encoder("van_b0", pooling="gem", image_size=32),
    lambda tmp: create_encoder(f"hf:{_tiny_hf(tmp, 'clip')[0]}", pooling="cls"),
], ids=["vit-evit-attentive", "van-gem", "hf-clip-cls"])
def test_saved_and_reloaded_encoder_gives_identical_embeddings(tmp_path, make):
    encoder = make(tmp_path)
    for p in encoder.pool.parameters() if encoder.pool is not None else ():
        torch.nn.init.normal_(p)  # trained-looking head weights must round-trip too
    before = encoder.embed(_images(3), batch_size=2)
    encoder.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["spec"] == encoder.name and config["dim"] == encoder.dim
    for reloaded in (ImageEncoder.from_pretrained(tmp_path / "saved"), create_encoder(str(tmp_path / "saved"))):
        np.testing.assert_array_equal(reloaded.embed(_images(3), batch_size=2), before)
        assert reloaded.describe() == encoder.describe()
    with pytest.raises(UserError, match="saved encoder"):
        create_encoder(str(tmp_path / "saved"), pooling="mean")


# ---- pooling ---------------------------------------------------------------------------------
def test_pooling_heads_on_hand_made_tokens():
    tokens = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 4.0]]])  # class token, then two patches
    assert create_pooling("mean", 2, 1)(tokens).tolist() == [[2.0, 3.0]]
    assert create_pooling("cls", 2, 1)(tokens).tolist() == [[9.0, 9.0]]
    gem = GeMPool(2, 1, p=2.0)
    torch.testing.assert_close(gem(tokens), torch.tensor([[(0.5 * (1 + 9)) ** 0.5, (0.5 * (4 + 16)) ** 0.5]]))
    assert create_pooling("attentive", 2, 1)(tokens).shape == (1, 2)
    with pytest.raises(UserError):
        create_pooling("cls", 2, 0)
    with pytest.raises(UserError):
        create_pooling("max", 2, 0)


def test_attentive_probe_trains_on_frozen_features():
    """Patch tokens whose class is a direction hidden in one token: a probe learns to read it."""
    torch.manual_seed(0)
    tokens = torch.randn(64, 9, 16)
    labels = torch.randint(0, 2, (64,))
    tokens[torch.arange(64), 1 + labels * 4, :4] += 3.0
    probe, head = AttentivePool(16, num_prefix_tokens=1), torch.nn.Linear(16, 2)
    optim = torch.optim.Adam([*probe.parameters(), *head.parameters()], lr=1e-2)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(head(probe(tokens)), labels)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_pooling_choice_reaches_token_features_of_cnns():
    encoder = create_encoder("van_b0", pooling="mean", image_size=64)
    pixels = encoder.preprocess(_images())
    with torch.inference_mode():
        feature_map = encoder.backbone.model.forward_features(pixels)
        torch.testing.assert_close(encoder(pixels), feature_map.mean(dim=(2, 3)))
    with pytest.raises(UserError, match="class token"):
        create_encoder("van_b0", pooling="cls", image_size=32)


# ---- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, kwargs, message", [
    ("timm:no_such_model", {}, "no model"),
    ("nonsense", {}, "unknown encoder"),
    ("van_b0", {"weights": "missing.safetensors"}, "not found"),
    ("timm:resnet18", {"evit_keep_rate": 0.5}, "VisionTransformer"),
    ("timm:vit_tiny_patch16_224", {"evit_keep_rate": 0.0, "image_size": 32}, "keep rate"),
])
def test_bad_encoder_requests_are_user_errors(spec, kwargs, message):
    with pytest.raises(UserError, match=message):
        create_encoder(spec, **kwargs)


def test_weights_must_be_safetensors(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"\0")
    with pytest.raises(UserError, match="safetensors"):
        create_encoder("van_b0", weights=tmp_path / "w.pth")


# ---- CLI -------------------------------------------------------------------------------------
def _folder(tmp_path):
    root = tmp_path / "imgs"
    for i, image in enumerate(_images(3)):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        image.save(root / f"c{i % 2}" / f"{i}.png")
    return root


def test_cli_embed_images_writes_npz_with_ids(tmp_path):
    out = tmp_path / "vecs.npz"
    result = CliRunner().invoke(ragcli, ["embed", "images", str(_folder(tmp_path)), "--encoder", "van_b0",
                                         "--image-size", "32", "--batch-size", "2", "--out", str(out),
                                         "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 3 and report["dim"] == 256 and report["images_per_s"] > 0
    saved = np.load(out)
    assert saved["embeddings"].shape == (3, 256)
    assert saved["ids"].tolist() == ["c0/0.png", "c0/2.png", "c1/1.png"]


def test_cli_embed_images_npy(tmp_path):
    out = tmp_path / "vecs.npy"
    result = CliRunner().invoke(ragcli, ["embed", "images", str(_folder(tmp_path)), "--encoder",
                                         "timm:vit_tiny_patch16_224", "--image-size", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "images/s" in result.stdout and np.load(out).shape == (3, 192)


@pytest.mark.parametrize("case", ["unreadable", "missing", "bad-out", "bad-encoder"])
def test_cli_embed_images_bad_input_exits_2_and_writes_nothing(tmp_path, case):
    root = _folder(tmp_path)
    out = tmp_path / ("vecs.txt" if case == "bad-out" else "vecs.npz")
    if case == "unreadable":
        (root / "c1" / "broken.png").write_bytes(b"not a png")
    images = tmp_path / "nowhere" if case == "missing" else root
    encoder = "timm:nope" if case == "bad-encoder" else "van_b0"
    result = CliRunner().invoke(ragcli, ["embed", "images", str(images), "--encoder", encoder,
                                         "--image-size", "32", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1].startswith("error: ")
    assert not out.exists() and not list(tmp_path.glob(".vecs*"))


def test_fit_pooling_trains_the_attentive_head_on_frozen_backbone(tmp_path):
    """Which half holds the bright square: a frozen random VAN keeps where things are, the probe learns it."""
    from vision.probing import fit_pooling

    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(32):
        pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
        side = i % 2
        pixels[8:16, 2 + 18 * side:12 + 18 * side] = 255
        images.append(Image.fromarray(pixels))
        labels.append(["left", "right"][side])
    torch.manual_seed(0)
    encoder = create_encoder("van_b0", pooling="attentive", image_size=32)
    frozen = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    report = fit_pooling(encoder, images, labels, epochs=40, batch_size=16, device="cpu")
    assert report["classes"] == ["left", "right"]
    assert report["losses"][-1] < 0.5 * report["losses"][0]
    assert all(torch.equal(v, encoder.backbone.state_dict()[k]) for k, v in frozen.items())
    with pytest.raises(UserError, match="nothing to train"):
        fit_pooling(create_encoder("van_b0", image_size=32), images, labels)
