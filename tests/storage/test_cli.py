"""The `wafleet` CLI: happy paths and one precise line (non-zero exit) for each kind of bad
input. Runs in-process against a SQLite file and against the real Postgres test database."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.fixtures import create_database, drop_database
from workers.cli import main

KEY = "33" * 32


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("WAFLEET_DATABASE_URL", "WAFLEET_PREVIOUS_MASTER_KEYS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WAFLEET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("WAFLEET_MASTER_KEY", KEY)
    return tmp_path


def _check_one_line(code: int, err: str, expected_code: int, *fragments: str) -> None:
    assert code == expected_code, err
    assert err.count("\n") == 1, err
    assert err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err


def test_full_lifecycle_on_sqlite(env: Path) -> None:
    assert run("db", "upgrade")[0] == 0
    code, out, _ = run("--json", "tenant", "create", "salon")
    assert code == 0
    tenant_id = json.loads(out)[0]["id"]
    code, out, _ = run(
        "--json",
        "instance",
        "create",
        "--tenant",
        "salon",
        "--name",
        "desk",
        "--phone",
        "+1 (555) 010-0199",
    )
    assert code == 0
    inst = json.loads(out)[0]
    assert inst["phone_number"] == "15550100199"
    assert inst["status"] == "created"
    code, out, _ = run("instance", "list", "--tenant", tenant_id)
    assert code == 0
    assert "desk" in out
    assert "15550100199" in out
    code, out, _ = run("--json", "apikey", "create", "--tenant", "salon", "--name", "crm")
    assert code == 0
    assert json.loads(out)[0]["key"].startswith("wfk_")
    assert run("instance", "delete", inst["id"], "--tenant", "salon")[0] == 0
    assert "(none)" in run("instance", "list")[1]
    assert "salon" in run("tenant", "list")[1]


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (("instance", "create", "--tenant", "ghost", "--name", "x"), ("unknown tenant",)),
        (
            ("instance", "create", "--tenant", "salon", "--name", "x", "--phone", "0800123"),
            ("country code",),
        ),
        (
            ("instance", "create", "--tenant", "salon", "--name", "x", "--phone", "12ab34567"),
            ("only digits",),
        ),
        (
            ("instance", "create", "--tenant", "salon", "--name", "x", "--phone", "1234"),
            ("8 to 15 digits",),
        ),
        (("instance", "create", "--tenant", "salon", "--name", "desk"), ("already has",)),
        (("tenant", "create", "salon"), ("tenant with this name exists",)),
        (("instance", "delete", str(uuid.uuid4())), ("unknown instance",)),
        (("apikey", "create", "--tenant", "salon", "--name", "k", "--scopes", "root"), ("scopes",)),
    ],
)
def test_refusals_are_one_precise_line(
    env: Path, argv: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    assert run("db", "upgrade")[0] == 0
    assert run("tenant", "create", "salon")[0] == 0
    assert run("instance", "create", "--tenant", "salon", "--name", "desk")[0] == 0
    code, _out, err = run(*argv)
    _check_one_line(code, err, 1, *fragments)


def test_usage_errors_exit_2(env: Path) -> None:
    code, _, err = run("instance", "delete", "not-a-uuid")
    _check_one_line(code, err, 2, "must be an id")
    code, _, err = run("tenant")
    _check_one_line(code, err, 2, "required")
    code, _, err = run("frobnicate")
    _check_one_line(code, err, 2, "invalid choice")


def test_missing_master_key(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("db", "upgrade")[0] == 0
    assert run("tenant", "create", "salon")[0] == 0
    monkeypatch.delenv("WAFLEET_MASTER_KEY")
    code, _, err = run("instance", "create", "--tenant", "salon", "--name", "x")
    _check_one_line(code, err, 2, "WAFLEET_MASTER_KEY: not set")


def test_invalid_setting_stops_start_up(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAFLEET_LEASE_TTL", "soon")
    code, _, err = run("tenant", "list")
    _check_one_line(code, err, 2, "WAFLEET_LEASE_TTL:")


def test_schema_not_migrated(env: Path) -> None:
    code, _, err = run("tenant", "list")
    _check_one_line(code, err, 1, "run `wafleet db upgrade`")


def test_keys_generate_and_rotate(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("db", "upgrade")[0] == 0
    assert run("tenant", "create", "salon")[0] == 0
    assert run("instance", "create", "--tenant", "salon", "--name", "a")[0] == 0
    code, new_key, _ = run("keys", "generate")
    assert code == 0
    code, _, err = run("keys", "rotate")
    _check_one_line(code, err, 1, "WAFLEET_PREVIOUS_MASTER_KEYS")
    monkeypatch.setenv("WAFLEET_MASTER_KEY", new_key.strip())
    code, _, err = run("instance", "create", "--tenant", "salon", "--name", "b")
    assert code == 0, err  # new instances work under the new key even before rotation
    monkeypatch.setenv("WAFLEET_PREVIOUS_MASTER_KEYS", KEY)
    code, out, _ = run("keys", "rotate")
    assert code == 0
    assert "re-wrapped 1 instance data keys" in out


def test_lifecycle_on_postgres(
    env: Path, pg_server: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = create_database(pg_server)
    try:
        monkeypatch.setenv("WAFLEET_DATABASE_URL", url)
        assert run("db", "upgrade")[0] == 0
        assert run("tenant", "create", "clinic")[0] == 0
        code, _, err = run("tenant", "create", "clinic")
        _check_one_line(code, err, 1, "exists")
        assert (
            run(
                "instance", "create", "--tenant", "clinic", "--name", "n", "--phone", "447700900123"
            )[0]
            == 0
        )
        code, _, err = run(
            "instance", "create", "--tenant", "clinic", "--name", "m", "--phone", "447700900123"
        )
        _check_one_line(code, err, 1, "already owns this phone number")
        assert run("db", "downgrade", "base")[0] == 0
        assert "base (empty)" in run("db", "current")[1]
    finally:
        drop_database(pg_server, url)


def test_unreachable_database(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAFLEET_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    code, _, err = run("tenant", "list")
    _check_one_line(code, err, 1, "cannot reach the database")
