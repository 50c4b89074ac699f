"""Bad environment values stop start-up with ImproperlyConfigured naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from mailadmin import env

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.embedded
@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False), ("", False)]
)
def test_env_bool_accepts_the_usual_spellings(monkeypatch, value, expected):
    monkeypatch.setenv("SOME_FLAG", value)
    assert env.env_bool("SOME_FLAG", not expected) is expected


def test_env_bool_rejects_anything_else(monkeypatch):
    monkeypatch.setenv("SOME_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="SOME_FLAG='maybe' is not a boolean"):
        env.env_bool("SOME_FLAG", False)


def test_env_int_checks_type_and_range(monkeypatch):
    monkeypatch.setenv("N", "ten")
    with pytest.raises(ImproperlyConfigured, match="N='ten' is not an integer"):
        env.env_int("N", 1)
    monkeypatch.setenv("N", "0")
    with pytest.raises(ImproperlyConfigured, match="N=0 is below the minimum 1"):
        env.env_int("N", 1, minimum=1)
    monkeypatch.setenv("N", "70000")
    with pytest.raises(ImproperlyConfigured, match="N=70000 is above the maximum 65535"):
        env.env_int("N", 1, maximum=65535)
    monkeypatch.setenv("N", " 42 ")
    assert env.env_int("N", 1) == 42


def test_env_float_and_choice(monkeypatch):
    monkeypatch.setenv("F", "x")
    with pytest.raises(ImproperlyConfigured, match="F='x' is not a number"):
        env.env_float("F", 1.0)
    monkeypatch.setenv("LEVEL", "LOUD")
    with pytest.raises(ImproperlyConfigured, match="LEVEL='LOUD' must be one of"):
        env.env_choice("LEVEL", "INFO", {"INFO", "DEBUG"})


def test_env_list_splits_and_trims(monkeypatch):
    monkeypatch.setenv("HOSTS", " a.example , b.example,, ")
    assert env.env_list("HOSTS", []) == ["a.example", "b.example"]


def test_secrets_can_come_from_a_file(monkeypatch, tmp_path):
    secret_file = tmp_path / "key"
    secret_file.write_text("s" * 40 + "\n")
    monkeypatch.setenv("SECRET_KEY_FILE", str(secret_file))
    assert env.secret_key(tmp_path, debug=False) == "s" * 40
    monkeypatch.setenv("SECRET_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY_FILE: cannot read"):
        env.secret_key(tmp_path, debug=False)


def test_secret_key_rules(monkeypatch, tmp_path):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("SECRET_KEY_FILE", raising=False)
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY is required when DEBUG is off"):
        env.secret_key(tmp_path, debug=False)
    generated = env.secret_key(tmp_path, debug=True)
    assert len(generated) >= 50 and env.secret_key(tmp_path, debug=True) == generated  # generated once
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("SECRET_KEY", "short")
    with pytest.raises(ImproperlyConfigured, match="at least 32"):
        env.secret_key(tmp_path, debug=False)


def test_database_and_cache_urls(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL must be"):
        env.database("mysql://u@h/db")
    assert env.database("postgres://u@127.0.0.1:5432/db")["NAME"] == "db"
    with pytest.raises(ImproperlyConfigured, match="CACHE_URL must be"):
        env.cache("memcached://h", tmp_path)


def _django_setup(tmp_path, **variables):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "DEBUG", "SECRET_KEY", "DATABASE"))}
    clean.update(DJANGO_SETTINGS_MODULE="mailadmin.settings", VAR_DIR=str(tmp_path), **variables)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"DEBUG": "0"}, "SECRET_KEY is required when DEBUG is off"),
        ({"DEBUG": "1", "CELERY_BROKER_URL": "kafka://x"}, "CELERY_BROKER_URL must be"),
        ({"DEBUG": "1", "SESSION_COOKIE_AGE": "10"}, "SESSION_COOKIE_AGE=10 is below the minimum"),
    ],
)
def test_django_refuses_to_start_with_a_clear_message(tmp_path, variables, message):
    result = _django_setup(tmp_path, **variables)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr


def test_django_starts_with_development_defaults(tmp_path):
    result = _django_setup(tmp_path, DEBUG="1", CELERY_BROKER_URL="filesystem://")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "secret_key").exists()
