"""Tests of the configuration: defaults, validation errors that name the field, YAML loading, merging."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from federated.aggregation import RULES, SERVER_OPTIMIZERS
from federated.config import (
    AGGREGATION_RULES,
    SERVER_OPTIMIZER_NAMES,
    AggregationConfig,
    BrokerConfig,
    ClientConfig,
    ConfigError,
    FederatedConfig,
    TrainConfig,
    TrainingConfig,
    load_config,
    merge,
)
from federated.config.training import TASK_KEYS, TRAINING_SCHEMA

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- defaults


def test_defaults_are_valid() -> None:
    cfg = FederatedConfig()
    cfg.validate()
    TrainingConfig().validate()
    BrokerConfig().validate()
    ClientConfig()
    assert cfg.clients_per_round == cfg.num_clients == 10
    assert cfg.min_clients == 2


@pytest.mark.parametrize("num_clients, cpr, expected_min", [(1, None, 1), (3, None, 2), (8, 4, 2), (5, 1, 1)])
def test_unset_cohort_sizes_resolve_from_num_clients(num_clients: int, cpr: int | None,
                                                     expected_min: int) -> None:
    cfg = FederatedConfig(num_clients=num_clients, clients_per_round=cpr)  # type: ignore[arg-type]
    assert cfg.clients_per_round == (num_clients if cpr is None else cpr)
    assert cfg.min_clients == expected_min


def test_config_is_frozen_and_comparable() -> None:
    cfg = FederatedConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_rounds = 3  # type: ignore[misc]
    assert cfg == FederatedConfig()
    assert cfg != FederatedConfig(num_rounds=3)


def test_to_dict_round_trips_through_merge() -> None:
    cfg = FederatedConfig(num_clients=4, seed=9, training=TrainingConfig(batch_size=8))
    assert merge(cfg, {}) == cfg
    assert cfg.to_dict(resolved=True)["clients_per_round"] == 4
    assert cfg.to_dict()["training"]["batch_size"] == 8


# ---------------------------------------------------------------------------------------- validation

# (overrides in dotted form, the field the error must name, text the message must contain)
INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"num_clients": 0}, "num_clients", "positive integer"),
    ({"num_clients": -3}, "num_clients", "positive integer"),
    ({"num_clients": 2.0}, "num_clients", "positive integer"),
    ({"num_clients": True}, "num_clients", "positive integer"),
    ({"num_clients": "10"}, "num_clients", "positive integer"),
    ({"clients_per_round": 0}, "clients_per_round", "positive integer"),
    ({"clients_per_round": 11}, "clients_per_round", "<= num_clients (10)"),
    ({"num_rounds": 0}, "num_rounds", "positive integer"),
    ({"min_clients": 0}, "min_clients", "positive integer"),
    ({"min_clients": 11}, "min_clients", "<= clients_per_round (10)"),
    ({"seed": -1}, "seed", "[0, 2**32)"),
    ({"seed": 2**32}, "seed", "[0, 2**32)"),
    ({"seed": 1.5}, "seed", "[0, 2**32)"),
    ({"dataset": "mnist"}, "dataset", '"digits", "synthetic[:N]", "mnist1d[:N]"'),
    ({"dataset": "mnist1d:15"}, "dataset", "multiple of 10"),
    ({"dataset": "leaf-synthetic:1"}, "dataset", "leaf-synthetic:ALPHA,BETA"),
    ({"dataset": 3}, "dataset", "string"),
    ({"partition": "dirichlet:0"}, "partition", '"iid", "dirichlet:ALPHA"'),
    ({"partition": "dirichlet:"}, "partition", '"iid", "dirichlet:ALPHA"'),
    ({"partition": "dirichlet:-1"}, "partition", '"iid", "dirichlet:ALPHA"'),
    ({"partition": "shards"}, "partition", '"iid", "dirichlet:ALPHA"'),
    ({"model": "resnet"}, "model", "mlp, cnn, cnn1d, logistic, MODULE:FACTORY"),
    ({"model": "a b:c"}, "model", "mlp, cnn, cnn1d, logistic, MODULE:FACTORY"),
    ({"selection": "best"}, "selection", "random"),
    ({"privacy_budget": 0}, "privacy_budget", "(0.0, 1000000.0]"),
    ({"privacy_budget": -1.0}, "privacy_budget", "(0.0"),
    ({"privacy_budget": float("nan")}, "privacy_budget", "(0.0"),
    ({"privacy_budget": float("inf")}, "privacy_budget", "(0.0"),
    ({"privacy_budget": "1"}, "privacy_budget", "(0.0"),
    ({"training.local_epochs": 0}, "training.local_epochs", "an integer in [1, 1000]"),
    ({"training.local_epochs": 1001}, "training.local_epochs", "an integer in [1, 1000]"),
    ({"training.batch_size": 1.5}, "training.batch_size", "an integer in [1, 65536]"),
    ({"training.batch_size": 65537}, "training.batch_size", "an integer in [1, 65536]"),
    ({"training.learning_rate": 0.0}, "training.learning_rate", "(0.0, 10.0]"),
    ({"training.learning_rate": 11}, "training.learning_rate", "(0.0, 10.0]"),
    ({"training.learning_rate": "fast"}, "training.learning_rate", "(0.0, 10.0]"),
    ({"training.learning_rate": 10**400}, "training.learning_rate", "(0.0, 10.0]"),
    ({"training.optimizer": "rmsprop"}, "training.optimizer", "sgd, adam"),
    ({"training.optimizer": 1}, "training.optimizer", "sgd, adam"),
    ({"training.momentum": 1.0}, "training.momentum", "[0.0, 1.0)"),
    ({"training.momentum": -0.1}, "training.momentum", "[0.0, 1.0)"),
    ({"training.proximal_mu": -1.0}, "training.proximal_mu", "[0.0, 1000000.0]"),
    ({"training.proximal_mu": 2e6}, "training.proximal_mu", "[0.0, 1000000.0]"),
    ({"broker.bind": "localhost:80"}, "broker.bind", "tcp://HOST:PORT"),
    ({"broker.bind": 8080}, "broker.bind", "string"),
    ({"broker.store": ""}, "broker.store", "file path"),
    ({"broker.store": 5}, "broker.store", "string"),
    ({"broker.round_timeout_s": 0}, "broker.round_timeout_s", "(0.0, 604800"),
    ({"broker.start_timeout_s": -1}, "broker.start_timeout_s", "[0.0, 604800"),
    ({"broker.heartbeat_interval_s": 0}, "broker.heartbeat_interval_s", "(0.0, 3600"),
    ({"broker.heartbeat_timeout_s": 1.0}, "broker.heartbeat_timeout_s", "larger than heartbeat_interval_s"),
    ({"broker.heartbeat_timeout_s": float("inf")}, "broker.heartbeat_timeout_s", "(0.0, 86400"),
    ({"broker.max_failed_rounds": 0}, "broker.max_failed_rounds", "positive integer"),
    ({"broker.server_learning_rate": 0}, "broker.server_learning_rate", "(0.0, 100.0]"),
]


@pytest.mark.parametrize("overrides, field, allowed", INVALID, ids=lambda x: repr(x)[:40])
def test_every_invalid_field_is_named(overrides: dict[str, Any], field: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        merge(FederatedConfig(), overrides)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert allowed in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("overrides, field, allowed", [i for i in INVALID if "." in i[1]],
                         ids=lambda x: repr(x)[:40])
def test_invalid_nested_fields_are_named_when_built_directly(overrides: dict[str, Any], field: str,
                                                             allowed: str) -> None:
    ((key, value),) = overrides.items()
    section, name = key.split(".")
    sub = {"training": TrainingConfig, "broker": BrokerConfig}[section](**{name: value})
    with pytest.raises(ConfigError) as info:
        FederatedConfig(**{section: sub})  # type: ignore[arg-type]
    assert info.value.field == field and allowed in str(info.value)


@pytest.mark.parametrize("section, value", [("training", {"batch_size": 8}), ("broker", None),
                                            ("training", 5)])
def test_nested_section_of_the_wrong_type_is_a_config_error(section: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        FederatedConfig(**{section: value})
    assert info.value.field == section


def test_rule_and_server_optimizer_names_are_their_owners() -> None:
    """Config keeps no copy of these names: it checks against the aggregation package's own."""
    assert AGGREGATION_RULES is RULES
    assert SERVER_OPTIMIZER_NAMES == tuple(SERVER_OPTIMIZERS)
    for rule in RULES:
        AggregationConfig(rule=rule).validate()
    for name in SERVER_OPTIMIZERS:
        BrokerConfig(server_optimizer=name).validate()
    with pytest.raises(ConfigError, match=f"is not one of {', '.join(RULES)}$"):
        AggregationConfig(rule="average").validate()
    with pytest.raises(ConfigError, match=f"is not one of {', '.join(SERVER_OPTIMIZERS)}$"):
        BrokerConfig(server_optimizer="sgd").validate()


@pytest.mark.parametrize("kwargs, field, allowed", [
    ({"client_id": "bad id"}, "client_id", "letters, digits and _.:@-"),
    ({"client_id": ""}, "client_id", "letters, digits"),
    ({"client_id": 7}, "client_id", "letters, digits"),
    ({"server_address": "tcp://host:80"}, "server_address", "HOST:PORT"),
    ({"server_address": "host"}, "server_address", "HOST:PORT"),
    ({"server_address": None}, "server_address", "HOST:PORT"),
    ({"local_epochs": 0}, "client.local_epochs", "an integer in [1, 1000]"),
    ({"momentum": 1.0}, "client.momentum", "[0.0, 1.0)"),
    ({"learning_rate": -1.0}, "client.learning_rate", "(0.0, 10.0]"),
    ({"optimizer": "lbfgs"}, "client.optimizer", "sgd, adam"),
])
def test_client_config_errors_name_the_field(kwargs: dict[str, Any], field: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        ClientConfig(**kwargs)
    assert info.value.field == field and allowed in str(info.value)


def test_client_config_training_view() -> None:
    c = ClientConfig(local_epochs=3, learning_rate=0.1, optimizer="adam")
    t = c.training()
    assert (t.local_epochs, t.learning_rate, t.optimizer) == (3, 0.1, "adam")


# ------------------------------------------------------------------------------ the training schema


def test_one_training_schema_for_config_task_and_trainer() -> None:
    """The run's training section, ClientConfig and a TASK's train object (TrainConfig) name the same
    settings, all bounded by TRAINING_SCHEMA."""
    assert list(TASK_KEYS) == [f.name for f in dataclasses.fields(TrainingConfig)]
    assert set(TASK_KEYS.values()) <= set(TRAINING_SCHEMA)
    assert list(TRAINING_SCHEMA) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert set(TASK_KEYS) <= {f.name for f in dataclasses.fields(ClientConfig)}
    task = TrainingConfig().to_task_config()
    assert TrainConfig.from_dict(task) == TrainingConfig().to_train_config()
    assert TrainConfig.from_dict(ClientConfig().training().to_task_config()).epochs == ClientConfig().local_epochs


PROBES: list[Any] = [0, 1, -1, 0.5, 0.999, 0.9995, 1.0, 10, 10.5, 1000, 1001, 65536, 65537, 1e6, 2e6, 1e9,
                     float("nan"), float("inf"), True, None, "sgd", "adam", "rmsprop", "1", [1]]


@pytest.mark.parametrize("name", list(TASK_KEYS))
def test_the_broker_refuses_exactly_what_a_worker_refuses(name: str) -> None:
    """A config the broker starts with is a TASK every worker accepts, and the reverse: one set of bounds."""
    for value in PROBES:
        try:
            TrainingConfig(**{name: value}).validate()
            config_ok = True
        except ConfigError:
            config_ok = False
        try:
            TrainConfig.from_dict({TASK_KEYS[name]: value})
            task_ok = True
        except ConfigError:
            task_ok = False
        assert config_ok == task_ok, (name, value)


def test_a_task_error_names_the_setting_and_its_allowed_values() -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"momentum": 1.0})
    assert info.value.field == "train.momentum"
    assert str(info.value) == "train.momentum: must be a number in [0.0, 1.0), got 1.0"
    with pytest.raises(ConfigError, match=r"got 'xxxxx.*\.\.\.$"):
        TrainConfig.from_dict({"learning_rate": "x" * 10_000})


@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.5", "dirichlet:1", "dirichlet:.1",
                                       "dirichlet:1e-3", "natural"])
def test_valid_partitions(partition: str) -> None:
    assert FederatedConfig(partition=partition).partition == partition


@pytest.mark.parametrize("bind", ["tcp://*:8080", "tcp://0.0.0.0:1", "ipc:///tmp/fl.sock", "inproc://x"])
def test_valid_binds(bind: str) -> None:
    assert FederatedConfig(broker=BrokerConfig(bind=bind)).broker.bind == bind


def test_training_task_config_has_the_trainer_keys() -> None:
    t = TrainingConfig(local_epochs=3, batch_size=8, learning_rate=0.2, optimizer="adam", momentum=0.5,
                       proximal_mu=0.01)
    assert t.to_task_config() == {"epochs": 3, "batch_size": 8, "learning_rate": 0.2, "optimizer": "adam",
                                  "momentum": 0.5, "proximal_mu": 0.01}


# ---------------------------------------------------------------------------------------- merge


def test_merge_applies_dotted_overrides_and_skips_none() -> None:
    cfg = merge(FederatedConfig(), {"num_rounds": 3, "training.learning_rate": 0.1, "broker.bind": None,
                                    "seed": None})
    assert cfg.num_rounds == 3 and cfg.training.learning_rate == 0.1
    assert cfg.broker.bind == BrokerConfig().bind and cfg.seed == 0
    assert cfg.training.batch_size == TrainingConfig().batch_size


def test_merge_re_resolves_unset_cohort_sizes() -> None:
    cfg = merge(FederatedConfig(), {"num_clients": 4})
    assert (cfg.clients_per_round, cfg.min_clients) == (4, 2)
    cfg = merge(cfg, {"num_clients": 1})
    assert (cfg.clients_per_round, cfg.min_clients) == (1, 1)


def test_merge_keeps_explicit_cohort_sizes() -> None:
    cfg = FederatedConfig(num_clients=10, clients_per_round=5, min_clients=3)
    cfg = merge(cfg, {"num_clients": 20})
    assert (cfg.clients_per_round, cfg.min_clients) == (5, 3)


def test_merge_int_into_float_field_becomes_float() -> None:
    cfg = merge(FederatedConfig(), {"training.learning_rate": 1, "broker.round_timeout_s": 30})
    assert type(cfg.training.learning_rate) is float and type(cfg.broker.round_timeout_s) is float


@pytest.mark.parametrize("key, field", [
    ("nope", "nope"), ("training.nope", "training.nope"), ("nope.deeper", "nope"),
    ("seed.x", "seed"), ("training.learning_rate.x", "training.learning_rate"),
])
def test_merge_unknown_key_is_a_config_error(key: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        merge(FederatedConfig(), {key: 1})
    assert info.value.field == field


def test_merge_of_a_partial_section_keeps_the_other_keys() -> None:
    cfg = FederatedConfig(training=TrainingConfig(batch_size=32))
    cfg = merge(cfg, {"training": {"learning_rate": 0.2}})
    assert cfg.training.batch_size == 32 and cfg.training.learning_rate == 0.2


# ---------------------------------------------------------------------------------------- YAML


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "c.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_load_config_without_a_file_gives_defaults() -> None:
    assert load_config() == FederatedConfig()
    assert load_config(overrides={"num_rounds": 4}).num_rounds == 4


def test_yaml_file_is_applied(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "num_clients: 4\nnum_rounds: 7\ndataset: synthetic\n"))
    assert (cfg.num_clients, cfg.num_rounds, cfg.dataset) == (4, 7, "synthetic")
    assert (cfg.clients_per_round, cfg.min_clients) == (4, 2)


def test_nested_sections_merge_key_by_key(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "training:\n  learning_rate: 0.2\nbroker:\n  round_timeout_s: 5\n"))
    assert cfg.training.learning_rate == 0.2
    assert cfg.training.batch_size == TrainingConfig().batch_size
    assert cfg.training.optimizer == TrainingConfig().optimizer
    assert cfg.broker.round_timeout_s == 5.0 and type(cfg.broker.round_timeout_s) is float
    assert cfg.broker.bind == BrokerConfig().bind


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "num_rounds: 7\ntraining:\n  learning_rate: 0.2\n  batch_size: 4\n")
    cfg = load_config(path, {"num_rounds": 2, "training.learning_rate": 0.3, "training.batch_size": None})
    assert cfg.num_rounds == 2 and cfg.training.learning_rate == 0.3 and cfg.training.batch_size == 4


def test_unknown_key_is_rejected_with_the_allowed_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "num_round: 3\n"))
    assert info.value.field == "num_round"
    msg = str(info.value)
    assert "allowed:" in msg and "num_rounds" in msg and "training" in msg and "broker" in msg


def test_unknown_nested_key_is_rejected_with_the_section_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "training:\n  lr: 0.1\n"))
    assert info.value.field == "training.lr"
    assert "learning_rate" in str(info.value) and "batch_size" in str(info.value)


def test_invalid_value_in_yaml_names_the_dotted_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "broker:\n  heartbeat_interval_s: -1\n"))
    assert info.value.field == "broker.heartbeat_interval_s"


@pytest.mark.parametrize("text", ["training: 5\n", "broker: [1, 2]\n", "training: null\n"])
def test_section_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="mapping") as info:
        load_config(write(tmp_path, text))
    assert info.value.field in ("training", "broker")


@pytest.mark.parametrize("text", ["num_rounds: [1\n", "a: b: c\n", "\tnum_rounds: 1\n", "key: 'unclosed\n"])
def test_invalid_yaml(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(write(tmp_path, text))
    assert info.value.field == "--config"


def test_yaml_python_tags_are_not_executed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "num_rounds: !!python/object/apply:os.getpid []\n"))


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_non_mapping_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="mapping") as info:
        load_config(write(tmp_path, text))
    assert info.value.field == "--config"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing here\n")) == FederatedConfig()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(tmp_path / "absent.yaml")
    assert info.value.field == "--config"


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, b"num_rounds: 3\ndataset: \xff\xfe\n"))
    assert info.value.field == "--config"


def test_huge_integer_in_yaml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "training:\n  learning_rate: " + "9" * 400 + "\n"))
    assert info.value.field == "training.learning_rate"


def test_default_yaml_matches_the_code_defaults() -> None:
    path = REPO / "configs" / "default.yaml"
    if not path.exists():
        pytest.skip("configs/default.yaml not written yet")
    assert load_config(path) == FederatedConfig()
    # and it spells out every setting, so it documents them all
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    top = {f.name for f in dataclasses.fields(FederatedConfig)}
    assert set(raw) == top
    assert set(raw["training"]) == {f.name for f in dataclasses.fields(TrainingConfig)}
    assert set(raw["broker"]) == {f.name for f in dataclasses.fields(BrokerConfig)}


# ------------------------------------------------------------------------------------ secure aggregation


def test_secure_needs_three_workers_per_round() -> None:
    with pytest.raises(ConfigError, match="at least 3") as info:
        load_config(None, {"secure.enabled": True, "num_clients": 2})
    assert info.value.field == "clients_per_round"


@pytest.mark.parametrize(("overrides", "text"), [
    ({"secure.frac_bits": 24}, "frac_bits"),
    ({"secure.threshold": 50}, "threshold"),
    # Not more than half the neighbours: workers would refuse every round (issue 16, item 7).
    ({"secure.threshold": 1}, r"threshold must be in \[5, 9\] \(more than half"),
    ({"secure.threshold": 4}, r"threshold must be in \[5, 9\]"),
    ({"secure.neighbors": 3, "num_clients": 40}, "even"),
    ({"secure.clip": -1.0}, "secure.clip"),
])
def test_secure_settings_that_cannot_work_are_refused(overrides: dict, text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        load_config(None, {"secure.enabled": True, **overrides})


def test_secure_defaults_are_valid_for_large_cohorts() -> None:
    config = load_config(None, {"secure.enabled": True, "num_clients": 1000})
    params = config.secure.round_params(1000, vector_length=10)
    assert params.degree < 999 and params.degree % 2 == 0 and params.threshold > params.degree // 2
