"""A template row's ``config`` as the spec's ``SpecConfig`` and back (``config_of``, ``config_json``)."""

from __future__ import annotations

import dataclasses

from warren.cp.services.template_spec import DEFAULT_READY_TIMEOUT_S, SpecConfig
from warren.cp.services.templates import TemplateConfig, config_json, config_of


def test_the_two_config_classes_have_the_same_fields() -> None:
    # config_of and config_json copy by field name: a field added to one must be added to both.
    assert [f.name for f in dataclasses.fields(SpecConfig)] == list(TemplateConfig.model_fields)


def test_an_empty_config_reads_as_the_defaults() -> None:
    assert config_of({"config": None}) == SpecConfig(
        env={}, workdir="", user="", start_cmd="", ready_cmd="", ready_timeout_sec=DEFAULT_READY_TIMEOUT_S
    )


def test_a_config_round_trips_and_unknown_keys_are_dropped() -> None:
    stored = {
        "env": {"A": "b"}, "workdir": "/w", "user": "u", "start_cmd": "s", "ready_cmd": "r",
        "ready_timeout_sec": 7,
    }  # fmt: skip
    config = config_of({"config": {**stored, "from_a_newer_cp": 1}})
    assert config == SpecConfig(
        env={"A": "b"}, workdir="/w", user="u", start_cmd="s", ready_cmd="r", ready_timeout_sec=7
    )
    assert config_json(config) == stored
    assert config.env is not stored["env"]  # a copy: the row's value is never shared
