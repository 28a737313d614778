"""Project-level guarantees: production settings, demo data, the lock file."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from activity.events import EventKind
from activity.models import Event
from boards.models import Board, Card, Stage

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECURE_SSL_REDIRECT"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_the_deployment_checks():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY="k" * 20 + "-production-like-" * 3,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_without_a_secret_key_production_refuses_to_start():
    clean = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**clean, "DEBUG": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Set SECRET_KEY" in result.stderr


@pytest.mark.django_db
@pytest.mark.sqlite
def test_seed_demo_makes_three_services_with_history_and_is_idempotent(capsys):
    call_command("seed_demo", cards=14, days=30)
    out = capsys.readouterr().out
    assert "demo / demo" in out
    assert set(Board.objects.values_list("key", flat=True)) == {"PAY", "CHK", "SRCH"}
    events = Event.objects.count()
    cards = Card.objects.count()
    assert cards == 42
    deployed = Card.objects.filter(column__stage=Stage.DEPLOYED).count()
    assert deployed > 0
    assert Event.objects.filter(kind=EventKind.CARD_MOVED).count() > cards
    assert Event.objects.filter(
        kind=EventKind.LABEL_CREATED, payload__label__kind="release"
    ).exists()
    first, last = (
        Event.objects.order_by("occurred_at").first(),
        Event.objects.order_by("occurred_at").last(),
    )
    assert first is not None and last is not None
    assert (last.occurred_at - first.occurred_at).days >= 25

    call_command("seed_demo", cards=14, days=30)
    assert "already there" in capsys.readouterr().out
    assert (Event.objects.count(), Card.objects.count()) == (events, cards)


def test_the_lock_file_pins_every_dependency_with_hashes():
    for lock in ["requirements.lock", "requirements-dev.lock"]:
        text = (ROOT / lock).read_text()
        requirements = [
            line for line in text.splitlines() if line and not line.startswith((" ", "#"))
        ]
        assert requirements, lock
        for line in requirements:
            assert "==" in line, f"{lock}: {line} is not pinned"
        assert text.count("--hash=sha256:") >= len(requirements)


def test_every_environment_variable_the_settings_read_is_documented():
    """The settings docstring and the README's Configuration table name each one."""
    settings_source = (ROOT / "flux" / "settings.py").read_text()
    body = settings_source.split('"""', 2)[2]
    read = set(re.findall(r'(?:os\.environ\.get|env_bool|env_list)\("([A-Z_]+)"', body))
    assert len(read) >= 19  # the pattern still finds them
    docstring = settings_source.split('"""', 2)[1]
    readme = (ROOT / "README.md").read_text()
    assert {name for name in read if f"| {name} " not in docstring} == set()
    assert {name for name in read if f"| `{name}` |" not in readme} == set()
