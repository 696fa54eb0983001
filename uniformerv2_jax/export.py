"""Export for serving: a self-contained ``jax.export`` artifact and a TensorFlow SavedModel.

``main.py export --checkpoint=DIR --out=OUT`` writes::

    OUT/model.jax_export   jax.export.Exported, serialized (StableHLO, the weights baked in
                           as constants): jax.export.deserialize(data).call(frames)
    OUT/saved_model/       TensorFlow SavedModel (jax2tf), signature ``serving_default``:
                           frames -> {"logits", "probabilities"}
    OUT/labels.txt         class names, line i = logit i
    OUT/export.json        model fields, input spec, normalisation, dtype, formats, versions
    OUT/COMPLETE           written last

Both take what a decoder gives: uint8 RGB frames (N, T, H, W, 3), N free, T, H, W the
model's ``t_size`` and ``input_resolution``, already resized and cropped. They normalise
inside to the input pipeline's values, ``(x / 255 - mean) / std`` in float32, and
return float32 logits (N, num_classes), whatever the compute dtype: a server needs
neither this package nor its constants.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uniformerv2_jax import labels, predict, storage
from uniformerv2_jax.input.transforms import UNIFORMERV2_MEAN, UNIFORMERV2_STD
from uniformerv2_jax.model import UniFormerV2
from uniformerv2_jax.presets import model_fields

FORMATS = ("jax", "savedmodel")
DTYPES = ("float32", "bfloat16")
# Lowered for all three by default: an artifact runs only on the platforms it was lowered
# for, and the export machine (often a CPU) is rarely the serving one.
PLATFORMS = ("cpu", "cuda", "tpu")
PORTABLE_KERNELS = "matmul+shifted"  # plain XLA operations, lowered alike for every platform
JAX_FILE = "model.jax_export"
SAVED_MODEL_DIR = "saved_model"
LABELS_FILE = "labels.txt"
SPEC_FILE = "export.json"
INPUT_NAME = "frames"


def normalization_table() -> np.ndarray:
    """(256, 3) float32: ``(level / 255 - mean) / std`` for every uint8 level and channel,
    rounded as :func:`uniformerv2_jax.input.transforms.normalize` rounds it."""
    levels = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
    return (levels - np.asarray(UNIFORMERV2_MEAN, np.float32)) / np.asarray(UNIFORMERV2_STD, np.float32)


def normalize(frames: jax.Array) -> jax.Array:
    """uint8 (..., 3) -> float32 (..., 3), the input pipeline's values exactly.

    A table lookup, not the arithmetic: XLA turns divisions by constants into
    multiplications, which lands 1 ulp off the pipeline's values for most levels.
    """
    table = jnp.asarray(normalization_table())
    return table[frames.astype(jnp.int32), jnp.arange(3)]


def input_shape(model: UniFormerV2) -> tuple[int, int, int, int]:
    """(T, H, W, 3): one clip as the exported functions take it."""
    return (model.t_size, model.input_resolution, model.input_resolution, 3)


def serving_model(model: UniFormerV2, dtype: str = "float32") -> UniFormerV2:
    """``model`` computing in ``dtype`` with :data:`PORTABLE_KERNELS`: "auto" would resolve
    to the exporting machine's backend (cuDNN attention on a GPU), which the artifact's
    other platforms cannot run."""
    return model.clone(dtype=jnp.dtype(dtype), kernels=PORTABLE_KERNELS)


def logits_function(model: UniFormerV2, dtype: str = "float32") -> Callable[[dict, jax.Array], jax.Array]:
    """``(variables, uint8 frames (N, T, H, W, 3)) -> float32 logits (N, C)``, eval mode,
    computing in ``dtype`` (the parameters stay as they are)."""
    model = serving_model(model, dtype)

    def logits(variables: dict, frames: jax.Array) -> jax.Array:
        return model.apply(variables, normalize(frames)).astype(jnp.float32)

    return logits


def export_jax(model: UniFormerV2, variables: dict, dtype: str = "float32",
               platforms: Sequence[str] = PLATFORMS) -> bytes:
    """The serialized ``jax.export`` artifact: the batch size symbolic (``b``), the
    variables closed over, so they are constants of the module."""
    fn = logits_function(model, dtype)
    variables = jax.tree.map(np.asarray, variables)
    (batch,) = jax.export.symbolic_shape("b")
    exported = jax.export.export(jax.jit(lambda frames: fn(variables, frames)),
                                 platforms=tuple(platforms))(
        jax.ShapeDtypeStruct((batch, *input_shape(model)), jnp.uint8))
    return exported.serialize()


def save_saved_model(directory: str | os.PathLike, model: UniFormerV2, variables: dict,
                     dtype: str = "float32", platforms: Sequence[str] = PLATFORMS) -> None:
    """A TensorFlow SavedModel whose ``serving_default`` signature maps ``frames`` uint8
    (None, T, H, W, 3) to ``logits`` and ``probabilities`` (softmax), float32 (None, C)."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    module = tf.Module()
    # Variables, not constants: a constant lives in the GraphDef, one protobuf capped at
    # 2 GB (L/14 in float32 is 1.2 GB); variables go to the SavedModel's own checkpoint.
    module.weights = [tf.Variable(np.asarray(leaf), trainable=False,
                                  name="/".join(str(getattr(k, "key", k)) for k in path))
                      for path, leaf in leaves]
    fn = logits_function(model, dtype)
    t, h, w, _ = input_shape(model)
    converted = jax2tf.convert(lambda weights, frames: fn(jax.tree.unflatten(treedef, weights), frames),
                               polymorphic_shapes=[None, f"(b, {t}, {h}, {w}, 3)"], with_gradient=False,
                               native_serialization_platforms=tuple(platforms))

    @tf.function(autograph=False,
                 input_signature=[tf.TensorSpec((None, t, h, w, 3), tf.uint8, name=INPUT_NAME)])
    def serve(frames):
        logits = converted(list(module.weights), frames)  # a plain list: a pytree for jax
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    module.serve = serve
    tf.saved_model.save(module, os.fspath(directory), signatures={"serving_default": serve})


def export_spec(model: UniFormerV2, dtype: str, formats: Sequence[str], platforms: Sequence[str],
                source: str) -> dict:
    """What ``export.json`` records: enough to call the artifacts without this package."""
    t, h, w, c = input_shape(model)
    versions = {"uniformerv2_jax": importlib.metadata.version("uniformerv2_jax"), "jax": jax.__version__}
    if "savedmodel" in formats:
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    return {
        "source": source,
        "formats": {f: {"jax": JAX_FILE, "savedmodel": SAVED_MODEL_DIR}[f] for f in formats},
        "platforms": list(platforms),
        "dtype": dtype,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [None, t, h, w, c],
                  "layout": "NTHWC, RGB, already resized and cropped to H x W"},
        "normalization": {"formula": "(frames / 255 - mean) / std, float32, inside the model",
                          "mean": list(UNIFORMERV2_MEAN), "std": list(UNIFORMERV2_STD)},
        "outputs": {"logits": {"dtype": "float32", "shape": [None, model.num_classes]},
                    "probabilities": "softmax of the logits (SavedModel signature only)"},
        "labels": LABELS_FILE,
        "model": model_fields(model.clone(dtype=jnp.dtype(dtype))),
        "versions": versions,
    }


def parse_list(value: str | Sequence[str], known: Sequence[str], flag: str) -> tuple[str, ...]:
    """``"a,b"`` or a sequence -> a tuple of known names; an unknown or empty one names ``flag``."""
    items = tuple(v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip())
    unknown = [v for v in items if v not in known]
    if unknown or not items:
        raise ValueError(f"{flag}={','.join(items)!r}: choose from {', '.join(known)}")
    return items


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "float32",
           formats: str | Sequence[str] = FORMATS, platforms: str | Sequence[str] = PLATFORMS,
           class_names: str | os.PathLike | None = None, overwrite: bool = False) -> storage.epath.Path:
    """``main.py export``: a converted directory or training workdir -> ``out`` (local or
    ``gs://``, assembled aside and published complete). Returns the output directory."""
    formats = parse_list(formats, FORMATS, "--formats")
    platforms = parse_list(platforms, PLATFORMS, "--platforms")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r}: choose from {', '.join(DTYPES)}")
    loaded = predict.load_trained(checkpoint)
    model = loaded.model
    names = labels.class_names_for(model.num_classes, class_names or loaded.class_names)
    variables = jax.tree.map(np.asarray, jax.device_get(nn.unbox(loaded.variables)))
    with storage.staged_directory(out, overwrite) as staging:
        if "jax" in formats:
            storage.write_atomic(staging / JAX_FILE, export_jax(model, variables, dtype, platforms))
        if "savedmodel" in formats:
            save_saved_model(staging / SAVED_MODEL_DIR, model, variables, dtype, platforms)
        storage.write_atomic(staging / LABELS_FILE, "\n".join(names) + "\n")
        spec = export_spec(model, dtype, formats, platforms, os.fspath(checkpoint))
        storage.write_atomic(staging / SPEC_FILE, json.dumps(spec, indent=1))
    return storage.absolute(out)
