"""Encryption at rest in the database: ciphertext only, plaintext migration, key rotation, a
wrong key isolated to its integration, and no secret in any column or log line."""

from __future__ import annotations

import base64
import json
import re

import hostdb
from support.integrations import (
    KEY_1,
    KEY_2,
    KEYS_1,
    KEYS_2_1,
    create_integration,
    create_token,
    health_logs,
    integration,
    key_entry,
    run_cli,
    token,
    wait_until,
)
from support.oauth_server import InvalidGrant, OAuthServer, Proceed

from dispatcher.crypto import Keyring, key_id_of, parse_keys

pytest_plugins = ("support.integration_fixtures",)


async def every_text_value(conn) -> list[tuple[str, str]]:
    """(table, row as JSON text) for every row of every table of ours and the host's."""
    cur = await conn.execute(
        "SELECT table_schema || '.' || table_name AS t FROM information_schema.tables "
        "WHERE table_schema IN ('public', 'dispatcher') AND table_type = 'BASE TABLE'"
    )
    out = []
    for r in await cur.fetchall():
        rows = await conn.execute(f"SELECT to_jsonb(x)::text AS j FROM {r['t']} x")
        out += [(r["t"], row["j"]) for row in await rows.fetchall()]
    return out


async def plaintext_org(conn, oauth: OAuthServer, n: int, *, expires_in: float = 3600):
    """n integrations written by the host in plaintext (config secrets and tokens)."""
    org = await hostdb.create_org(conn)
    made = []
    for i in range(n):
        oauth.add_client(f"client-{i}", f"client-secret-{i}-xyz", "client_secret_basic")
        access, refresh = oauth.issue(f"client-{i}")
        integ = await create_integration(
            conn,
            org,
            provider="zoom",
            name=f"Zoom {i}",
            config={
                "client_id": f"client-{i}",
                "client_secret": f"client-secret-{i}-xyz",
                "token_url": oauth.token_url,
                "token_auth_method": "client_secret_basic",
                "extra": {"api_key": f"api-key-{i}-abcdef"},
            },
        )
        tok = await create_token(
            conn, org, integ, access=access, refresh=refresh, provider="zoom", expires_in=expires_in
        )
        made.append((integ, tok, access, refresh))
    return org, made


async def test_secrets_encrypt_migrates_plaintext_in_batches_idempotently(conn, db_dsn, oauth):
    _, made = await plaintext_org(conn, oauth, 5)
    code, out, err = await run_cli(db_dsn, "secrets", "encrypt", "--batch", "2", keys=KEYS_1)
    assert code == 0, err
    assert "encrypted 20 value(s) in 10 row(s) under key 'k1'" in out  # 2 per config, 2 per token
    keyring = Keyring(parse_keys(KEYS_1))
    for i, (integ, tok, access, refresh) in enumerate(made):
        config = (await integration(conn, integ))["config"]
        assert config["client_id"] == f"client-{i}"  # not sensitive: stays readable
        assert config["token_url"] == oauth.token_url
        assert key_id_of(config["client_secret"]) == "k1"
        assert keyring.decrypt(config["client_secret"]) == f"client-secret-{i}-xyz"
        assert keyring.decrypt(config["extra"]["api_key"]) == f"api-key-{i}-abcdef"
        row = await token(conn, tok)
        assert keyring.decrypt(row["access_token"]) == access
        assert keyring.decrypt(row["refresh_token"]) == refresh
    code, out, _ = await run_cli(db_dsn, "secrets", "encrypt", keys=KEYS_1)
    assert code == 0 and "encrypted 0 value(s) in 0 row(s)" in out
    code, _, err = await run_cli(db_dsn, "secrets", "encrypt")
    assert code == 3 and "DISPATCHER_ENCRYPTION_KEYS" in err


async def test_key_rotation_reencrypts_under_newest_key(conn, db_dsn, make_worker, oauth):
    _, made = await plaintext_org(conn, oauth, 3, expires_in=10)
    assert (await run_cli(db_dsn, "secrets", "encrypt", keys=KEYS_1))[0] == 0
    # new key first; the daemon writes under k2 and still reads k1
    worker = await make_worker(encryption_keys=KEYS_2_1)
    _integ0, tok0, _, _ = made[0]
    await conn.execute(
        "UPDATE integration_oauth_tokens SET expires_at = now() + interval '1 day' WHERE id <> %s",
        (tok0,),
    )
    await worker.run_once()
    row = await token(conn, tok0)
    assert key_id_of(row["access_token"]) == "k2" and key_id_of(row["refresh_token"]) == "k2"
    assert key_id_of((await token(conn, made[1][1]))["access_token"]) == "k1"

    code, out, err = await run_cli(db_dsn, "keys", "rotate", "--batch", "1", keys=KEYS_2_1)
    assert code == 0, err
    assert "under key 'k2'" in out
    only_k2 = Keyring(parse_keys(key_entry("k2", KEY_2)))
    for integ, tok, access, refresh in made[1:]:
        config = (await integration(conn, integ))["config"]
        assert key_id_of(config["client_secret"]) == "k2"
        assert key_id_of(config["extra"]["api_key"]) == "k2"
        row = await token(conn, tok)
        assert only_k2.decrypt(row["access_token"]) == access
        assert only_k2.decrypt(row["refresh_token"]) == refresh
    code, out, _ = await run_cli(db_dsn, "keys", "rotate", keys=KEYS_2_1)
    assert "re-encrypted 0 value(s)" in out
    # the old key can go: the daemon still refreshes everything with k2 alone
    await conn.execute("UPDATE integration_oauth_tokens SET expires_at = now()")
    worker2 = await make_worker(encryption_keys=key_entry("k2", KEY_2))
    assert (await worker2.refresh_due()) == 3
    assert all(r.outcome == "ok" for r in oauth.token_requests)


async def test_wrong_key_is_isolated_to_its_integration(conn, db_dsn, make_worker, oauth):
    org, made = await plaintext_org(conn, oauth, 1, expires_in=10)
    good_integ, good_tok, _, _ = made[0]
    foreign = Keyring([("kx", bytes(32))])
    oauth.add_client("c-bad", "bad-client-secret")
    access, refresh = oauth.issue("c-bad")
    bad_config = {
        "client_id": "c-bad",
        "client_secret": foreign.encrypt("bad-client-secret"),
        "token_url": oauth.token_url,
        "health_check_url": oauth.url("/health/bad"),
    }
    bad = await create_integration(conn, org, config=bad_config)
    bad_tok = await create_token(conn, org, bad, access=access, refresh=refresh, expires_in=10)
    mine = Keyring(parse_keys(KEYS_1))
    corrupted_value = mine.encrypt(refresh)[:-4] + "AAAA"
    corrupt = await create_integration(
        conn, org, config={"client_id": "c-bad", "token_url": oauth.token_url}
    )
    corrupt_tok = await create_token(
        conn, org, corrupt, access="at-c", refresh=corrupted_value, expires_in=10
    )

    worker = await make_worker()
    await worker.run_once()
    assert (await token(conn, good_tok))["last_refreshed_at"] is not None
    row = await integration(conn, bad)
    assert row["status"] == "error"
    assert row["error_message"] == (
        "cannot decrypt integrations.config.client_secret: encrypted with key id 'kx', "
        "which is not configured (configured: k1)"
    )
    assert row["config"] == bad_config  # never overwritten
    assert (await token(conn, bad_tok))["refresh_token"] == refresh
    row = await integration(conn, corrupt)
    assert row["status"] == "error"
    assert row["error_message"].startswith(
        "cannot decrypt integration_oauth_tokens.refresh_token: value under key 'k1' failed "
        "authentication"
    )
    assert (await token(conn, corrupt_tok))["refresh_token"] == corrupted_value
    assert [r.refresh_token for r in oauth.token_requests] == [made[0][3]]
    assert (await integration(conn, good_integ))["status"] == "active"
    # the health check says the same, and only for that integration
    rec = await worker.check(bad, "scheduled")
    assert rec.result.error_code == "decrypt_failed"
    log = (await health_logs(conn, bad))[-1]
    assert log["status"] == "failure" and "'kx'" in log["error_message"]
    # the CLI reports it and leaves it alone
    code, _, err = await run_cli(db_dsn, "keys", "rotate", keys=KEYS_1)
    assert code == 1 and f"integration {bad}" in err and "left unchanged" in err
    assert (await integration(conn, bad))["config"] == bad_config
    # configure the key: the next refresh attempt works and the health check recovers
    oauth.script_health("/health/bad")
    fixed = await make_worker(encryption_keys=f"{KEYS_1},kx:{base64.b64encode(bytes(32)).decode()}")

    async def bad_refreshed():
        await fixed.refresh_due()
        return (await token(conn, bad_tok))["last_refreshed_at"]

    await wait_until(bad_refreshed, what="refresh once the key is configured")
    rec = await fixed.check(bad, "scheduled")
    assert rec.result.status == "success", rec.result
    row = await integration(conn, bad)
    assert row["status"] == "active" and row["error_message"] is None


async def test_no_secret_in_any_column_or_log_line(conn, db_dsn, make_worker, oauth, captured_logs):
    _org, made = await plaintext_org(conn, oauth, 3, expires_in=10)
    for integ, _, _, _ in made:
        await conn.execute(
            "UPDATE integrations SET config = config || jsonb_build_object("
            "'health_check_url', %s::text, 'userinfo_url', %s::text) WHERE id = %s",
            (oauth.url("/health/x"), oauth.url("/userinfo"), integ),
        )
    code, out, err = await run_cli(db_dsn, "secrets", "encrypt", keys=KEYS_1)
    assert code == 0, err
    cli_output = out + err
    oauth.script_token(InvalidGrant("revoked"), Proceed())
    worker = await make_worker()
    await worker.run_once()  # one invalid_grant, two refreshes (rotated)
    await conn.execute(
        "UPDATE integration_oauth_tokens SET expires_at = now() WHERE status = 'active'"
    )
    await worker.refresh_due()  # rotate again
    for integ, _, _, _ in made:
        await worker.check(integ, "scheduled")
    for args in (("integrations", "list", "--json"), ("integrations", "check", str(made[1][0]))):
        code, out, err = await run_cli(db_dsn, *args, keys=KEYS_1)
        cli_output += out + err

    secrets = set(oauth.issued)
    secrets |= {f"client-secret-{i}-xyz" for i in range(3)}
    secrets |= {f"api-key-{i}-abcdef" for i in range(3)}
    secrets |= {base64.b64encode(KEY_1).decode(), base64.b64encode(KEY_2).decode(), KEYS_1}
    assert len(oauth.token_requests) >= 4
    assert sum(1 for r in oauth.token_requests if r.outcome == "ok") >= 3
    logs = captured_logs.getvalue()
    assert "token_refreshed" in logs and "integration_checked" in logs  # the scan saw real logs
    rows = await every_text_value(conn)
    assert any(t == "public.integration_oauth_tokens" for t, _ in rows)
    for secret in secrets:
        assert secret not in logs, f"a secret appears in the logs: {secret[:6]}..."
        assert secret not in cli_output, f"a secret appears in CLI output: {secret[:6]}..."
        for table, text in rows:
            assert secret not in text, f"a secret appears in {table}: {secret[:6]}..."
    # every token value in the table is ciphertext
    cur = await conn.execute("SELECT access_token, refresh_token FROM integration_oauth_tokens")
    for r in await cur.fetchall():
        assert r["access_token"].startswith("enc:v1:k1:")
        assert r["refresh_token"].startswith("enc:v1:k1:")
    lines = [json.loads(x) for x in logs.splitlines() if x.startswith("{")]
    assert any(x["event"] == "token_expired" for x in lines)


async def test_keys_generate_prints_a_usable_key(db_dsn):
    code, out, err = await run_cli(db_dsn, "keys", "generate", "--id", "k2026")
    assert code == 0, err
    [(kid, key)] = parse_keys(out.strip())
    assert kid == "k2026" and len(key) == 32
    code, out, _ = await run_cli(db_dsn, "keys", "generate")
    assert code == 0 and re.match(r"k\d{8}:", out) and parse_keys(out.strip())
    code, _, err = await run_cli(db_dsn, "keys", "generate", "--id", "bad:id")
    assert code == 2 and "key id" in err
