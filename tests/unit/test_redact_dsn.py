"""DSN redaction (issue 10 item 13): libpq's own parser decides what the password is, so no
form of connection string leaks it, or a tail of it, into the start-up line or an error."""

from __future__ import annotations

import pytest

from dispatcher.errors import ConfigError
from dispatcher.settings import Settings, dsn_secrets, redact_dsn

# (DSN, the secret values libpq reads from it)
ODD_FORMS = [
    ("host=db user=app password='pa\\'ss tail1'", ["pa'ss tail1"]),
    ("host=db password = 'two words tail2' user=app", ["two words tail2"]),
    ("password=plain-tail3 host=db", ["plain-tail3"]),
    ("host=db password='back\\\\slash tail4'", ["back\\slash tail4"]),
    ("postgresql://app:p%40ss%20tail5@db:5432/app", ["p@ss tail5"]),
    ("postgresql://app:colon:tail6@db/app", ["colon:tail6"]),
    ("postgresql://app@db/app?password=query-tail7", ["query-tail7"]),
    ("postgres://app:s3cret-tail8@[::1]:5432,db2:6543/app?sslmode=require", ["s3cret-tail8"]),
    ("postgresql:///app?host=/run/pg&password=sock-tail9", ["sock-tail9"]),
    ("host=db sslpassword='key tail10' passfile=/etc/pgpass", ["key tail10"]),
    ("postgresql://app:pw%27q%22tail11@db/app?sslpassword=sslp-tail12", ["pw'q\"tail11"]),
]


def _fragments(secret: str) -> list[str]:
    """The secret and its tails of 5+ characters (what a regex redaction used to leak)."""
    return [secret[i:] for i in range(len(secret) - 4)]


@pytest.mark.parametrize(("dsn", "secrets"), ODD_FORMS, ids=[d for d, _ in ODD_FORMS])
def test_redacted_dsn_never_shows_a_secret_or_its_tail(dsn: str, secrets: list[str]) -> None:
    shown = redact_dsn(dsn)
    for secret in secrets:
        for fragment in _fragments(secret):
            assert fragment not in shown, (dsn, shown)
    assert "***" in shown
    summary = Settings(database_url=dsn).summary()["database_url"]
    assert summary == shown


@pytest.mark.parametrize(("dsn", "secrets"), ODD_FORMS, ids=[d for d, _ in ODD_FORMS])
def test_secret_values_are_those_libpq_reads(dsn: str, secrets: list[str]) -> None:
    assert secrets[0] in dsn_secrets(dsn)


def test_redacted_dsn_keeps_what_helps_and_its_form() -> None:
    assert redact_dsn("postgresql://app:pw@127.0.0.1:5555/app") == (
        "postgresql://app:***@127.0.0.1:5555/app"
    )
    shown = redact_dsn("host=db port=5432 user=app password=x dbname=app").split()
    assert sorted(shown) == ["dbname=app", "host=db", "password=***", "port=5432", "user=app"]
    assert redact_dsn("postgresql://app@db/app") == "postgresql://app@db/app"
    uri = redact_dsn("postgresql:///app?host=/run/pg&password=x")
    assert "host=/run/pg" in uri and "password=***" in uri


def test_unparsable_dsn_is_not_shown_at_all() -> None:
    dsn = "host=db password=unquoted words-tail13"
    assert "tail13" not in redact_dsn(dsn)
    with pytest.raises(ConfigError) as err:
        Settings(database_url=dsn).dsn()
    assert "tail13" not in str(err.value)
    assert "DISPATCHER_DATABASE_URL" in str(err.value)
