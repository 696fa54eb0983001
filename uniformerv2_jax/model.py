"""UniFormerV2 (Li et al., ICCV 2023): a CLIP ViT armed with local and global UniBlocks.

Reads like the paper's figure, top to bottom:

* patch embedding (optionally downsampling time) + class token + position embedding;
* ``layers`` x :class:`LocalUniBlock`: local temporal MHRA, CLIP's spatial attention per
  frame, a second local MHRA, CLIP's MLP;
* after each layer in ``return_list``, a :class:`GlobalUniBlock`: DPE, then one learnable
  video query cross-attending to all ``T * L`` tokens of that layer;
* the fusion of the query with the mean class token, and the head.

The fields of :class:`UniFormerV2` are the official constructor arguments (same names),
plus implementation switches (``dtype``, ``scan``, ``remat``, ``kernels``). Input is
channels-last ``(N, T, H, W, 3)``; the backbone stream is kept as ``(N, T, L, C)`` with
``L = 1 + h*w`` (class token first). The sown intermediates are listed in :class:`UniFormerV2`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uniformerv2_jax.kernel_choice import Kernels, choose_kernels, parse_kernels
from uniformerv2_jax.layers import (
    MLP,
    Attention,
    BatchNorm,
    Dense,
    DepthwiseConv3D,
    Dtype,
    add_to_patches,
    drop,
    drop_path,
    layer_norm,
    remat,
    torch_default_uniform,
    zeros,
)

Array = jax.Array


class LocalMHRA(nn.Module):
    """Local temporal MHRA: BatchNorm, 1x1x1 conv, depthwise (3,1,1) conv, 1x1x1 conv.

    (N, T, h, w, C) -> (N, T, h, w, C). The last conv is zero-initialised, so a new
    block adds nothing and the backbone starts as the image ViT applied per frame.
    """

    reduced: int
    dtype: Dtype = jnp.float32
    conv: str = "shifted"  # DepthwiseConv3D.implementation

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        channels = x.shape[-1]
        x = BatchNorm(name="norm")(x, train)
        x = Dense((self.reduced,), ("embed", "reduced"), self.dtype,
                  kernel_init=torch_default_uniform(channels),
                  bias_init=torch_default_uniform(channels), name="conv_in")(x)
        x = DepthwiseConv3D((3, 1, 1), axis_name="reduced", implementation=self.conv, name="conv_dw")(x)
        return Dense((channels,), ("reduced", "embed"), self.dtype,
                     kernel_init=zeros, name="conv_out")(x)


class LocalUniBlock(nn.Module):
    """One backbone layer: CLIP's ViT block with local MHRA before attention and MLP.

    (N, T, L, C) -> (N, T, L, C). Self-attention runs over the L tokens of each frame.
    """

    num_heads: int
    lmhra: bool
    double_lmhra: bool
    dw_reduction: float
    dtype: Dtype = jnp.float32
    kernels: Kernels = Kernels()  # the attention and depthwise-conv forms (kernel_choice.choose_kernels)

    def local(self, x: Array, name: str, rate, train: bool) -> Array:
        reduced = int(x.shape[-1] // self.dw_reduction)
        mhra = LocalMHRA(reduced=reduced, dtype=self.dtype, conv=self.kernels.conv, name=name)
        return add_to_patches(x, lambda v: drop_path(self, mhra(v, train), rate, train))

    @nn.compact
    def __call__(self, x: Array, drop_path_rate=0.0, train: bool = False) -> Array:
        n, c = x.shape[0], x.shape[-1]
        x = nn.with_logical_constraint(x, ("batch", "frames", "tokens", "embed"))
        if self.lmhra:
            x = self.local(x, "lmhra1", drop_path_rate, train)
        y = einops.rearrange(layer_norm("ln_1")(x), "n t l c -> (n t) l c")
        y = Attention(self.num_heads, self.dtype, implementation=self.kernels.attention, name="attn")(y)
        y = einops.rearrange(y, "(n t) l c -> n t l c", n=n)
        x = x + drop_path(self, y, drop_path_rate, train)
        if self.lmhra and self.double_lmhra:
            x = self.local(x, "lmhra2", drop_path_rate, train)
        y = MLP(hidden=4 * c, dtype=self.dtype, name="mlp")(layer_norm("ln_2")(x))
        return x + drop_path(self, y, drop_path_rate, train)


class GlobalUniBlock(nn.Module):
    """DPE, then the video query cross-attends to all T*L tokens of one layer, then MLP.

    query (N, 1, C), tokens (N, T, L, C) -> query (N, 1, C). The DPE (depthwise 3x3x3
    conv) is added to the patch tokens of this block's copy of the layer output; the
    backbone stream itself is never changed. Keys are frame-major and include each
    frame's class token. Output projections are zero-initialised: a new block is the
    identity on the query. Its cross-attention (one query token) is always two matmuls.
    """

    num_heads: int
    mlp_factor: float
    dtype: Dtype = jnp.float32
    dpe: bool = True
    conv: str = "shifted"  # the DPE's DepthwiseConv3D.implementation

    @nn.compact
    def __call__(self, query: Array, tokens: Array, drop_path_rate=0.0,
                 mlp_dropout=0.0, train: bool = False) -> Array:
        c = tokens.shape[-1]
        if self.dpe:
            tokens = add_to_patches(tokens, DepthwiseConv3D((3, 3, 3), implementation=self.conv, name="dpe"))
        tokens = nn.with_logical_constraint(
            einops.rearrange(tokens, "n t l c -> n (t l) c"), ("batch", "tokens", "embed"))
        # Query-side matmuls see one token per clip: float32 costs nothing there, while
        # bfloat16 would cost a cast of their weights on every call.
        attn = Attention(num_heads=self.num_heads, dtype=self.dtype, zero_init_out=True,
                         query_dtype=jnp.float32, name="attn")
        y = attn(layer_norm("ln_1")(query), layer_norm("ln_3")(tokens))
        query = query + drop_path(self, y, drop_path_rate, train)
        y = MLP(hidden=round(self.mlp_factor * c), dtype=jnp.float32, zero_init_out=True, name="mlp")(
            layer_norm("ln_2")(query), mlp_dropout, train)
        return query + drop_path(self, y, drop_path_rate, train)


class LayerRates(NamedTuple):
    """One layer's regularisation rates (under ``nn.scan``, each a scalar of the scanned
    (layers,) array); the official schedules are in :meth:`UniFormerV2.layer_rates`."""

    backbone_drop_path: Any = 0.0  # the LocalUniBlock's drop-path
    global_drop_path: Any = 0.0  # the GlobalUniBlock's drop-path (0 without one)
    global_mlp_dropout: Any = 0.0  # dropout inside the GlobalUniBlock's MLP


class UniLayer(nn.Module):
    """Backbone layer i, followed by a GlobalUniBlock when i is in ``return_list``.

    The unit of ``nn.scan``: carry ``(x (N, T, L, C), query (N, 1, C))``, :class:`LayerRates`.
    """

    num_heads: int
    lmhra: bool
    double_lmhra: bool
    dw_reduction: float
    tapped: bool
    global_heads: int
    mlp_factor: float
    frozen: bool
    dpe: bool
    dtype: Dtype = jnp.float32
    kernels: Kernels = Kernels()
    # Which rates are non-zero anywhere in the run (bools): under nn.scan rates are
    # traced, and a rate that is zero in every layer is dropped statically (no RNG, no masks).
    active: LayerRates = LayerRates(True, True, True)

    @nn.compact
    def __call__(self, carry: tuple[Array, Array], rates: LayerRates,
                 train: bool = False) -> tuple[tuple[Array, Array], None]:
        x, query = carry
        rates = LayerRates(*(rate if on else 0.0 for rate, on in zip(rates, self.active)))
        block = LocalUniBlock(self.num_heads, self.lmhra, self.double_lmhra, self.dw_reduction, self.dtype,
                              self.kernels, name="block")
        x = block(x, rates.backbone_drop_path, train)
        self.sow("intermediates", "block_out", x)
        if self.tapped:
            # A frozen backbone gets no gradient (the official recipe freezes it).
            tokens = jax.lax.stop_gradient(x) if self.frozen else x
            block = GlobalUniBlock(num_heads=self.global_heads, mlp_factor=self.mlp_factor,
                                   dtype=self.dtype, dpe=self.dpe, conv=self.kernels.conv, name="global")
            query = block(query, tokens, rates.global_drop_path, rates.global_mlp_dropout, train)
            self.sow("intermediates", "query", query)
        return (x, query), None


def layer_runs(layers: int, return_list: Sequence[int]) -> list[tuple[int, int, bool]]:
    """Splits layer indices into maximal runs ``(start, stop, tapped)`` of one kind.

    Each run is one ``nn.scan``: layers without a global block, or layers that all have one
    (the official configs tap the last n_layers layers, giving two runs).
    """
    groups = itertools.groupby(range(layers), key=lambda i: i in return_list)
    return [(run[0], run[-1] + 1, tapped) for tapped, run in ((t, list(g)) for t, g in groups)]


def layer_layout(model: UniFormerV2, tree: dict, stacked: bool) -> dict:
    """One collection's tree in the scan layout (``stacked``: ``layers_{a}_{b}`` per run,
    its layers stacked on axis 0) or the loop layout (``layer_{i}``); other entries kept."""
    tree = dict(tree)
    for start, stop, _ in layer_runs(model.layers, model.return_list):
        names, run = [f"layer_{i}" for i in range(start, stop)], f"layers_{start}_{stop}"
        if stacked and names[0] in tree:
            tree[run] = jax.tree.map(lambda *xs: np.stack(xs), *[tree.pop(n) for n in names])
        elif not stacked and run in tree:
            parts = tree.pop(run)
            tree.update({n: jax.tree.map(lambda x, k=k: x[k], parts) for k, n in enumerate(names)})
    return tree


def per_layer_intermediates(model: UniFormerV2, intermediates: dict) -> dict:
    """The ``intermediates`` collection with ``layer_{i}`` entries whether or not the model
    scans (``nn.scan`` sows ``layers_{a}_{b}`` entries stacked on axis 0)."""
    return layer_layout(model, intermediates, stacked=False)


def validate_fields(m: UniFormerV2) -> None:
    """Rejects impossible settings before anything is traced, naming the field."""
    def fail(field: str, why: str):
        raise ValueError(f"UniFormerV2.{field}={getattr(m, field)!r}: {why}")

    if m.input_resolution % m.patch_size:
        fail("input_resolution", f"not divisible by patch_size={m.patch_size}")
    if m.width % m.heads:
        fail("heads", f"does not divide width={m.width}")
    if m.n_dim != m.width:
        fail("n_dim", f"must equal width={m.width}: the DPE and the global blocks read the "
                      "backbone tokens directly (the official model has the same constraint)")
    if m.n_dim % m.n_head:
        fail("n_head", f"does not divide n_dim={m.n_dim}")
    rl = tuple(m.return_list)
    if not rl or list(rl) != sorted(set(rl)) or rl[0] < 0 or rl[-1] >= m.layers:
        fail("return_list", f"must be increasing, unique layer indices in [0, {m.layers})")
    if not isinstance(m.mlp_dropout, (int, float)) and len(m.mlp_dropout) != len(rl):
        fail("mlp_dropout", f"needs one rate per global block ({len(rl)})")
    if m.temporal_downsample:
        if m.kernel_size < 1 or m.kernel_size % 2 == 0:
            fail("kernel_size", "must be odd (the official padding is (kernel_size - 1) // 2)")
        if m.t_size % 2:
            fail("t_size", "must be even with temporal_downsample (stride 2 in time)")
    if int(m.width // m.dw_reduction) < 1:
        fail("dw_reduction", f"leaves no channels of width={m.width}")
    rates = {f: [getattr(m, f)] for f in ("backbone_drop_path_rate", "drop_path_rate", "cls_dropout")}
    for field, values in {**rates, "mlp_dropout": m.mlp_dropouts}.items():
        if any(not 0.0 <= r < 1.0 for r in values):
            fail(field, "must be in [0, 1)")
    if m.num_classes < 1:
        fail("num_classes", "must be positive")
    parse_kernels(m.kernels)  # raises naming UniFormerV2.kernels


class UniFormerV2(nn.Module):
    """The UniFormerV2 video classifier. (N, T, H, W, 3) float -> logits (N, num_classes).

    Defaults are B/16 8x224 with the Kinetics-400 setting (no local MHRA, global blocks on
    layers 8-11). ``presets.create_model`` builds the named variants. ``t_size`` is the
    clip length the model is configured for (the official model needs it; this one reads
    T from the input and only checks the temporal stride).

    Sown intermediates (``mutable=["intermediates"]``; 1-tuples; T after downsampling)::

      embed                (N, T, L, C)  the tokens entering layer 0
      layer_{i}/block_out  (N, T, L, C)  backbone layer i's output
      layer_{i}/query      (N, 1, C)     the video query after layer i's global block
      head_input           (N, C)        the fused feature before head_norm

    With ``scan`` the layer entries are ``layers_{a}_{b}``, stacked on axis 0:
    :func:`per_layer_intermediates` gives them the ``layer_{i}`` names.
    """

    # CLIP ViT backbone.
    input_resolution: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    # Video options (official names).
    t_size: int = 8
    temporal_downsample: bool = False
    kernel_size: int = 3
    dw_reduction: float = 1.5
    no_lmhra: bool = True
    double_lmhra: bool = True
    return_list: tuple[int, ...] = (8, 9, 10, 11)
    n_dim: int = 768
    n_head: int = 12
    mlp_factor: float = 4.0
    backbone_drop_path_rate: float = 0.0
    drop_path_rate: float = 0.0
    mlp_dropout: float | tuple[float, ...] = 0.5
    cls_dropout: float = 0.5
    num_classes: int = 400
    frozen: bool = False
    # Ablation (no official counterpart): without DPE and local MHRA nothing in the model
    # sees frame order; the demo's order-blind baseline.
    dpe: bool = True
    # Implementation.
    dtype: Any = jnp.float32  # compute dtype; parameters and accumulation stay float32
    scan: bool = False  # nn.scan over runs of identical layers: compile time O(1) in depth
    remat: bool = False  # rematerialise each layer in the backward pass
    kernels: str = "auto"  # attention and depthwise-conv forms: see kernel_choice.choose_kernels
    # The backend compiled for ("cpu", "gpu", "tpu"): "auto" kernels and remat's form follow
    # it. None: jax.default_backend() when traced. experiment.build sets the mesh's, which
    # differs from the default when compiling for described devices; never stored.
    platform: str | None = None

    def __post_init__(self):
        validate_fields(self)
        super().__post_init__()

    @property
    def mlp_dropouts(self) -> tuple[float, ...]:
        if isinstance(self.mlp_dropout, (int, float)):
            return (float(self.mlp_dropout),) * len(self.return_list)
        return tuple(self.mlp_dropout)

    def embed(self, video: Array) -> Array:
        """Patch embedding, class token, positions, ln_pre: (N, T_in, H, W, 3) -> (N, T, L, C)."""
        n, t_in, h, w, _ = video.shape
        p, c = self.patch_size, self.width
        if (h, w) != (self.input_resolution,) * 2:
            raise ValueError(f"input frames are {h}x{w}, the model's input_resolution is "
                             f"{self.input_resolution}")
        kt = self.kernel_size if self.temporal_downsample else 1
        kernel = self.param("conv1", nn.with_logical_partitioning(
            torch_default_uniform(3 * kt * p * p), (None, None, None, None, "embed")), (kt, p, p, 3, c))
        if self.temporal_downsample:
            pad = (kt - 1) // 2
            padded = jnp.pad(video, ((0, 0), (pad, pad), (0, 0), (0, 0), (0, 0)))
            t = (t_in + 2 * pad - kt) // 2 + 1
            frames = jnp.stack([padded[:, i:i + 2 * t - 1:2] for i in range(kt)], axis=2)
        else:
            t = t_in
            frames = video[:, :, None]
        g = h // p
        # frames (N, T, kt, H, W, 3) -> one row per patch, in the kernel's (kt, p, p, 3) order.
        patches = einops.rearrange(frames, "n t kt (gh ph) (gw pw) c -> n t (gh gw) (kt ph pw c)",
                                   ph=p, pw=p)
        x = nn.with_logical_constraint(
            jnp.dot(patches.astype(self.dtype), kernel.reshape(-1, c).astype(self.dtype),
                    preferred_element_type=jnp.float32),
            ("batch", "frames", "tokens", "embed"))
        std = c**-0.5
        cls = self.param("class_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(std), ("embed",)), (c,))
        pos = self.param("positional_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(std), (None, "embed")), (1 + g * g, c))
        x = jnp.concatenate([jnp.broadcast_to(cls, (n, t, 1, c)), x], axis=2) + pos
        return layer_norm("ln_pre")(x)

    def layer_rates(self) -> list[LayerRates]:
        """Each layer's rates: drop-path rising linearly over the backbone layers and over
        the global blocks (the official schedules), the global blocks' MLP dropout."""
        def linspace(stop: float, num: int) -> list[float]:  # torch.linspace(0, stop, num)
            return [stop * i / (num - 1) if num > 1 else 0.0 for i in range(num)]

        backbone = linspace(self.backbone_drop_path_rate, self.layers)
        rates = [LayerRates(backbone[i]) for i in range(self.layers)]
        global_dpr = linspace(self.drop_path_rate, len(self.return_list))
        for j, i in enumerate(self.return_list):
            rates[i] = LayerRates(backbone[i], global_dpr[j], self.mlp_dropouts[j])
        return rates

    def make_layer(self, tapped: bool, name: str, rates: Sequence[LayerRates],
                   **scan_kwargs) -> nn.Module:
        """The UniLayer module for layers with ``rates`` (scanned over them when ``scan_kwargs``)."""
        cls = UniLayer
        backend = self.platform or jax.default_backend()
        if self.remat:
            # Scanned: recomputed in its loop iteration (nothing to keep apart from the
            # forward). Unrolled: nn.remat's optimization barriers keep the recomputation
            # for the backward pass, except on XLA:CPU, which drops them (layers.remat).
            if scan_kwargs:
                cls = nn.remat(cls, prevent_cse=False, static_argnums=(3,))
            elif backend == "cpu":
                cls = remat(cls, (3,))
            else:
                cls = nn.remat(cls, static_argnums=(3,))
        if scan_kwargs:
            cls = nn.scan(cls, variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                          split_rngs={"params": True, "dropout": True}, in_axes=(0, nn.broadcast),
                          metadata_params={nn.PARTITION_NAME: "layers"}, **scan_kwargs)
        active = LayerRates(*(any(r > 0 for r in column) for column in zip(*rates)))
        return cls(num_heads=self.heads, lmhra=not self.no_lmhra, double_lmhra=self.double_lmhra,
                   dw_reduction=self.dw_reduction, tapped=tapped, global_heads=self.n_head,
                   mlp_factor=self.mlp_factor, frozen=self.frozen, dpe=self.dpe, dtype=self.dtype,
                   active=active, name=name,
                   kernels=choose_kernels(self.kernels, self.dtype, self.width // self.heads, backend,
                                          tokens=1 + (self.input_resolution // self.patch_size) ** 2))

    @nn.compact
    def __call__(self, video: Array, train: bool = False) -> Array:
        x = self.embed(video)
        self.sow("intermediates", "embed", x)
        query = self.param("temporal_cls_token", nn.with_logical_partitioning(
            zeros, (None, None, "embed")), (1, 1, self.n_dim))
        query = jnp.broadcast_to(query, (x.shape[0], 1, self.n_dim))

        rates = self.layer_rates()
        carry = (x, query)
        if self.scan:
            for start, stop, tapped in layer_runs(self.layers, self.return_list):
                run = rates[start:stop]
                layer = self.make_layer(tapped, f"layers_{start}_{stop}", run, length=stop - start)
                # Each rate as a (layers,) array, scanned over with the layers.
                carry, _ = layer(carry, LayerRates(*map(jnp.asarray, zip(*run))), train)
        else:
            for i in range(self.layers):
                layer = self.make_layer(i in self.return_list, f"layer_{i}", rates[i:i + 1])
                carry, _ = layer(carry, rates[i], train)
        x, query = carry

        if self.frozen:
            feature = query[:, 0]
        else:
            balance = self.param("balance", nn.with_logical_partitioning(zeros, ("embed",)),
                                 (self.n_dim,))
            w = jax.nn.sigmoid(balance)
            feature = (1 - w) * query[:, 0] + w * x[:, :, 0].mean(axis=1)
        self.sow("intermediates", "head_input", feature)
        feature = drop(self, layer_norm("head_norm")(feature), self.cls_dropout, train)
        return Dense((self.num_classes,), ("embed", "classes"), jnp.float32,  # one row per clip
                     kernel_init=torch_default_uniform(self.n_dim),
                     bias_init=torch_default_uniform(self.n_dim), name="head")(feature)
