"""MMAction2 checkpoints and configs: parity with MMAction2's code, K400 class order, export, CLI.

The fixture (data/fixtures/mma_tiny.*) is MMAction2's own UniFormerV2 recognizer with
random weights, saved as MMAction2 saves it, with the logits MMAction2 computes.
"""

import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from helpers import LOGITS_ATOL, ROOT
from safetensors.numpy import save_file

from uniformerv2_jax.convert import from_mmaction2, from_official, read_state_dict, to_mmaction2
from uniformerv2_jax.convert.mmaction2 import write_mmaction2
from uniformerv2_jax.convert.mmaction2_keys import is_mmaction2
from uniformerv2_jax.convert.model_configs import read_literal_assignments, read_mmaction2_config
from uniformerv2_jax.convert.saved import load_converted
from uniformerv2_jax.labels import CLASS_LISTS, LABELS_DIR, read_class_names
from uniformerv2_jax.presets import model_from_official_kwargs, official_kwargs
from uniformerv2_jax.pretrained import source_variables

COUNTER = "num_batches_tracked"


@pytest.fixture(scope="module")
def mma(golden):
    """(checkpoint, config, the MMAction2 state dict, the npz of inputs and logits)."""
    pth = golden / "mma_tiny.pth"
    return pth, golden / "mma_tiny_config.py", read_state_dict(pth), np.load(golden / "mma_tiny.npz")


def logits_of(model, variables, data) -> np.ndarray:
    video = np.transpose(data["inputs"], (0, 2, 3, 4, 1))  # (N, C, T, H, W) -> (N, T, H, W, C)
    return np.asarray(jax.jit(model.apply)(variables, video))


def assert_same_state(exported: dict, original: dict):
    """Every key, dtype, shape and value; BatchNorm counters are exported as 0."""
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
        np.testing.assert_array_equal(exported[key], 0 if key.endswith(COUNTER) else value, err_msg=key)


@pytest.mark.parametrize("loader", ["from_mmaction2", "from_official", "flat_safetensors", "scan"])
def test_mmaction2_checkpoint_reproduces_mmaction2_logits(tmp_path, mma, loader):
    pth, config, state, data = mma
    if loader == "from_mmaction2":
        model, variables = from_mmaction2(pth, config=config)
    elif loader == "from_official":  # recognised by its keys
        model, variables = from_official(pth, config=config)
    elif loader == "flat_safetensors":  # the bare state dict, architecture from the shapes
        save_file(state, str(tmp_path / "flat.safetensors"))
        model, variables = from_mmaction2(tmp_path / "flat.safetensors", heads=4)
    else:
        model, variables = from_mmaction2(pth, config=config, scan=True)
    logits = logits_of(model, variables, data)
    np.testing.assert_allclose(logits, data["logits"], rtol=0, atol=LOGITS_ATOL)
    np.testing.assert_allclose(logits, data["official_logits"], rtol=0, atol=LOGITS_ATOL)


def test_init_from_official_accepts_an_mmaction2_checkpoint(mma):
    pth, config, _, data = mma
    model = model_from_official_kwargs(**read_mmaction2_config(config))
    source, variables = source_variables(f"official:{pth}", model, seed=0)
    np.testing.assert_allclose(logits_of(source, variables, data), data["logits"], rtol=0, atol=LOGITS_ATOL)


def test_config_describes_the_same_model_as_the_weights(mma):
    pth, config, state, _ = mma
    assert is_mmaction2(state) and not is_mmaction2({"backbone.transformer.proj.0.weight": 0})
    from_config = model_from_official_kwargs(**read_mmaction2_config(config))
    with_config, _ = from_mmaction2(pth, config=config)
    from_weights, _ = from_mmaction2(pth, heads=4, t_size=4)  # what the shapes cannot say
    assert with_config == from_config
    assert official_kwargs(from_weights) == official_kwargs(from_config)
    assert from_config.num_classes == 5 and from_config.return_list == (0, 1)


def test_config_fields_left_out_take_mmaction2_defaults(tmp_path):
    """A config in the style of MMAction2's K710 ones: only `model` is evaluated; the rest
    may hold what the reader does not follow (`.copy()`, in-place changes)."""
    (tmp_path / "cfg.py").write_text('''
_base_ = ['../../_base_/default_runtime.py']
num_frames = 8 * 2
model = dict(
    type='Recognizer3D',
    backbone=dict(type='UniFormerV2', t_size=num_frames, clip_pretrained=True,
                  pretrained='ViT-B/16', mlp_dropout=[0.5] * 4),
    cls_head=dict(type='TimeSformerHead', num_classes=400, in_channels=768,
                  average_clips='prob'),
    data_preprocessor=dict(type='ActionDataPreprocessor', mean=[114.75, 114.75, 114.75],
                           std=[57.375, 57.375, 57.375], format_shape='NCTHW'))
file_client_args = dict(io_backend='disk')
val_pipeline = [dict(type='DecordInit', **file_client_args), dict(type='Resize', scale=(-1, 224))]
valset = dict(type='VideoDataset', pipeline=val_pipeline)
testset = valset.copy()
testset['pipeline'] = val_pipeline
base_lr = 1e-5
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=base_lr / 100)]
''')
    kwargs = read_mmaction2_config(tmp_path / "cfg.py")
    assert kwargs["t_size"] == 16 and kwargs["width"] == 768 and kwargs["num_classes"] == 400
    # MMAction2's code defaults, not the official ones:
    assert not kwargs["temporal_downsample"] and kwargs["no_lmhra"] and not kwargs["double_lmhra"]
    assert kwargs["return_list"] == [8, 9, 10, 11] and kwargs["cls_dropout"] == 0.0
    model = model_from_official_kwargs(**kwargs)
    assert model.heads == 12 and not model.frozen
    names = read_literal_assignments(tmp_path / "cfg.py")
    assert names["val_pipeline"][0] == {"type": "DecordInit", "io_backend": "disk"}
    assert names["param_scheduler"][0]["eta_min"] == pytest.approx(1e-7)


@pytest.mark.parametrize("text, error", [
    ("import os\nmodel = dict()\n", r"cfg.py:1: `import os` is code"),
    ("model = dict(backbone=dict(type='UniFormerV2', t_size=__import__('os').system('touch {m}')))\n",
     r"cfg.py:1: `__import__\('os'\).*` is not a literal"),
    ("def f():\n    return 8\nmodel = dict(t=f())\n", r"cfg.py:1: `def f\(\):.*` is code"),
    ("model = dict(backbone=dict(type='UniFormerV2', t_size=frames))\n",
     r"cfg.py:1: name 'frames' is not assigned"),
    ("b = dict(type='UniFormerV2')\nmodel = dict(backbone=b)\nb['t_size'] = 16\n",
     r"cfg.py:3: `b\['t_size'\] = 16` changes b in place"),
    ("model = dict(backbone=dict(type='UniFormerV2', t_sise=8), cls_head=dict(type='UniFormerHead'))\n",
     r"cfg.py: unknown key model.backbone.t_sise"),
    ("model = dict(backbone=dict(type='ResNet3d'))\n", r"cfg.py: model.backbone.type='ResNet3d'"),
])
def test_config_reader_refuses_code_and_names_the_file(tmp_path, text, error):
    marker = tmp_path / "pwned"
    (tmp_path / "cfg.py").write_text(text.format(m=marker))
    with pytest.raises(ValueError, match=error):
        read_mmaction2_config(tmp_path / "cfg.py")
    assert not marker.exists()


def test_export_reproduces_the_mmaction2_checkpoint(tmp_path, mma):
    pth, config, state, _ = mma
    model, variables = from_mmaction2(pth, config=config, scan=True)
    assert_same_state(to_mmaction2(model, variables), state)
    write_mmaction2(tmp_path / "back.pth", model, variables)
    saved = torch.load(tmp_path / "back.pth", weights_only=True)
    assert sorted(saved) == ["meta", "state_dict"]
    assert saved["meta"]["official_kwargs"]["heads"] == 4
    assert_same_state(read_state_dict(tmp_path / "back.pth"), state)
    with pytest.raises(ValueError, match="frozen model"):
        to_mmaction2(model.clone(frozen=True), variables)
    with pytest.raises(ValueError, match="not an MMAction2 UniFormerV2 checkpoint"):
        from_mmaction2(ROOT / "data" / "fixtures" / "tiny_a.safetensors")


def test_a_400_class_head_is_reindexed_by_class_name(tmp_path, mma):
    """MMAction2's K400 rows are alphabetical; ours follow the official UniFormerV2 order."""
    _, _, state, _ = mma
    rng = np.random.default_rng(0)
    state = dict(state, **{"cls_head.fc_cls.weight": rng.standard_normal((400, 64), np.float32),
                           "cls_head.fc_cls.bias": rng.standard_normal(400, np.float32)})
    save_file(state, str(tmp_path / "k400.safetensors"))
    mma_names = read_class_names(LABELS_DIR / "kinetics400.txt")
    our_names = read_class_names(LABELS_DIR / CLASS_LISTS["k400"])
    assert sorted(mma_names) == sorted(our_names) and mma_names != our_names

    model, variables = from_mmaction2(tmp_path / "k400.safetensors", heads=4)
    head = variables["params"]["head"]
    for i, name in enumerate(our_names):
        row = mma_names.index(name)
        np.testing.assert_array_equal(head["bias"][i], state["cls_head.fc_cls.bias"][row])
        np.testing.assert_array_equal(head["kernel"][:, i], state["cls_head.fc_cls.weight"][row])
    _, auto = from_official(tmp_path / "k400.safetensors", heads=4)
    np.testing.assert_array_equal(auto["params"]["head"]["bias"], head["bias"])
    assert_same_state(to_mmaction2(model, variables), state)  # and back into MMAction2's order

    kept_model, kept = from_mmaction2(tmp_path / "k400.safetensors", heads=4, keep_head_order=True)
    np.testing.assert_array_equal(kept["params"]["head"]["bias"], state["cls_head.fc_cls.bias"])
    assert_same_state(to_mmaction2(kept_model, kept, keep_head_order=True), state)


@pytest.mark.e2e
def test_convert_command_line_round_trip(tmp_path, mma):
    pth, config, state, _ = mma

    def main(*args):
        return subprocess.run([sys.executable, str(ROOT / "main.py"), "convert", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    out = main("--from=mmaction2", f"--src={pth}", f"--model_config={config}",
               f"--out={tmp_path / 'ckpt'}")
    assert out.returncode == 0, out.stderr
    model, _ = load_converted(tmp_path / "ckpt")
    assert model.heads == 4 and model.t_size == 4 and model.num_classes == 5
    out = main("--from=converted", f"--src={tmp_path / 'ckpt'}", f"--out={tmp_path / 'back.pth'}",
               "--layout=mmaction2")
    assert out.returncode == 0, out.stderr
    assert sorted(torch.load(tmp_path / "back.pth", weights_only=True)) == ["meta", "state_dict"]
    assert_same_state(read_state_dict(tmp_path / "back.pth"), state)
    out = main("--from=converted", f"--src={tmp_path / 'ckpt'}", f"--out={tmp_path / 'dir'}",
               "--layout=mmaction2")
    assert out.returncode != 0 and "--layout=mmaction2 needs --out ending in .pth" in out.stderr
