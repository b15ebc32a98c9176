"""Bad values a new user sends: each is refused with ONE line that names the
key (or the file), the value and the fix, before any training -- checked
in-process through the same steps the CLI takes (``config.compose``, then
``experiment.build``), plus a few through the CLI itself (exit 2)."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from fedagg_testing import ROOT, fedagg_cmd

from fedagg.config import compose
from fedagg.errors import ConfigError
from fedagg.experiment import build


def refusal(*overrides: str) -> str:
    """The one line a config is refused with (compose, then build: everything before training)."""
    with pytest.raises(ConfigError) as e:
        build(compose(list(overrides)))
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def assert_says(msg: str, *words: str) -> None:
    for w in words:
        assert w in msg, (w, msg)


# --------------------------------------------------------------------------- option values that cannot work
@pytest.mark.parametrize("overrides, words", [
    (["dataset.train_split=1.0"], ["dataset.train_split=1.0", "(0, 1)"]),  # was: a round, then ZeroDivisionError
    (["dataset.num_samples=-5"], ["dataset.num_samples=-5", ">= 10"]),  # was: "need at least one array to stack"
    (["model.channels=0"], ["model.channels=0", "an integer > 0"]),  # was: a torch RuntimeError traceback
    (["dataset=digits", "model=mlp", "model.hidden=-3"], ["model.hidden=-3", "an integer > 0"]),  # likewise
    (["dataset=digits", "model=mlp", "model.depth=0"], ["model.depth=0", "an integer > 0"]),
    (["dataset=digits", "model=cnn_fedau", "+model.hidden=[64,0]"], ["model.hidden=[64, 0]", "integers > 0"]),
    (["dataset=digits", "dataset.test_fraction=1.5"], ["dataset.test_fraction=1.5", "(0, 1)"]),
])
def test_non_positive_sizes_and_fractions_are_refused_when_the_config_loads(overrides, words):
    """config.load alone refuses them: no data is loaded and no model is built."""
    with pytest.raises(ConfigError) as e:
        compose(overrides)
    assert "\n" not in str(e.value)
    assert_says(str(e.value), *words)


def test_options_valid_alone_that_leave_an_empty_split_are_refused_before_training():
    msg = refusal("dataset.num_samples=10", "dataset.train_split=0.05")
    assert_says(msg, "dataset.num_samples=10", "dataset.train_split=0.05", "empty train or test set")


def test_every_model_size_option_is_range_checked_from_its_annotation():
    """The range comes from the builder's signature (Annotated[int, Gt(0)]), so each
    registered model's width/depth/count options are refused at 0 without a hand-written check."""
    import inspect

    from fedagg.task import models

    sized = [(m, p, "list" in str(par.annotation)) for m in models.available()
             for p, par in inspect.signature(models.builder(m)).parameters.items() if "Size" in str(par.annotation)]
    assert len(sized) >= 8, sized
    for model, param, is_list in sized:
        value = "[0]" if is_list else "0"
        with pytest.raises(ConfigError, match=rf"^model\.{param}=\[?0\]? is not allowed; it must be .*integers? > 0"):
            compose([f"model={model}", f"++model.{param}={value}"])


def test_gossip_on_one_node_asks_for_more_nodes():
    msg = refusal("aggregator=gossip", "num_clients=1", "dataset=digits", "model=mlp")
    assert_says(msg, "num_clients=1", "at least 2 nodes", "num_clients=2")
    assert "aggregator.p" not in msg  # was: "raise aggregator.p/aggregator.degree"


def test_a_directory_where_a_file_belongs_is_called_a_directory(tmp_path):
    msg = refusal("participation=trace", f"participation.path={tmp_path}")
    assert_says(msg, "participation.path", str(tmp_path), "is a directory", "CSV")
    assert "does not exist" not in msg
    msg = refusal("dataset=local", f"dataset.path={tmp_path}", "model=mlp")
    assert_says(msg, "dataset.path", "is a directory", ".npz")


def test_eval_every_without_a_validation_split_is_refused_naming_both_keys():
    msg = refusal("eval.every=1")
    assert_says(msg, "eval.every=1", "val_fraction=0.0", "training data", "val_fraction=0.2", "eval.every=0")
    compose(["eval.every=1", "val_fraction=0.2"])  # the fix it names is accepted


# --------------------------------------------------------------------------- hints
@pytest.mark.parametrize("overrides, words, never", [
    (["partition.alpah=0.1"], ["partition.alpah=0.1", "did you mean partition.alpha?", "valid options: alpha"],
     "+partition.alpah"),
    (["aggregator=fedau", "aggregator.k=5"], ["aggregator.k=5", "did you mean aggregator.K?"], "+aggregator.k"),
    (["num_client=5"], ["num_client=5", "did you mean num_clients?"], "+num_client"),
    (["+num_client=5"], ["num_client=5", "did you mean num_clients?"], "+num_client"),
    (["train.lrr=0.1"], ["train.lrr=0.1", "did you mean train.lr?"], "+train.lrr"),
    (["noise=label_flip", "noise.fractoin=0.2"], ["noise.fractoin=0.2", "did you mean noise.fraction?"],
     "+noise.fractoin"),
    (["dataset=femnist", "dataset.num_users=3"], ["dataset.num_users=3", "did you mean dataset.users?"],
     "+dataset.num_users"),
])
def test_a_misspelt_key_gets_the_right_spelling_not_a_plus(overrides, words, never):
    with pytest.raises(ConfigError) as e:
        compose(overrides)
    msg = str(e.value)
    assert_says(msg, *words)
    assert never not in msg, msg


def test_a_real_option_its_yaml_does_not_list_still_gets_the_plus_hint():
    with pytest.raises(ConfigError) as e:
        compose(["partition=niid2", "partition.num_biased=3"])
    assert_says(str(e.value), "+partition.num_biased=3", "niid2")
    compose(["partition=niid2", "+partition.num_biased=3"])  # and that spelling is accepted


def test_natural_partition_hint_names_an_option_the_dataset_has():
    from fedagg.data.partition import partition

    groups = np.repeat(np.arange(3), 4)
    with pytest.raises(ValueError) as e:
        partition("natural", np.zeros(12, dtype=np.int64), 5, groups=groups)
    assert_says(str(e.value), "3 natural clients", "num_clients=3", "dataset.users=5")
    assert "num_users" not in str(e.value)  # femnist / shakespeare have no dataset.num_users


# --------------------------------------------------------------------------- bad local data
def _npz(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def xy():
    r = np.random.default_rng(0)
    return r.normal(size=(100, 8)).astype(np.float32), r.integers(0, 3, 100)


def local(path: str) -> str:
    return refusal("dataset=local", f"dataset.path={path}", "model=mlp", "num_clients=4")


def test_local_x_and_y_row_counts_must_match(tmp_path, xy):
    x, y = xy
    path = _npz(tmp_path, "rows.npz", x_train=x, y_train=y[:90])  # was: 10 rows silently dropped
    assert_says(local(path), f"dataset.path={path}", "x_train has 100 rows but y_train has 90", "fix the file")
    path = _npz(tmp_path, "test_rows.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:19])
    assert_says(local(path), "x_test has 20 rows but y_test has 19")


def test_local_fractional_labels_are_refused_whole_floats_accepted(tmp_path, xy):
    x, y = xy
    path = _npz(tmp_path, "frac.npz", x_train=x, y_train=np.random.default_rng(1).random(100))  # was: 100 classes
    assert_says(local(path), f"dataset.path={path}", "y_train", "non-integer labels", "class ids")
    yn = y.astype(float)
    yn[3] = np.nan
    assert_says(local(_npz(tmp_path, "nan_y.npz", x_train=x, y_train=yn)), "non-integer labels", "row 3")
    exp = build(compose(["dataset=local", f"dataset.path={_npz(tmp_path, 'whole.npz', x_train=x, y_train=y * 1.0)}",
                         "model=mlp", "num_clients=4"]))
    assert exp.fd.num_classes == 3 and exp.fd.data.y_train.dtype == np.int64


def test_local_nan_or_inf_features_are_refused(tmp_path, xy):
    x, y = xy
    x = x.copy()
    x[5, 2], x[7, 0] = np.nan, np.inf
    path = _npz(tmp_path, "nan.npz", x_train=x, y_train=y)
    assert_says(local(path), f"dataset.path={path}", "x_train", "NaN or inf in 2 of 100 rows", "row 5")
    import pandas as pd

    df = pd.DataFrame(xy[0], columns=[f"f{i}" for i in range(8)]).assign(label=y)
    df.loc[3, "f1"] = np.nan
    df.to_csv(tmp_path / "nan.csv", index=False)
    assert_says(local(str(tmp_path / "nan.csv")), "nan.csv", "NaN or inf in 1 of 100 rows", "row 3")


def test_any_loader_with_nan_features_is_refused():
    """Not only dataset=local: a user's own loader (dataset._target_) returning NaN features."""
    msg = refusal("dataset._target_=test_bad_values.nan_loader", "model=mlp", "num_clients=2")
    assert_says(msg, "dataset._target_=test_bad_values.nan_loader", "x_train", "NaN or inf in 1 of 20 rows")


def nan_loader(seed: int = 0):
    from fedagg.data.datasets import Dataset

    x = np.ones((20, 4), np.float32)
    x[0, 0] = np.nan
    return Dataset("nan", x, np.arange(20) % 2, np.ones((5, 4), np.float32), np.arange(5) % 2, 2)


def test_nonfinite_rows_finds_every_bad_row_and_costs_one_sum_when_clean():
    from fedagg.data.datasets import nonfinite_rows

    x = np.zeros((6, 2, 2), np.float32)
    assert nonfinite_rows(x).tolist() == []
    x[1, 0, 1], x[4, 1, 0], x[5, 0, 0] = np.nan, np.inf, -np.inf
    assert nonfinite_rows(x).tolist() == [1, 4, 5]
    big = np.full((4, 3), np.finfo(np.float32).max, np.float32)  # a float32 sum would overflow: float64 does not
    assert nonfinite_rows(big).tolist() == []
    assert nonfinite_rows(np.arange(6).reshape(3, 2)).tolist() == []


# --------------------------------------------------------------------------- through the CLI
@pytest.mark.parametrize("overrides, words", [
    (["model.channels=0"], ["model.channels=0", "an integer > 0"]),
    (["partition.alpah=0.1"], ["partition.alpah=0.1", "did you mean partition.alpha?"]),
    (["aggregator=scaffold", "dataset=digits", "model=mlp", "runtime.state_memory_mb=0.05", "runtime.state_spill=false"],
     ["runtime.state_memory_mb=0.05", "runtime.state_spill=true"]),
    (["aggregator=feddyn", "aggregator.alpha=0"], ["aggregator.alpha=0", "> 0"]),
    (["aggregator=moon", "dataset=digits", "model=cnn1d"], ["model=cnn1d", "aggregator=moon", "model=mlp"]),
    (["aggregator=moon", "aggregator.temperature=0"], ["aggregator.temperature=0", "> 0"]),
    (["dataset=digits", "model=cnn1d", "model.projection_dim=8"],
     ["model.projection_dim=8", "'cnn1d' takes no projection head", "model=mlp or cnn or lenet5"]),
])
def test_cli_says_it_in_one_line_with_exit_2(overrides, words, tmp_path):
    p = subprocess.run(fedagg_cmd() + [*overrides, "rounds=1", f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = (p.stdout + p.stderr).strip()
    lines = [line for line in out.splitlines() if line.strip()]
    assert p.returncode == 2, out[-3000:]
    assert len(lines) == 1 and "config error" in lines[0] and "Traceback" not in out, out
    assert_says(lines[0], *words)
    assert not (tmp_path / "run" / "metrics.csv").exists()
