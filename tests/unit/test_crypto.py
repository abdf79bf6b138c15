"""Encryption at rest: format, keys, config walking, and the documented test vector (Python and,
when installed, Node's node:crypto)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.crypto import (
    DecryptError,
    KeyFormatError,
    Keyring,
    decrypt_config,
    encrypt_config,
    generate_key,
    is_sensitive_key,
    key_id_of,
    parse_keys,
)
from dispatcher.errors import ConfigError
from dispatcher.settings import load_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "encryption.md"
K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def ring(*ids: str) -> Keyring:
    material = {"k1": K1, "k2": K2}
    return Keyring([(i, material[i]) for i in ids])


def doc_vector() -> dict[str, str]:
    text = DOC.read_text("utf-8")
    block = re.search(r"```text test-vector\n(.*?)```", text, re.S)
    assert block, "docs/encryption.md has no test-vector block"
    return dict(line.split(": ", 1) for line in block.group(1).strip().splitlines())


def doc_node_code() -> str:
    block = re.search(r"```js\n(.*?)```", DOC.read_text("utf-8"), re.S)
    assert block, "docs/encryption.md has no js block"
    return block.group(1)


def test_documented_vector_encrypts_and_decrypts() -> None:
    v = doc_vector()
    keyring = Keyring(parse_keys(f"{v['key_id']}:{v['key_base64']}"))
    value = keyring.encrypt(v["plaintext"], nonce=bytes.fromhex(v["nonce_hex"]))
    assert value == v["value"]
    assert keyring.decrypt(v["value"]) == v["plaintext"]
    assert v["associated_data"] == v["value"].rsplit(":", 1)[0]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_documented_node_code_reads_and_writes_the_vector(tmp_path: Path) -> None:
    v = doc_vector()
    (tmp_path / "enc.mjs").write_text(doc_node_code())
    (tmp_path / "check.mjs").write_text(
        'import { parseKeys, encrypt, decrypt } from "./enc.mjs";\n'
        f"const keys = parseKeys({v['key_id'] + ':' + v['key_base64']!r});\n"
        f"const value = {v['value']!r};\n"
        "console.log(JSON.stringify({\n"
        "  plain: decrypt(value, keys),\n"
        f"  same: encrypt(decrypt(value, keys), keys, Buffer.from({v['nonce_hex']!r}, 'hex')),\n"
        "  fresh: encrypt('hello from node', keys),\n"
        "  passthrough: decrypt('plain-value', keys),\n"
        "}));\n"
    )
    out = subprocess.run(
        ["node", str(tmp_path / "check.mjs")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    import json

    got = json.loads(out)
    assert got["plain"] == v["plaintext"]
    assert got["same"] == v["value"]
    assert got["passthrough"] == "plain-value"
    keyring = Keyring(parse_keys(f"{v['key_id']}:{v['key_base64']}"))
    assert keyring.decrypt(got["fresh"]) == "hello from node"  # Node writes, Python reads


def test_format_and_random_nonce() -> None:
    k = ring("k1")
    a, b = k.encrypt("secret"), k.encrypt("secret")
    assert a != b
    for value in (a, b):
        assert re.fullmatch(r"enc:v1:k1:[A-Za-z0-9_-]+", value)
        raw = base64.urlsafe_b64decode(value.split(":")[3] + "==")
        assert len(raw) == 12 + len(b"secret") + 16
        assert k.decrypt(value) == "secret"
    assert key_id_of(a) == "k1" and key_id_of("plain") is None


@given(st.text())
def test_round_trip_any_text(text: str) -> None:
    k = ring("k1")
    assert k.decrypt(k.encrypt(text)) == text


def test_plaintext_is_read_as_is() -> None:
    assert ring("k1").decrypt("ya29.plain-token") == "ya29.plain-token"
    assert Keyring().decrypt("plain") == "plain"


def test_first_key_encrypts_all_decrypt() -> None:
    old = ring("k1").encrypt("v")
    k = ring("k2", "k1")
    assert k.primary == "k2" and key_id_of(k.encrypt("v")) == "k2"
    assert k.decrypt(old) == "v"
    assert k.needs_reencryption(old, rotate=True)
    assert not k.needs_reencryption(old, rotate=False)
    assert k.needs_reencryption("plain", rotate=False)
    assert not k.needs_reencryption(k.encrypt("v"), rotate=True)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda v: v.replace(":k1:", ":k9:"), "key id 'k9', which is not configured"),
        (lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"), "failed authentication"),
        (lambda v: v.replace("enc:v1:", "enc:v2:"), "unsupported"),
        (lambda v: v.split(":")[0] + ":v1:k1:!!!", "not base64url"),
        (lambda v: "enc:v1:k1:AAAA", "too short"),
    ],
    ids=["unknown-key", "tampered", "version", "not-base64", "short"],
)
def test_undecryptable_values_raise_clear_errors(mangle, message) -> None:
    k = ring("k1")
    with pytest.raises(DecryptError, match=re.escape(message)):
        k.decrypt(mangle(k.encrypt("secret")))


def test_wrong_key_under_same_id_fails_authentication() -> None:
    value = ring("k1").encrypt("secret")
    other = Keyring([("k1", K2)])
    with pytest.raises(DecryptError, match="failed authentication"):
        other.decrypt(value)


def test_key_id_is_authenticated() -> None:
    """Renaming the key id in the text (even to a key with the same material) fails."""
    value = ring("k1").encrypt("secret")
    same_material = Keyring([("k1", K1), ("k3", K1)])
    with pytest.raises(DecryptError, match="failed authentication"):
        same_material.decrypt(value.replace(":k1:", ":k3:"))


def test_parse_keys_formats_and_errors() -> None:
    b64 = base64.b64encode(K1).decode()
    url = base64.urlsafe_b64encode(K2).decode().rstrip("=")
    keys = parse_keys(f" a:{b64} ,\nb.2_x-y:{url}\n# comment\n")
    assert keys == [("a", K1), ("b.2_x-y", K2)]
    with pytest.raises(KeyFormatError, match="entry 1"):
        parse_keys(b64)
    with pytest.raises(KeyFormatError, match="16 bytes"):
        parse_keys("k:" + base64.b64encode(b"x" * 16).decode())
    with pytest.raises(KeyFormatError, match="not valid base64"):
        parse_keys("k:@@@@")
    with pytest.raises(KeyFormatError, match="twice"):
        Keyring(parse_keys(f"k:{b64},k:{b64}"))
    with pytest.raises(KeyFormatError) as err:
        parse_keys(f"bad id:{b64}")
    assert b64 not in str(err.value)


def test_generate_key() -> None:
    entry = generate_key("k20250101")
    [(kid, key)] = parse_keys(entry)
    assert kid == "k20250101" and len(key) == 32
    assert generate_key("x") != generate_key("x")
    with pytest.raises(KeyFormatError):
        generate_key("has:colon")


def test_keyring_repr_has_no_material() -> None:
    k = ring("k1")
    assert "k1" in repr(k) and base64.b64encode(K1).decode() not in repr(k)


def test_sensitive_keys() -> None:
    for name in (
        "client_secret",
        "API_KEY",
        "password",
        "zoom_webhook_secret",
        "bot_token",
        "private_key",
        "sendgrid_api_key",
    ):
        assert is_sensitive_key(name), name
    for name in ("client_id", "token_url", "health_check_url", "tenant_id", "scope"):
        assert not is_sensitive_key(name), name


def test_config_encrypt_walks_nested_and_is_idempotent() -> None:
    k = ring("k1")
    config = {
        "client_id": "abc",
        "client_secret": "s3cret",
        "token_url": "https://example.com/token",
        "nested": {"api_key": "key-1", "region": "eu"},
        "credentials": [{"password": "pw"}],
        "private_key": {"pem": "-----BEGIN..."},
        "timeout": 5,
        "api_token": None,
    }
    encrypted, n = encrypt_config(config, k)
    assert n == 4
    assert encrypted["client_id"] == "abc" and encrypted["nested"]["region"] == "eu"
    assert encrypted["timeout"] == 5 and encrypted["api_token"] is None
    for value in (
        encrypted["client_secret"],
        encrypted["nested"]["api_key"],
        encrypted["credentials"][0]["password"],
        encrypted["private_key"]["pem"],
    ):
        assert value.startswith("enc:v1:k1:")
    assert encrypt_config(encrypted, k) == (encrypted, 0)
    assert decrypt_config(encrypted, k) == config
    # rotation re-encrypts values under other keys, wherever they are
    rotated, n = encrypt_config(encrypted, ring("k2", "k1"), rotate=True)
    assert n == 4 and key_id_of(rotated["client_secret"]) == "k2"
    assert decrypt_config(rotated, ring("k2")) == config


def test_decrypt_config_names_the_field() -> None:
    value = ring("k2").encrypt("x")
    with pytest.raises(DecryptError, match=r"integrations\.config\.nested\.client_secret"):
        decrypt_config({"nested": {"client_secret": value}}, ring("k1"))


def test_settings_validate_keys(tmp_path: Path) -> None:
    b64 = base64.b64encode(K1).decode()
    with pytest.raises(ConfigError, match="DISPATCHER_ENCRYPTION_KEYS"):
        load_settings(encryption_keys="k1:short")
    keyfile = tmp_path / "keys"
    keyfile.write_text("broken\n")
    with pytest.raises(ConfigError, match="DISPATCHER_ENCRYPTION_KEYS_FILE"):
        load_settings(encryption_keys_file=str(keyfile))
    keyfile.write_text(f"# keys\nk2:{base64.b64encode(K2).decode()}\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "encryption-keys").write_text(f"k3:{b64}")
    settings = load_settings(
        encryption_keys=f"k1:{b64}",
        encryption_keys_file=str(keyfile),
        credentials_directory=str(creds),
    )
    from dispatcher.integrations.worker import load_keyring

    keyring = load_keyring(settings)
    assert keyring.key_ids == ["k1", "k2", "k3"] and keyring.primary == "k1"
    assert b64 not in str(settings.summary())
    # the same key id from two sources stops the start, naming the source
    (creds / "encryption-keys").write_text(f"k1:{base64.b64encode(K2).decode()}")
    with pytest.raises(ConfigError, match=r"CREDENTIALS_DIRECTORY.*'k1' is configured twice"):
        load_settings(encryption_keys=f"k1:{b64}", credentials_directory=str(creds))
    (creds / "encryption-keys").write_text("garbage")
    with pytest.raises(ConfigError, match="credential encryption-keys: entry 1"):
        load_settings(credentials_directory=str(creds))
