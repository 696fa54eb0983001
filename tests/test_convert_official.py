"""Official checkpoints: round trips, strict key checks, safe loading, configs, heads, CLI."""

import os
import pickle
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
import torch
from helpers import LOGITS_ATOL, ROOT, randomize, tiny_fields
from safetensors.numpy import save_file

from uniformerv2_jax import UniFormerV2, from_official, to_official, transfer_head
from uniformerv2_jax.convert import CheckpointMismatchError, WeightFileError, read_state_dict
from uniformerv2_jax.convert.io import write_state_dict
from uniformerv2_jax.convert.mapping import stack_layers
from uniformerv2_jax.convert.model_configs import read_official_config
from uniformerv2_jax.convert.saved import load_converted, save_converted
from uniformerv2_jax.presets import abstract_variables, official_kwargs


def random_variables(model: UniFormerV2, seed: int = 3) -> dict:
    variables = jax.tree.map(np.asarray, randomize(abstract_variables(model), seed))
    return stack_layers(model, variables) if model.scan else variables


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("fields", [
    tiny_fields(),
    tiny_fields(temporal_downsample=True, double_lmhra=False, frozen=True),
    tiny_fields(no_lmhra=True, return_list=(2,), scan=True),
])
def test_to_official_then_from_official_is_bit_exact(tmp_path, fields):
    model = UniFormerV2(**fields)
    variables = random_variables(model)
    state = to_official(model, variables)
    assert all(k.startswith("backbone.") for k in state)
    assert ("backbone.transformer.balance" in state) != model.frozen
    save_file(state, str(tmp_path / "model.safetensors"))
    back_model, back = from_official(tmp_path / "model.safetensors", heads=model.heads,
                                     t_size=model.t_size, scan=model.scan)
    assert official_kwargs(back_model) == official_kwargs(model)
    assert_trees_equal(back, variables)


def test_official_layout_loads_into_pytorch_shaped_keys(golden, tiny_a_config):
    """to_official reproduces the official checkpoint: same keys, shapes and values."""
    original = read_state_dict(golden / "tiny_a.safetensors")
    model, variables = from_official(golden / "tiny_a.pyth", config=tiny_a_config)
    exported = to_official(model, variables)
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_written_state_dicts_read_back_bit_exact(tmp_path, golden, tiny_a_config, suffix):
    """write_state_dict -> read_state_dict, in both formats (.pth as the released checkpoints:
    torch.save of {"model_state": ...}); an existing file is replaced only when asked."""
    model, variables = from_official(golden / "tiny_a.safetensors", config=tiny_a_config)
    state = to_official(model, variables)
    path = tmp_path / "out" / f"model{suffix}"
    write_state_dict(path, state)
    back = read_state_dict(path)
    assert sorted(back) == sorted(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    if suffix == ".pth":
        assert list(torch.load(path, weights_only=True)) == ["model_state"]
    with pytest.raises(FileExistsError, match="overwrite"):
        write_state_dict(path, state)
    write_state_dict(path, {"only": np.zeros(2, np.float32)}, overwrite=True)
    assert list(read_state_dict(path)) == ["only"]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no staging file left


def test_wrapped_and_prefixed_checkpoints_load(tmp_path, golden):
    state = read_state_dict(golden / "tiny_a.safetensors")
    bare = {k[len("backbone."):]: torch.from_numpy(v) for k, v in state.items()}
    ddp = {"module.backbone." + k: v for k, v in bare.items()}
    torch.save(bare, tmp_path / "bare.pth")
    torch.save({"epoch": 3, "model_state": ddp, "optimizer_state": {"step": torch.tensor(1)}},
               tmp_path / "train.pyth")
    data = np.load(golden / "tiny_a.npz")
    video = np.transpose(data["input"], (0, 2, 3, 4, 1))
    for name in ("bare.pth", "train.pyth"):
        model, variables = from_official(tmp_path / name, heads=4)
        np.testing.assert_allclose(jax.jit(model.apply)(variables, video), data["logits"], atol=LOGITS_ATOL)


def test_mismatches_list_every_offending_key(tmp_path, golden, tiny_a_config):
    state = read_state_dict(golden / "tiny_a.safetensors")
    del state["backbone.transformer.dec.1.ln_3.bias"]
    state["backbone.transformer.extra_token"] = np.zeros(4, np.float32)
    state["backbone.transformer.resblocks.2.mlp.c_fc.weight"] = np.zeros((8, 64), np.float32)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointMismatchError) as err:
        from_official(tmp_path / "bad.safetensors", config=tiny_a_config)
    e = err.value
    assert e.missing == ["transformer.dec.1.ln_3.bias"]
    assert e.unexpected == ["transformer.extra_token"]
    assert e.mismatched == [("transformer.resblocks.2.mlp.c_fc.weight", (256, 64), (8, 64))]
    assert "bad.safetensors" in str(e)
    # A configuration that contradicts the checkpoint is reported the same way.
    with pytest.raises(CheckpointMismatchError, match="proj.2.weight: expected \\(7, 64\\)"):
        from_official(golden / "tiny_a.safetensors", config=tiny_a_config, num_classes=7)


def test_unknown_and_disguised_files_get_clear_errors(tmp_path, golden):
    (tmp_path / "weights.npz").write_bytes(b"anything")
    with pytest.raises(WeightFileError, match="unknown weight format '.npz'; accepted: '.safetensors'"):
        read_state_dict(tmp_path / "weights.npz")
    (tmp_path / "fake.safetensors").write_bytes((golden / "tiny_a.pyth").read_bytes())
    with pytest.raises(WeightFileError, match="fake.safetensors: not a safetensors file"):
        read_state_dict(tmp_path / "fake.safetensors")
    (tmp_path / "fake.pth").write_bytes((golden / "tiny_a.safetensors").read_bytes())
    with pytest.raises(WeightFileError, match="fake.pth: not a PyTorch file"):
        read_state_dict(tmp_path / "fake.pth")
    data = (golden / "tiny_a.pyth").read_bytes()
    (tmp_path / "truncated.pyth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match="truncated.pyth: cannot read PyTorch file"):
        read_state_dict(tmp_path / "truncated.pyth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        read_state_dict(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not an official UniFormerV2 state dict"):
        from_official(golden / "clip_tiny.safetensors")


class _RunsCommand:
    """Unpickling this would run a shell command (the classic pickle attack)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["legacy", "zip"])
def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    payload = {"model_state": {"w": _RunsCommand(marker)}}
    path = tmp_path / "evil.pth"
    if container == "legacy":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:  # the zip layout torch.save uses, with the malicious data.pkl inside
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("evil/data.pkl", pickle.dumps(payload, protocol=2))
            z.writestr("evil/version", "3\n")
    with pytest.raises(WeightFileError, match="refusing to unpickle"):
        read_state_dict(path)
    assert not marker.exists()


def test_official_yaml_and_json_configs(tmp_path, golden):
    yaml_text = """
TRAIN: {ENABLE: True, BATCH_SIZE: 64}
DATA: {NUM_FRAMES: 16}
MODEL: {NUM_CLASSES: 174, MODEL_NAME: Uniformerv2}
UNIFORMERV2:
  BACKBONE: uniformerv2_b16
  N_LAYERS: 8
  N_DIM: 768
  N_HEAD: 12
  MLP_FACTOR: 4.0
  BACKBONE_DROP_PATH_RATE: 0.2
  DROP_PATH_RATE: 0.4
  MLP_DROPOUT: [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
  CLS_DROPOUT: 0.5
  RETURN_LIST: [4, 5, 6, 7, 8, 9, 10, 11]
  NO_LMHRA: False
  DOUBLE_LMHRA: True
  TEMPORAL_DOWNSAMPLE: True
  PRETRAIN: ''
  DELETE_SPECIAL_HEAD: False
"""
    (tmp_path / "config.yaml").write_text(yaml_text)
    kwargs = read_official_config(tmp_path / "config.yaml")
    assert kwargs["t_size"] == 16 and kwargs["num_classes"] == 174 and kwargs["width"] == 768
    assert kwargs["return_list"] == list(range(4, 12)) and kwargs["temporal_downsample"]
    (tmp_path / "typo.yaml").write_text(yaml_text.replace("N_HEAD:", "N_HEADS:"))
    with pytest.raises(ValueError, match="unknown key UNIFORMERV2.N_HEADS"):
        read_official_config(tmp_path / "typo.yaml")
    (tmp_path / "nosec.yaml").write_text("DATA: {NUM_FRAMES: 8}\n")
    with pytest.raises(ValueError, match="no UNIFORMERV2 section"):
        read_official_config(tmp_path / "nosec.yaml")
    assert read_official_config(golden / "tiny_a_layers.json")["heads"] == 4


def test_k710_head_becomes_a_k400_head_by_label_map(golden, tiny_a_config):
    model, variables = from_official(golden / "tiny_a.safetensors", config=tiny_a_config,
                                     num_classes=10)
    head = variables["params"]["head"]
    new_model, new = transfer_head(model, variables, [3, 0, 7])
    assert new_model.num_classes == 3
    np.testing.assert_array_equal(new["params"]["head"]["kernel"], head["kernel"][:, [3, 0, 7]])
    np.testing.assert_array_equal(new["params"]["head"]["bias"], head["bias"][[3, 0, 7]])
    with pytest.raises(ValueError, match="row indices in \\[0, 10\\)"):
        transfer_head(model, variables, "k400")  # a 10-class head has no rows for K400

    k710 = UniFormerV2(**tiny_fields(num_classes=710))
    k710_vars = random_variables(k710)
    names = (ROOT / "data" / "labels" / "kinetics710.txt").read_text().splitlines()
    k400 = (ROOT / "data" / "labels" / "kinetics400.txt").read_text().splitlines()
    m400, v400 = transfer_head(k710, k710_vars, "k400")
    assert m400.num_classes == 400
    for i in (0, 123, 399):  # row i of the new head is the K710 row of K400 class i's name
        row = names.index(k400[i])
        np.testing.assert_array_equal(v400["params"]["head"]["bias"][i],
                                      k710_vars["params"]["head"]["bias"][row])
    m_first, _ = transfer_head(k710, k710_vars, "first:400")
    assert m_first.num_classes == 400


def test_converted_checkpoint_saves_and_restores(tmp_path, golden, tiny_a_config):
    model, variables = from_official(golden / "tiny_a.safetensors", config=tiny_a_config)
    target = save_converted(tmp_path / "ckpt", model, variables)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_converted(tmp_path / "ckpt", model, variables)
    loaded_model, loaded = load_converted(target)
    assert loaded_model == model
    assert_trees_equal(loaded, jax.tree.map(np.asarray, variables))
    with pytest.raises(FileNotFoundError, match="not a converted checkpoint"):
        load_converted(tmp_path)


@pytest.mark.e2e
def test_convert_command_line_round_trip(tmp_path, golden, tiny_a_config):
    def main(*args):
        return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    out = main("convert", "--from=official", f"--src={golden / 'tiny_a.pyth'}",
               f"--model_config={tiny_a_config}", "--model_arg=scan=true",
               f"--out={tmp_path / 'ckpt'}")
    assert out.returncode == 0, out.stderr
    model, _ = load_converted(tmp_path / "ckpt")
    assert model.scan and model.heads == 4
    out = main("convert", "--from=converted", f"--src={tmp_path / 'ckpt'}",
               f"--out={tmp_path / 'back.safetensors'}")
    assert out.returncode == 0, out.stderr
    back = read_state_dict(tmp_path / "back.safetensors")
    original = read_state_dict(golden / "tiny_a.safetensors")
    assert sorted(back) == sorted(original)
    for key in original:
        np.testing.assert_array_equal(back[key], original[key])
    out = main("convert", "--from=official", f"--src={tmp_path / 'nothing.pyth'}",
               f"--out={tmp_path / 'x'}")
    assert out.returncode != 0 and "weight file not found" in out.stderr
