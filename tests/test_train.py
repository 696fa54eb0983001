"""The training loop end to end on a tiny config: resume, NaN stop, evaluation, errors."""

import hashlib
import json
import shutil

import jax
import numpy as np
import pytest
from helpers import LOSS_FLOOR, tiny_train_config

from uniformerv2_jax import config as config_lib
from uniformerv2_jax import evaluate, experiment, run_dir, train
from uniformerv2_jax.input import pipeline, sources
from uniformerv2_jax.train_step import cross_entropy


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def resumable_copy(workdir, tmp_path):
    """A copy of the finished run without its last checkpoint: it resumes at step 4."""
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "6")
    return copy


def assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def tree_digest(directory):
    return {p.relative_to(directory): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(synthetic_records, tmp_path_factory):
    """6 steps, log and checkpoint every 2, on an 8-device data-parallel mesh."""
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_train_config(synthetic_records, log_every=1)
    train.train(config, workdir)
    return config, workdir


def training_set_loss(config, exp, state) -> float:
    """Mean cross-entropy over every training clip, eval mode, the centre view: no
    augmentation or batch noise, so before and after training compare exactly."""
    ds = pipeline.eval_dataset(sources.resolve(config.data.train, "data.train"),
                               batch_size=16, clip_frames=exp.model.t_size,
                               crop_size=exp.model.input_resolution, num_clips=1, num_crops=1)
    batch = next(ds.as_numpy_iterator())
    assert batch["mask"].all()
    logits = exp.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                             batch["video"][:, 0])
    return float(cross_entropy(logits, batch["label"]))


def test_training_reduces_the_loss_and_writes_its_logs(finished_run):
    config, workdir = finished_run
    exp = experiment.build(config, 16)
    before = training_set_loss(config, exp, train.initial_state(exp))
    after = training_set_loss(config, *run_dir.restore(workdir, config, "latest")[:2])
    # Lower by more than float32 noise: 10x the official loss floor (data/fixtures).
    assert after < before * (1 - 10 * LOSS_FLOOR), (before, after)
    loss = losses(workdir)
    assert sorted(loss) == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(list(loss.values())))
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4, 6]  # keep=3
    assert list((workdir / "tensorboard").iterdir())
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["width"] == config.model.width


def test_a_restored_checkpoint_continues_with_identical_losses(finished_run, tmp_path):
    """Drop the last checkpoint: the run resumes at step 4 (state, RNG, data position) and
    logs exactly the losses of steps 5 and 6 again."""
    config, workdir = finished_run
    copy = resumable_copy(workdir, tmp_path)
    train.train(config, copy)
    assert losses(copy) == losses(workdir)
    assert_same_params(run_dir.restore(workdir, config, "latest")[1],
                       run_dir.restore(copy, config, "latest")[1])


def test_a_non_finite_loss_stops_the_run_and_leaves_the_checkpoints_alone(finished_run, tmp_path):
    config, workdir = finished_run
    copy = resumable_copy(workdir, tmp_path)
    before = tree_digest(copy / "checkpoints")
    exploding = tiny_train_config({"train": config.data.train, "val": config.data.val},
                                  log_every=1, **{"optim.lr": 1e30, "optim.end_lr": 1e30,
                                                  "optim.warmup_start_lr": 1e30})
    with pytest.raises(train.NonFiniteLossError, match="at step 5.*last checkpoint: step 4"):
        train.train(exploding, copy)
    assert tree_digest(copy / "checkpoints") == before


def test_skip_policy_counts_non_finite_updates_and_keeps_the_parameters(finished_run, tmp_path):
    config, workdir = finished_run
    copy = resumable_copy(workdir, tmp_path)
    skipping = tiny_train_config({"train": config.data.train, "val": config.data.val},
                                 log_every=1, nonfinite="skip",
                                 **{"optim.lr": 1e30, "optim.end_lr": 1e30})
    train.train(skipping, copy)
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_updates"] for r in rows if r["step"] > 4 and "train/loss" in r] == [1.0, 1.0]
    assert_same_params(run_dir.restore(workdir, config, "4")[1],
                       run_dir.restore(copy, config, "latest")[1])


def test_evaluation_equals_the_view_averaged_softmax_computed_by_hand(finished_run, synthetic_records):
    """10 videos (eval batch 8: one padded batch), 2 clips x 3 crops each."""
    config, workdir = finished_run
    exp, state, _ = run_dir.restore(workdir, config, "latest")
    source = sources.resolve(config.data.val, "data.val")
    results = evaluate.run_eval(exp, state, source, ["brightening", "darkening"])

    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    apply = jax.jit(exp.model.apply)
    ds = pipeline.eval_dataset(source, batch_size=1, clip_frames=4, crop_size=32, num_clips=2,
                               num_crops=3, process_index=0, process_count=1)
    correct, per_class, count = 0, {0: [], 1: []}, 0
    for batch in ds.as_numpy_iterator():
        if not batch["mask"][0]:
            continue
        probs = np.mean([jax.nn.softmax(apply(variables, view[None]))[0]
                         for view in batch["video"][0]], axis=0)
        hit = int(np.argmax(probs) == batch["label"][0])
        correct += hit
        per_class[int(batch["label"][0])].append(hit)
        count += 1
    assert results["videos"] == count == 10
    assert results["top1"] == correct / count
    assert results["mean_class_accuracy"] == pytest.approx(
        np.mean([np.mean(v) for v in per_class.values()]))
    assert results["top5"] == 1.0  # two classes
    assert results["confusion"].sum() == 10


def test_eval_command_writes_json_and_plots(finished_run):
    config, workdir = finished_run
    results = evaluate.evaluate_workdir(workdir, config, "latest")
    assert results["step"] == 6
    saved = json.loads((workdir / "eval.json").read_text())
    assert saved["top1"] == results["top1"] and np.sum(saved["confusion"]) == 10
    for name in ("confusion_matrix.png", "learning_curve.png"):
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_data_names_the_path(synthetic_records, tmp_path):
    config = tiny_train_config(synthetic_records, **{"data.train": "/nowhere/train-*"})
    with pytest.raises(FileNotFoundError, match="config.data.train='/nowhere/train-\\*'"):
        train.train(config, tmp_path)


@pytest.mark.parametrize("overrides, message", [
    ({"model.temporal_downsample": True, "model.t_size": 5}, "t_size=5: must be even"),
    ({"model.t_size": 0}, "config.model.t_size"),
    ({"model.input_resolution": 30}, "input_resolution=30.*patch_size=8"),
    ({"model.n_dim": 64}, "n_dim=64.*must equal width=32"),
    ({"nonfinite": "ignore"}, "config.nonfinite"),
    ({"optim.warmup_epochs": 99.0}, "config.optim"),
    ({"init_from": "/some/file.pt"}, "config.init_from"),
])
def test_bad_configs_are_rejected_naming_the_field(synthetic_records, overrides, message):
    with pytest.raises(ValueError, match=message):
        config_lib.validate(tiny_train_config(synthetic_records, **overrides))


def test_unknown_and_mistyped_command_line_fields_are_rejected():
    from absl import flags
    from helpers import ROOT, parse_config_flags

    config = f"--config={ROOT / 'configs' / 'synthetic.py'}"
    assert parse_config_flags(config, "--config.batch_size=4").batch_size == 4
    with pytest.raises(AttributeError, match="'not_a_field'"):
        parse_config_flags(config, "--config.model.not_a_field=1")
    with pytest.raises(flags.IllegalFlagValueError, match="config.batch_size=many"):
        parse_config_flags(config, "--config.batch_size=many")


def fixture_config(records, **model):
    """A config whose model is the shipped official fixture's (data/fixtures/tiny_a)."""
    from helpers import ROOT

    fields = json.loads((ROOT / "data" / "fixtures" / "tiny_a.json").read_text())
    fields = {k: v for k, v in fields.items() if k not in ("output_dim", "n_layers", "frames")}
    fields.update(num_classes=2, mlp_dropout=0.5, **model)
    config = tiny_train_config(records)
    config.model = config_lib.model_config("B/16", **fields)
    config.init_from = f"official:{ROOT / 'data' / 'fixtures' / 'tiny_a.safetensors'}"
    return config


def test_training_starts_from_an_official_checkpoint_with_remapped_head_rows(synthetic_records):
    """Into a scanned model: the loop-layout checkpoint is stacked on the way."""
    from helpers import ROOT

    from uniformerv2_jax.convert import from_official
    from uniformerv2_jax.convert.mapping import unstack_layers

    config = fixture_config(synthetic_records, scan=True)
    config.head_map = "first:2"
    exp = experiment.build(config, 16)
    params = jax.device_get(train.initial_state(exp).params)
    params = unstack_layers(exp.model, {"params": params})["params"]
    _, official = from_official(ROOT / "data" / "fixtures" / "tiny_a.safetensors", heads=4)
    expected = dict(official["params"])
    expected["head"] = {"kernel": expected["head"]["kernel"][:, :2], "bias": expected["head"]["bias"][:2]}
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(path))

    config.head_map = ""  # 10 rows in the checkpoint, 2 classes in the config
    with pytest.raises(ValueError, match="config.head_map"):
        train.initial_state(experiment.build(config, 16))


def test_a_checkpoint_of_another_architecture_is_refused_key_by_key(synthetic_records):
    from uniformerv2_jax.convert.mapping import CheckpointMismatchError

    config = fixture_config(synthetic_records, layers=5, return_list=(3, 4))
    config.head_map = "new"
    with pytest.raises(CheckpointMismatchError, match="(?s)missing keys.*layer_4"):
        train.initial_state(experiment.build(config, 16))
