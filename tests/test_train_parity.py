"""Training equals the official training: data/fixtures/train_tiny_a.* (see data/fixtures/README.md).

The official code trained tiny_a three steps on one batch (AdamW lr 1e-3, official
parameter groups), in float32 (``train_tiny_a.safetensors``) and in float64
(``train_tiny_a_f64.safetensors``). Our float32 results are compared with the float64 ones,
the truth up to float64 round-off. Every bound is :data:`FLOOR_FACTOR` times the official
float32 run's own error against that truth (its *floor*), the worst over all tensors of the
figure: one float32 run's worst element is one draw of an extreme, and a float32 run on
other kernels (another CPU's vector width, FMA use, summation order) draws another. Where
the truth is ~0 (see ``flat`` below) the bound is derived by hand instead.
"""

import functools
import json
import math

import jax
import numpy as np
import optax
import pytest
from helpers import ROOT
from safetensors.numpy import load_file

from uniformerv2_jax import from_official
from uniformerv2_jax.convert.mapping import official_rules
from uniformerv2_jax.convert.official import official_to_variables, strip_prefixes, to_official
from uniformerv2_jax.optim import learning_rate_schedule, make_optimizer, official_param_groups
from uniformerv2_jax.train_step import create_train_state, cross_entropy, train_step

FIXTURES = ROOT / "data" / "fixtures"
LR = 1e-3
# Headroom over the official float32 floor for a float32 run on other kernels; a defect
# (a missed weight decay, a wrong epsilon or momentum) moves the figures by far more.
FLOOR_FACTOR = 10
ULPS = 4 * np.finfo(np.float32).eps  # a parameter's own float32 rounding, a few times


@pytest.fixture(scope="module")
def official():
    meta = json.loads((FIXTURES / "train_tiny_a.json").read_text())
    arrays = np.load(FIXTURES / "train_tiny_a.npz")
    model, variables = from_official(FIXTURES / "tiny_a.safetensors", **meta["constructor_args"])
    batch = {"video": np.transpose(arrays["input"], (0, 2, 3, 4, 1)),
             "label": arrays["labels"].astype(np.int32)}
    return dict(meta=meta, arrays=arrays, ref=load_file(FIXTURES / "train_tiny_a.safetensors"),
                truth=load_file(FIXTURES / "train_tiny_a_f64.safetensors"),
                start=load_file(FIXTURES / "tiny_a.safetensors"), model=model,
                variables=variables, batch=batch)


def worst_floor(official, prefixes: tuple[str, ...], error) -> float:
    """The official float32 run's worst ``error(float32, float64, key)`` over the tensors
    whose fixture keys start with one of ``prefixes``."""
    ref, truth = official["ref"], official["truth"]
    return max(error(ref[k], truth[k], k) for k in ref if k.startswith(prefixes))


def relative_to_max(value: np.ndarray, truth: np.ndarray, key: str = "") -> float:
    return float(np.abs(value - truth).max() / np.abs(truth).max())


def relative(value: np.ndarray, truth: np.ndarray, key: str = "") -> float:
    return float((np.abs(value - truth) / np.abs(truth)).max())


def absolute(value: np.ndarray, truth: np.ndarray, key: str = "") -> float:
    return float(np.abs(value - truth).max())


def loss_floor(arrays) -> float:
    return float(np.max(np.abs(arrays["losses"] - arrays["losses_f64"]) / arrays["losses_f64"]))


def adam_step_bound(steps: int, b1: float = 0.9, b2: float = 0.999) -> float:
    """The largest |m_hat / sqrt(v_hat)| Adam can take at step ``steps`` (in units of lr),
    over all gradient histories: with m_hat = sum a_i g_i and v_hat = sum b_i g_i**2, the
    Cauchy-Schwarz bound sqrt(sum a_i**2 / b_i) (about 1.004 at step 3)."""
    i = np.arange(1, steps + 1)
    a = (1 - b1) * b1 ** (steps - i) / (1 - b1**steps)
    b = (1 - b2) * b2 ** (steps - i) / (1 - b2**steps)
    return float(np.sqrt(np.sum(a**2 / b)))


def official_layout(model, state) -> dict[str, np.ndarray]:
    return to_official(model, {"params": state.params, "batch_stats": state.batch_stats})


def run(official, steps: int, clip_norm=20.0):
    """Our jitted train step ``steps`` times on the fixture's batch; every state."""
    model = official["model"]
    tx = make_optimizer(model, optax.constant_schedule(LR), clip_norm=clip_norm)
    state = create_train_state(tx, official["variables"], jax.random.key(0))
    step = jax.jit(functools.partial(train_step, model=model, tx=tx))
    states, losses = [], []
    for _ in range(steps):
        state, metrics = step(state, official["batch"])
        states.append(state)
        losses.append(float(metrics["loss"]))
    return states, losses


def our_gradients(official) -> dict[str, np.ndarray]:
    """dLoss/dparams of the first train-mode forward, in the official layout."""
    model, variables, batch = official["model"], official["variables"], official["batch"]

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, batch["video"], train=True,
                                mutable=["batch_stats"])
        return cross_entropy(logits, batch["label"])

    grads = jax.jit(jax.grad(loss))(variables["params"])
    return to_official(model, {"params": grads, "batch_stats": variables["batch_stats"]})


def test_loss_and_every_gradient_equal_the_official_ones(official):
    arrays, truth = official["arrays"], official["truth"]
    bound = FLOOR_FACTOR * worst_floor(official, ("grad.",), relative_to_max)
    grads = our_gradients(official)
    checked = 0
    for key, value in grads.items():
        if "grad." + key not in truth:
            continue  # buffers
        error = relative_to_max(value, truth["grad." + key])
        assert error <= bound, (key, error, bound)
        checked += 1
    assert checked == len([k for k in truth if k.startswith("grad.")]) == 155
    _, losses = run(official, 1)
    assert losses[0] == pytest.approx(float(arrays["loss0_f64"]), rel=FLOOR_FACTOR * loss_floor(arrays))


def test_batchnorm_running_statistics_after_one_and_three_forwards(official):
    """PyTorch's running update: momentum 0.1, the unbiased batch variance."""
    model, truth = official["model"], official["truth"]
    floors = {"running_mean": worst_floor(official, ("bn_after",), lambda v, t, k: absolute(
                  v, t) if k.endswith("running_mean") else 0.0),
              "running_var": worst_floor(official, ("bn_after",), lambda v, t, k: relative(
                  v, t) if k.endswith("running_var") else 0.0)}
    error = {"running_mean": absolute, "running_var": relative}
    states, _ = run(official, 3)
    for after, state in (("bn_after1.", states[0]), ("bn_after3.", states[2])):
        ours = official_layout(model, state)
        keys = [k[len(after):] for k in truth if k.startswith(after)]
        assert len(keys) == 16  # 8 BatchNorms x (mean, var)
        for key in keys:
            kind = key.rpartition(".")[2]
            assert error[kind](ours[key], truth[after + key]) <= FLOOR_FACTOR * floors[kind], key


def test_three_adamw_steps_give_the_official_parameters(official):
    model, arrays, truth, start = official["model"], official["arrays"], official["truth"], official["start"]
    states, losses = run(official, 3)
    np.testing.assert_allclose(losses, arrays["losses_f64"], rtol=FLOOR_FACTOR * loss_floor(arrays))

    def flat(key):
        # Where the true gradient is ~0 (the key third of in_proj_bias is exactly 0), Adam
        # turns float32 noise into steps of up to lr: bounded by hand below.
        grad = np.abs(truth["grad." + key])
        return grad < 1e-5 * grad.max()

    def moved_error(value, expected, key):
        key = key.partition(".")[2]
        moved = np.abs(expected - start[key]).max()
        return float(np.abs(value - expected)[~flat(key)].max() / moved)

    bound = FLOOR_FACTOR * worst_floor(official, ("after3.",), moved_error)
    # A flat element: the truth barely moves; float32 noise moves ours by at most
    # adam_step_bound(t) * lr at step t.
    flat_bound = LR * sum(adam_step_bound(t) for t in (1, 2, 3))
    after = official_layout(model, states[2])
    compared = loose = 0
    for key, value in after.items():
        if "after3." + key not in truth:
            continue  # buffers
        expected = truth["after3." + key]
        assert moved_error(value, expected, "after3." + key) <= bound, key
        assert np.abs(value - expected)[flat(key)].max(initial=0) <= flat_bound, key
        compared += 1
        loose += int(flat(key).sum())
    assert compared == 155 and loose < 600


def torch_adamw(params: dict, grads: dict, groups: dict, steps: int, clip_norm: float) -> dict:
    """torch.optim.AdamW with the given groups, ``clip_grad_norm_`` before each step."""
    torch = pytest.importorskip("torch")
    tensors = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
    param_groups = [{"params": [tensors[k] for k in keys], "weight_decay": wd}
                    for wd, keys in groups.items() if keys]
    opt = torch.optim.AdamW(param_groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(steps):
        for key, p in tensors.items():
            p.grad = torch.tensor(grads[key])
        torch.nn.utils.clip_grad_norm_(list(tensors.values()), clip_norm)
        opt.step()
    return {k: p.detach().numpy() for k, p in tensors.items()}


def our_updates(model, variables: dict, grads: dict, steps: int, clip_norm: float) -> dict:
    """Our optimiser ``steps`` times on the same (official-layout) gradient."""
    tx = make_optimizer(model, optax.constant_schedule(LR), clip_norm=clip_norm)
    params = variables["params"]
    ours = official_to_variables(model, {**to_official(model, variables, prefix=""), **grads})
    opt_state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(steps):
        updates, opt_state = update(ours["params"], opt_state, params)
        params = optax.apply_updates(params, updates)
    return to_official(model, {"params": params, "batch_stats": variables["batch_stats"]}, prefix="")


def test_active_clipping_equals_torch_clip_grad_norm(official):
    """A clip norm below the gradient norm (13.6): torch's AdamW after clip_grad_norm_(5)."""
    model, ref, meta = official["model"], official["ref"], official["meta"]
    grads = {k[len("grad.backbone."):]: v for k, v in ref.items() if k.startswith("grad.")}
    assert math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values())) > 13
    start = strip_prefixes(official["start"])
    groups = {}
    for group in meta["optimizer"]["param_groups"]:
        groups.setdefault(group["weight_decay"], []).extend(k[len("backbone."):] for k in group["keys"])
    expected = torch_adamw({k: start[k] for k in grads}, grads, groups, 3, clip_norm=5.0)
    ours = our_updates(model, official["variables"], grads, 3, clip_norm=5.0)
    unclipped = our_updates(model, official["variables"], grads, 3, clip_norm=20.0)
    differs = 0
    for key, value in expected.items():
        moved = np.abs(value - start[key]).max()
        np.testing.assert_allclose(ours[key], value, rtol=ULPS, atol=2e-5 * moved, err_msg=key)
        differs += not np.allclose(unclipped[key], value, rtol=0, atol=2e-5 * moved)
    assert differs > 100  # clipping changed the steps (Adam is not scale-invariant with eps)


def test_frozen_recipe_moves_only_the_global_path_and_head(official):
    """Official frozen mode: CLIP's tensors have no gradient, so they neither move nor count
    in the clipping norm; torch's AdamW over the remaining ones is the reference."""
    state = {k: v for k, v in strip_prefixes(official["start"]).items() if k != "transformer.balance"}
    model, _ = from_official(FIXTURES / "tiny_a.safetensors", **official["meta"]["constructor_args"])
    model = model.clone(frozen=True)
    variables = official_to_variables(model, state)
    frozen_names = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer.resblocks")
    trained = [r.official for r in official_rules(model)
               if r.path[0] == "params" and not any(n in r.official for n in frozen_names)]
    assert len(trained) == 37  # the query, 2 DPEs (4), 2 global blocks (28), the head (4)
    rng = np.random.default_rng(0)
    grads = {r.official: rng.standard_normal(state[r.official].shape).astype(np.float32)
             for r in official_rules(model) if r.path[0] == "params"}
    groups = {0.0: [k for k in trained if state[k].ndim == 1],
              0.05: [k for k in trained if state[k].ndim > 1]}
    expected = torch_adamw({k: state[k] for k in trained}, {k: grads[k] for k in trained},
                           groups, 2, clip_norm=5.0)
    ours = our_updates(model, variables, grads, 2, clip_norm=5.0)
    for key in grads:
        if key in expected:
            moved = np.abs(expected[key] - state[key]).max()
            assert moved > 0
            np.testing.assert_allclose(ours[key], expected[key], rtol=ULPS, atol=2e-5 * moved,
                                       err_msg=key)
        else:
            np.testing.assert_array_equal(ours[key], state[key], err_msg=key)
    groups_ours = official_param_groups(model)
    assert sorted(g.official for g in groups_ours.values() if g.trained) == sorted(trained)


def official_lr(cur_epoch: float, base: float, epochs: float, warmup: float,
                start: float, end: float) -> float:
    """slowfast/utils/lr_policy.py, ``cosine`` with COSINE_AFTER_WARMUP, in float64."""
    def cosine(e):
        return end + (base - end) * (math.cos(math.pi * (e - warmup) / (epochs - warmup)) + 1.0) * 0.5
    if cur_epoch < warmup:
        return cur_epoch * (cosine(warmup) - start) / warmup + start
    return cosine(cur_epoch)


@pytest.mark.parametrize("steps_per_epoch,epochs,warmup", [(7, 5, 1.5), (3, 4, 0.0), (10, 2, 2 / 3)])
def test_learning_rate_per_iteration_is_the_official_lr_policy(steps_per_epoch, epochs, warmup):
    base, start, end = 2e-5, 1e-6, 1e-6
    schedule = jax.jit(learning_rate_schedule(base, steps_per_epoch, epochs, warmup, start, end))
    for step in range(steps_per_epoch * epochs):
        expected = official_lr(step / steps_per_epoch, base, epochs, warmup, start, end)
        assert float(schedule(step)) == pytest.approx(expected, rel=2e-6), step
