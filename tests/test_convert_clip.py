"""CLIP vision weights -> UniFormerV2: every format, inflation, position resizing."""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TOKENS_ATOL
from safetensors.numpy import save_file

from uniformerv2_jax import from_clip
from uniformerv2_jax.convert import CheckpointMismatchError, read_state_dict
from uniformerv2_jax.convert.clip import resize_positional_embedding
from uniformerv2_jax.model import per_layer_intermediates

# Class tokens after CLIP's 4 blocks of width 64 are held to the bound of tiny_a's tokens
# after its 4 blocks of width 64 (conftest). The resized position embedding: bicubic
# weights summed in float32 here and in PyTorch, 16 taps of values below 1 each: a few ulps.
RESIZE_ATOL = 16 * float(np.finfo(np.float32).eps)
CLIP_FILES = ["clip_tiny.safetensors", "clip_tiny_state_dict.pt", "clip_tiny_torchscript.pt",
              "clip_tiny_visual_extracted.pth"]


def run(model, variables, video):
    """(logits, per-frame final class tokens (N, T, C), head input (N, C))."""
    apply = jax.jit(model.apply, static_argnames="mutable")
    logits, state = apply(variables, video, mutable=("intermediates",))
    inter = per_layer_intermediates(model, state["intermediates"])
    last = inter[f"layer_{model.layers - 1}"]["block_out"][0]
    return logits, np.asarray(last[:, :, 0]), np.asarray(inter["head_input"][0])


@pytest.fixture(scope="module")
def clip_images(golden):
    data = np.load(golden / "clip_tiny.npz")
    return np.transpose(data["images"], (0, 2, 3, 1)), data["cls_before_ln_post"]


@pytest.mark.parametrize("filename", CLIP_FILES)
def test_every_clip_format_gives_clip_class_tokens_per_frame(golden, clip_images, filename):
    images, expected_cls = clip_images
    # heads is left to the default (width // 64), the rule OpenAI's CLIP builder used.
    model, variables = from_clip(golden / filename, no_lmhra=False, double_lmhra=True,
                                 temporal_downsample=False, t_size=4, num_classes=7)
    video = np.repeat(images[:, None], 4, axis=1)  # every frame is the image
    _, cls, head_input = run(model, variables, video)
    np.testing.assert_allclose(cls, np.repeat(expected_cls[:, None], 4, axis=1), atol=TOKENS_ATOL)
    # Before training, the fused feature is 0.5 * the mean CLIP class token (query is 0).
    np.testing.assert_allclose(head_input, 0.5 * expected_cls, atol=TOKENS_ATOL)


def test_scanned_model_loads_clip_identically(golden, clip_images):
    images, expected_cls = clip_images
    model, variables = from_clip(golden / "clip_tiny.safetensors", t_size=2, scan=True)
    _, cls, _ = run(model, variables, np.repeat(images[:, None], 2, axis=1))
    np.testing.assert_allclose(cls, np.repeat(expected_cls[:, None], 2, axis=1), atol=TOKENS_ATOL)


def test_temporal_downsampling_puts_clip_in_the_centre_tap(golden, clip_images):
    """With conv1 inflated at the centre, output frame k is CLIP on input frame 2k."""
    images, expected_cls = clip_images
    model, variables = from_clip(golden / "clip_tiny_visual_extracted.pth",
                                 temporal_downsample=True, no_lmhra=False, t_size=4)
    kernel = variables["params"]["conv1"]
    assert kernel.shape == (3, 16, 16, 3, 64)
    assert not kernel[0].any() and not kernel[2].any() and kernel[1].any()
    video = np.stack([images[[0, 1, 2]], images[[1, 2, 0]], images[[2, 0, 1]],
                      images[[0, 0, 0]]], axis=1)  # frames 0 and 2 are images i and i+2
    _, cls, _ = run(model, variables, video)
    assert cls.shape == (3, 2, 64)
    np.testing.assert_allclose(cls[:, 0], expected_cls, atol=TOKENS_ATOL)
    np.testing.assert_allclose(cls[:, 1], expected_cls[[2, 0, 1]], atol=TOKENS_ATOL)


def hf_vision_config():
    from transformers import CLIPVisionConfig
    return CLIPVisionConfig(hidden_size=48, intermediate_size=192, num_hidden_layers=3,
                            num_attention_heads=4, image_size=32, patch_size=8,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5)


@pytest.fixture(scope="module")
def hf_vision(tmp_path_factory):
    """A random-init Hugging Face CLIPVisionModel and its class tokens on random images."""
    from transformers import CLIPVisionModel
    torch.manual_seed(0)
    hf = CLIPVisionModel(hf_vision_config()).eval()
    with torch.no_grad():  # non-trivial values everywhere, LayerNorms included
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls = hf(pixel_values=images).last_hidden_state[:, 0].numpy()
    directory = tmp_path_factory.mktemp("hf_vision")
    hf.save_pretrained(directory)
    return directory, images.permute(0, 2, 3, 1).numpy(), cls


def test_hugging_face_vision_model_directory(hf_vision):
    directory, images, expected_cls = hf_vision
    model, variables = from_clip(directory, t_size=3, no_lmhra=False)  # heads from config.json
    assert model.heads == 4
    video = np.repeat(images[:, None], 3, axis=1)
    _, cls, _ = run(model, variables, video)
    np.testing.assert_allclose(cls, np.repeat(expected_cls[:, None], 3, axis=1), atol=TOKENS_ATOL)


def test_hugging_face_full_clip_model_file(tmp_path, hf_vision):
    """CLIPModel weights (text tower, projections) as a pytorch_model.bin; heads by argument."""
    from transformers import CLIPConfig, CLIPModel
    _, images, _ = hf_vision
    config = CLIPConfig(vision_config=hf_vision_config().to_dict(),
                        text_config=dict(hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         vocab_size=50, max_position_embeddings=8),
                        projection_dim=8)
    torch.manual_seed(1)
    hf = CLIPModel(config).eval()
    with torch.no_grad():
        cls = hf.vision_model(pixel_values=torch.tensor(images).permute(0, 3, 1, 2))
        cls = cls.last_hidden_state[:, 0].numpy()
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf.state_dict(), path)
    model, variables = from_clip(path, heads=4, t_size=2)
    _, ours, _ = run(model, variables, np.repeat(images[:, None], 2, axis=1))
    np.testing.assert_allclose(ours, np.repeat(cls[:, None], 2, axis=1), atol=TOKENS_ATOL)


def test_positional_embedding_is_resized_like_torch_bicubic(golden):
    model, variables = from_clip(golden / "clip_tiny.safetensors", input_resolution=96, t_size=2)
    original = read_state_dict(golden / "clip_tiny.safetensors")["visual.positional_embedding"]
    pos = variables["params"]["positional_embedding"]
    assert pos.shape == (1 + 6 * 6, 64)
    np.testing.assert_array_equal(pos[0], original[0])
    grid = torch.tensor(original[1:]).reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    np.testing.assert_allclose(pos[1:], expected.permute(0, 2, 3, 1).reshape(36, 64), atol=RESIZE_ATOL)
    assert jax.jit(model.apply)(variables, np.zeros((1, 2, 96, 96, 3), np.float32)).shape == (1, 400)
    np.testing.assert_array_equal(resize_positional_embedding(original, 4), original)


def test_contradicting_backbone_arguments_are_rejected(golden):
    with pytest.raises(ValueError, match="width=128 contradicts"):
        from_clip(golden / "clip_tiny.safetensors", width=128)


def test_incomplete_or_foreign_clip_weights_list_the_keys(tmp_path, golden):
    state = read_state_dict(golden / "clip_tiny_visual_extracted.pth")
    broken = dict(state)
    del broken["transformer.resblocks.1.ln_1.weight"]
    broken["transformer.resblocks.0.attn.extra"] = np.zeros(3, np.float32)
    broken["ln_pre.bias"] = np.zeros(5, np.float32)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointMismatchError) as err:
        from_clip(tmp_path / "broken.safetensors", t_size=2)
    message = str(err.value)
    assert "missing keys (1): transformer.resblocks.1.ln_1.weight" in message
    assert "unexpected keys (1): transformer.resblocks.0.attn.extra" in message
    assert "shape mismatch for ln_pre.bias: expected (64,), found (5,)" in message
    save_file({"text.weight": np.zeros(2, np.float32)}, str(tmp_path / "text.safetensors"))
    with pytest.raises(ValueError, match="no CLIP vision tower found"):
        from_clip(tmp_path / "text.safetensors")


def test_options_can_come_from_a_config_file(tmp_path, golden):
    (tmp_path / "args.json").write_text('{"no_lmhra": false, "num_classes": 3, "t_size": 2}')
    model, variables = from_clip(golden / "clip_tiny.safetensors", config=tmp_path / "args.json",
                                 num_classes=5)
    assert not model.no_lmhra and model.num_classes == 5 and model.t_size == 2
    assert variables["params"]["head"]["kernel"].shape == (64, 5)
