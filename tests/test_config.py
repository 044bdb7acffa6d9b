"""realtime.config: settings errors name the variable and the format it expects.

Pure (no database): :func:`load_settings` and :func:`describe_error` on bad
environments, and ``realtime serve`` as a subprocess, which prints one line per
problem and exits 2, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import get_origin

import pytest
from pydantic import ValidationError

from realtime.config import Settings, SettingsError, describe_error, env_name, load_settings

pytestmark = pytest.mark.driver_blind

JSON_SETTINGS = ["REALTIME_COLLECTIONS", "REALTIME_API_KEYS", "REALTIME_ALLOWED_ORIGINS"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No REALTIME_* variable of the test run leaks into these settings."""
    for name in list(os.environ):
        if name.startswith("REALTIME_"):
            monkeypatch.delenv(name)


def problems(monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[str, ...]:
    """The problems of loading settings from exactly ``env``."""
    for name in list(os.environ):
        if name.startswith("REALTIME_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_a_bad_port_names_the_variable_and_its_format(monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems(monkeypatch, REALTIME_PORT="abc") == (
        "REALTIME_PORT: not an integer; expected an integer from 0 to 65535, "
        "e.g. REALTIME_PORT=8000",)
    assert problems(monkeypatch, REALTIME_PORT="70000") == (
        "REALTIME_PORT: out of range; expected an integer from 0 to 65535, "
        "e.g. REALTIME_PORT=8000",)


def test_a_plain_word_for_collections_says_a_json_list_is_expected(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems(monkeypatch, REALTIME_COLLECTIONS="orders") == (
        "REALTIME_COLLECTIONS: not a JSON list; expected a JSON list of strings, "
        """e.g. REALTIME_COLLECTIONS='["orders","users"]'""",)


@pytest.mark.parametrize("name", JSON_SETTINGS)
@pytest.mark.parametrize("value", ["orders", "http://localhost:3000", "{}", "[1"])
def test_every_json_setting_asks_for_a_json_list_with_an_example(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    (line,) = problems(monkeypatch, **{name: value})
    assert line.startswith(f"{name}: not "), line
    assert "expected a JSON list of " in line, line
    assert f"e.g. {name}='[" in line, line


def test_every_json_setting_has_an_example() -> None:
    """A new list-typed setting needs ``examples=``: its error shows it."""
    lists = [name for name, field in Settings.model_fields.items()
             if get_origin(field.annotation) is list
             or list in [get_origin(arg) for arg in getattr(field.annotation, "__args__", ())]]
    assert sorted(env_name(name) for name in lists) == sorted(JSON_SETTINGS)
    for name in lists:
        assert Settings.model_fields[name].examples, name


def test_choices_booleans_and_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems(monkeypatch, REALTIME_AUTH="password") == (
        "REALTIME_AUTH: not one of the choices; expected one of none, apikey, jwt, apikey+jwt, "
        "e.g. REALTIME_AUTH=none",)
    assert problems(monkeypatch, REALTIME_INSECURE="maybe") == (
        "REALTIME_INSECURE: not true or false; expected true or false, "
        "e.g. REALTIME_INSECURE=true",)
    assert problems(monkeypatch, REALTIME_HEARTBEAT_SECONDS="0") == (
        "REALTIME_HEARTBEAT_SECONDS: out of range; expected a number greater than 0, "
        "e.g. REALTIME_HEARTBEAT_SECONDS=25.0",)


def test_one_line_per_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = problems(monkeypatch, REALTIME_PORT="x", REALTIME_MAX_POOL_SIZE="0",
                     REALTIME_LOG_FORMAT="xml")
    assert [line.split(":")[0] for line in lines] == [
        "REALTIME_MAX_POOL_SIZE", "REALTIME_PORT", "REALTIME_LOG_FORMAT"]


def test_problems_inside_a_json_value_say_where(monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems(monkeypatch, REALTIME_API_KEYS='[{"sha256": "abc"}]') == (
        "REALTIME_API_KEYS[0].sha256: sha256 must be 64 hex digits (the key's SHA-256, "
        "not the key)",)
    (line,) = problems(monkeypatch, REALTIME_COLLECTIONS='["orders", 7]')
    assert line.startswith("REALTIME_COLLECTIONS[1]: not a string; expected a JSON list"), line


def test_rules_across_settings_name_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    (line,) = problems(monkeypatch, REALTIME_AUTH="apikey")
    assert line.startswith("REALTIME_AUTH=apikey needs REALTIME_API_KEYS"), line
    (line,) = problems(monkeypatch, REALTIME_ALLOWED_ORIGINS='["ftp://x"]')
    assert line.startswith("REALTIME_ALLOWED_ORIGINS: bad origin 'ftp://x'"), line


def test_values_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cret-value-0123456789"
    for name in ("REALTIME_PORT", "REALTIME_JWT_LEEWAY_SECONDS", "REALTIME_AUTH"):
        for line in problems(monkeypatch, **{name: secret}):
            assert secret not in line
    for line in problems(monkeypatch, REALTIME_AUTH="jwt", REALTIME_JWT_SECRET=secret):
        assert secret not in line


def test_options_are_named_as_typed() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"log_format": "xml"}, flags={"log_format": "--log-format"})
    assert info.value.problems == (
        "--log-format: not one of the choices; expected one of text, json, "
        "e.g. --log-format text",)


def test_describe_error_of_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(port="eighty", ring_size=0)  # type: ignore[arg-type]
    assert describe_error(info.value).splitlines() == [
        "REALTIME_PORT: not an integer; expected an integer from 0 to 65535, "
        "e.g. REALTIME_PORT=8000",
        "REALTIME_RING_SIZE: out of range; expected an integer at least 1, "
        "e.g. REALTIME_RING_SIZE=10000",
    ]


def test_good_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REALTIME_PORT", "9000")
    monkeypatch.setenv("REALTIME_COLLECTIONS", '["orders"]')
    settings = load_settings({"host": "127.0.0.2"})
    assert (settings.port, settings.collections, settings.host) == (9000, ["orders"],
                                                                   "127.0.0.2")


# ------------------------------------------------------------- realtime serve


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``realtime serve`` (the installed script) with ``env`` over a clean environment."""
    script = Path(sys.executable).with_name("realtime")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "realtime"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    return subprocess.run([*command, "serve", *args], env={**base, **env}, text=True,
                          capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize(("env", "args", "expected"), [
    ({"REALTIME_PORT": "abc"}, (),
     ["REALTIME_PORT: not an integer; expected an integer from 0 to 65535, "
      "e.g. REALTIME_PORT=8000"]),
    ({"REALTIME_COLLECTIONS": "orders"}, (),
     ["REALTIME_COLLECTIONS: not a JSON list; expected a JSON list of strings, "
      """e.g. REALTIME_COLLECTIONS='["orders","users"]'"""]),
    ({"REALTIME_API_KEYS": "abc", "REALTIME_AUTH": "apikey"}, (),
     ["REALTIME_API_KEYS: not valid JSON; expected a JSON list of objects, e.g. "
      """REALTIME_API_KEYS='[{"sha256":"<64 hex digits: the SHA-256 of the key>","""
      """"scopes":["read:orders","write:orders"]}]'"""]),
    ({"REALTIME_PORT": "abc", "REALTIME_AUTH": "none "}, (),
     ["REALTIME_PORT: not an integer; expected an integer from 0 to 65535, "
      "e.g. REALTIME_PORT=8000",
      "REALTIME_AUTH: not one of the choices; expected one of none, apikey, jwt, "
      "apikey+jwt, e.g. REALTIME_AUTH=none"]),
    ({}, ("--log-format", "xml"),
     ["--log-format: not one of the choices; expected one of text, json, "
      "e.g. --log-format text"]),
])
def test_serve_prints_each_problem_on_one_line_and_exits_2(
        env: dict[str, str], args: tuple[str, ...], expected: list[str]) -> None:
    result = _serve(env, *args)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"realtime: bad settings: {line}"
                                          for line in expected]
