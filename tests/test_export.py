"""main.py export: the jax.export artifact and the SavedModel equal the Flax model's logits,
at batch sizes other than any traced, loaded in processes that cannot import this package."""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from helpers import LOGITS_ATOL, ROOT, randomize, tiny_fields, tiny_train_config

from uniformerv2_jax import export, predict, storage
from uniformerv2_jax.checkpoint import Checkpoints
from uniformerv2_jax.convert.saved import save_converted
from uniformerv2_jax.experiment import build, random_state
from uniformerv2_jax.input.transforms import normalize
from uniformerv2_jax.model import UniFormerV2

CLASSES = ["rising", "falling"]
# The child processes block this package and Flax (and, for the SavedModel, JAX itself):
# an import of any of them fails, so the artifacts must stand on their own.
BLOCK = "import sys\nfor name in {blocked}:\n    sys.modules[name] = None\n"
RUN_JAX = BLOCK.format(blocked=["uniformerv2_jax", "flax"]) + """
import jax, numpy as np
exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
frames = np.load(sys.argv[2])
np.savez(sys.argv[3], **{str(n): np.asarray(exported.call(frames[:n])) for n in (1, 3)})
"""
RUN_SAVED_MODEL = BLOCK.format(blocked=["uniformerv2_jax", "flax", "jax"]) + """
import numpy as np, tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
frames = np.load(sys.argv[2])
out = {}
for n in (1, 3):
    result = serve(frames=tf.constant(frames[:n]))
    out.update({f"logits{n}": result["logits"].numpy(), f"probabilities{n}": result["probabilities"].numpy()})
np.savez(sys.argv[3], **out)
"""


def run_child(script: str, *args, tmp_path) -> dict[str, np.ndarray]:
    out = tmp_path / "child_out.npz"
    result = subprocess.run([sys.executable, "-c", script, *map(str, args), str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(out))


def flax_logits(model, variables, frames, dtype="float32") -> np.ndarray:
    """The reference: the input pipeline's normalisation, then the Flax model."""
    video = normalize(tf.constant(frames)).numpy()
    return np.asarray(model.clone(dtype=jnp.dtype(dtype)).apply(variables, video), np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A converted tiny model, every weight random, and 3 clips of uint8 frames."""
    root = tmp_path_factory.mktemp("export")
    model = UniFormerV2(**tiny_fields())
    variables = randomize(nn.unbox(model.init(jax.random.key(0), np.zeros((1, 4, 32, 32, 3)))))
    directory = save_converted(root / "converted", model, variables)
    frames = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    np.save(root / "frames.npy", frames)
    return model, variables, directory, root


@pytest.fixture(scope="module")
def exported(tiny):
    """The CLI's float32 export of the converted directory (both formats)."""
    _, _, directory, root = tiny
    out = subprocess.run([sys.executable, str(ROOT / "main.py"), "export", f"--checkpoint={directory}",
                          f"--out={root / 'f32'}"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert str(root / "f32") in out.stdout
    return root / "f32"


def test_jax_artifact_runs_without_this_package_and_equals_the_flax_logits(tiny, exported, tmp_path):
    model, variables, _, root = tiny
    out = run_child(RUN_JAX, exported / export.JAX_FILE, root / "frames.npy", tmp_path=tmp_path)
    reference = flax_logits(model, variables, np.load(root / "frames.npy"))
    for n in (1, 3):  # traced with a symbolic batch: any size runs
        assert out[str(n)].shape == (n, 5) and out[str(n)].dtype == np.float32
        np.testing.assert_allclose(out[str(n)], reference[:n], rtol=0, atol=LOGITS_ATOL)


def test_saved_model_serves_with_tensorflow_alone_and_equals_the_flax_logits(tiny, exported, tmp_path):
    model, variables, _, root = tiny
    out = run_child(RUN_SAVED_MODEL, exported / export.SAVED_MODEL_DIR, root / "frames.npy",
                    tmp_path=tmp_path)
    reference = flax_logits(model, variables, np.load(root / "frames.npy"))
    for n in (1, 3):
        np.testing.assert_allclose(out[f"logits{n}"], reference[:n], rtol=0, atol=LOGITS_ATOL)
        np.testing.assert_allclose(out[f"probabilities{n}"], jax.nn.softmax(reference[:n]), atol=1e-6)
    signature = tf.saved_model.load(str(exported / export.SAVED_MODEL_DIR)).signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 4, 32, 32, 3]
    assert set(signature.structured_outputs) == {"logits", "probabilities"}


def test_export_json_and_labels_describe_the_artifacts(exported):
    spec = json.loads((exported / export.SPEC_FILE).read_text())
    assert spec["formats"] == {"jax": "model.jax_export", "savedmodel": "saved_model"}
    assert spec["input"]["dtype"] == "uint8" and spec["input"]["shape"] == [None, 4, 32, 32, 3]
    assert spec["normalization"]["mean"] == [0.45] * 3 and spec["normalization"]["std"] == [0.225] * 3
    assert spec["dtype"] == "float32" and spec["model"]["num_classes"] == 5
    assert spec["platforms"] == ["cpu", "cuda", "tpu"]
    assert set(spec["versions"]) == {"uniformerv2_jax", "jax", "tensorflow"}
    assert (exported / export.LABELS_FILE).read_text().split() == [f"class_{i}" for i in range(5)]
    assert storage.is_complete(exported)


def test_bfloat16_export_equals_the_bfloat16_flax_model(tiny, tmp_path):
    """Both formats run the Flax model's bfloat16 program; only XLA's fusion (which depends
    on the batch size) can round differently, so they agree within one bfloat16 step
    (2**-8 relative) at the logits' scale. Against float32 the gap is bfloat16's own."""
    model, variables, directory, root = tiny
    out = export.export(directory, tmp_path / "bf16", dtype="bfloat16")
    frames = np.load(root / "frames.npy")
    reference = flax_logits(model, variables, frames, "bfloat16")
    reference_f32 = flax_logits(model, variables, frames)
    scale = np.abs(reference_f32).max()
    exported = jax.export.deserialize((out / export.JAX_FILE).read_bytes())
    serve = tf.saved_model.load(str(out / export.SAVED_MODEL_DIR)).signatures["serving_default"]
    for n in (1, 3):
        for logits in map(np.asarray, (exported.call(frames[:n]),
                                       serve(frames=tf.constant(frames[:n]))["logits"])):
            assert logits.dtype == np.float32
            np.testing.assert_allclose(logits, reference[:n], rtol=0, atol=2**-8 * scale)
            np.testing.assert_allclose(logits, reference_f32[:n], rtol=0, atol=2**-4 * scale)
    assert json.loads((out / export.SPEC_FILE).read_text())["model"]["dtype"] == "bfloat16"


def test_a_model_set_for_a_gpus_kernels_exports_with_portable_ones(tiny):
    """Kernels chosen for the exporting machine (here cuDNN attention and grouped
    convolutions, which cannot even trace on a CPU) are not what the artifact's platforms
    run: the export lowers plain XLA forms and gives the float32 Flax logits."""
    model, variables, _, root = tiny
    gpu_model = model.clone(kernels="cudnn+grouped")
    frames = np.load(root / "frames.npy")
    with pytest.raises(ValueError, match="cuDNN attention needs a GPU"):
        gpu_model.apply(variables, normalize(tf.constant(frames[:1])).numpy())
    assert export.serving_model(gpu_model).kernels == export.PORTABLE_KERNELS
    exported = jax.export.deserialize(export.export_jax(gpu_model, variables, platforms=("cpu", "tpu")))
    np.testing.assert_allclose(np.asarray(exported.call(frames)), flax_logits(model, variables, frames),
                               rtol=0, atol=LOGITS_ATOL)


def test_normalisation_is_the_input_pipelines_exactly():
    frames = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16, 1).repeat(3, -1)
    np.testing.assert_array_equal(np.asarray(jax.jit(export.normalize)(frames)),
                                  normalize(tf.constant(frames)).numpy())


@pytest.fixture(scope="module")
def workdir(synthetic_records, tmp_path_factory):
    """A training workdir as train.py leaves it (config.json, one checkpoint, random weights),
    made without training; its config names a class list."""
    root = tmp_path_factory.mktemp("workdir")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    config = tiny_train_config(synthetic_records, **{"data.class_names": str(root / "classes.txt")})
    exp = build(config)
    state = nn.unbox(random_state(exp.model, exp.tx, jax.random.key(0)))
    state = state.replace(params=randomize(state.params))
    checkpoints = Checkpoints(root / "run" / "checkpoints", keep=1, asynchronous=False)
    checkpoints.save(0, state, {"step": 0})
    checkpoints.close()
    (root / "run" / "config.json").write_text(config.to_json())
    return root / "run", state


def test_a_training_workdir_exports_its_best_checkpoint_and_class_list(workdir, tmp_path):
    directory, state = workdir
    loaded = predict.load_trained(directory)
    out = export.export(directory, tmp_path / "out", formats="jax")
    assert sorted(p.name for p in out.iterdir()) == ["COMPLETE", "export.json", "labels.txt",
                                                     "model.jax_export"]
    assert (out / export.LABELS_FILE).read_text().split() == CLASSES
    frames = np.random.default_rng(1).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    exported = jax.export.deserialize((out / export.JAX_FILE).read_bytes())
    np.testing.assert_allclose(exported.call(frames), flax_logits(loaded.model, state.variables, frames),
                               rtol=0, atol=LOGITS_ATOL)


def test_bad_flags_and_an_existing_output_are_named(tiny, tmp_path):
    directory = tiny[2]
    with pytest.raises(ValueError, match="--formats='onnx'"):
        export.export(directory, tmp_path / "x", formats="onnx")
    with pytest.raises(ValueError, match="--dtype='float16'"):
        export.export(directory, tmp_path / "x", dtype="float16")
    with pytest.raises(ValueError, match="--platforms='rocm'"):
        export.export(directory, tmp_path / "x", platforms="rocm")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export(directory, tmp_path / "taken", formats="jax")
    out = export.export(directory, tmp_path / "taken", formats="jax", platforms="cpu", overwrite=True)
    assert jax.export.deserialize((out / export.JAX_FILE).read_bytes()).platforms == ("cpu",)


def test_export_to_gcs_is_published_complete(tiny, gcs):
    model, variables, directory, root = tiny
    out = export.export(directory, "gs://runs/exports/tiny")
    assert str(out) == "gs://runs/exports/tiny" and storage.is_complete(out)
    # Every object moved (TF's empty "directory/" placeholders stay, as for any moved dir).
    assert [o for o in gcs.list_objects("runs", "exports/.tiny.staging") if not o.endswith("/")] == []
    frames = np.load(root / "frames.npy")
    reference = flax_logits(model, variables, frames)
    exported = jax.export.deserialize((out / export.JAX_FILE).read_bytes())
    np.testing.assert_allclose(exported.call(frames[:2]), reference[:2], rtol=0, atol=LOGITS_ATOL)
    serve = tf.saved_model.load(str(out / export.SAVED_MODEL_DIR)).signatures["serving_default"]
    np.testing.assert_allclose(serve(frames=tf.constant(frames[:2]))["logits"], reference[:2], rtol=0,
                               atol=LOGITS_ATOL)
