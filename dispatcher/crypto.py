"""Encryption at rest for integration secrets: AES-256-GCM under a key id, as self-describing text.

A value is stored as ``enc:v1:<key id>:<base64url(nonce || ciphertext || tag)>`` (unpadded
base64url; a 12-byte random nonce; a 16-byte tag; associated data = the ASCII header
``enc:v1:<key id>``). docs/encryption.md documents the format exactly, with a test vector and
the Node (node:crypto) code the host's TypeScript uses to read and write it.

Keys are ``<key id>:<base64 of 32 bytes>`` entries, comma or newline separated; the first one
encrypts, all of them decrypt. A value that does not start with ``enc:`` is plaintext (what the
host writes today) and is read as is.

Pure: no I/O except ``Keyring.from_sources`` reading key files.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "CREDENTIAL_NAME",
    "PREFIX",
    "SENSITIVE_KEYS",
    "SENSITIVE_SUFFIXES",
    "DecryptError",
    "KeyFormatError",
    "Keyring",
    "decrypt_config",
    "encrypt_config",
    "generate_key",
    "is_encrypted",
    "is_sensitive_key",
    "key_id_of",
    "parse_keys",
]

PREFIX = "enc:"
VERSION = "v1"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
CREDENTIAL_NAME = "encryption-keys"  # systemd LoadCredential=encryption-keys:/path

_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")

# Keys of integrations.config whose string values are secrets (compared lower-case), plus any
# key ending with one of SENSITIVE_SUFFIXES. Nested objects are walked.
SENSITIVE_KEYS = frozenset(
    {
        "client_secret",
        "api_key",
        "apikey",
        "api_secret",
        "api_token",
        "secret",
        "secret_key",
        "password",
        "access_token",
        "refresh_token",
        "auth_token",
        "token",
        "private_key",
        "signing_secret",
        "webhook_secret",
        "app_secret",
        "consumer_secret",
        "client_assertion",
    }
)
SENSITIVE_SUFFIXES = ("_secret", "_password", "_token", "_api_key", "_apikey", "_private_key")


class KeyFormatError(ValueError):
    """A configured key is malformed (message names the entry, never the key material)."""


class DecryptError(Exception):
    """A stored value could not be decrypted: unknown key id, wrong key or corrupted text."""


def is_encrypted(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def key_id_of(value: str) -> str | None:
    """The key id of an ``enc:v1:`` value, or None for plaintext or another version."""
    parts = value.split(":", 3)
    if len(parts) == 4 and parts[0] + ":" == PREFIX and parts[1] == VERSION:
        return parts[2]
    return None


def _b64decode_any(text: str) -> bytes:
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    alt = b"-_" if ("-" in text or "_" in text) else None
    return base64.b64decode(padded, altchars=alt, validate=True)


def parse_keys(text: str, *, source: str = "DISPATCHER_ENCRYPTION_KEYS") -> list[tuple[str, bytes]]:
    """``id:base64,id:base64`` (commas or newlines; ``#`` comments) -> [(id, 32-byte key)]."""
    keys: list[tuple[str, bytes]] = []
    entries = [e.strip() for line in text.splitlines() for e in line.split("#", 1)[0].split(",")]
    for n, entry in enumerate((e for e in entries if e), start=1):
        kid, sep, material = entry.partition(":")
        kid = kid.strip()
        if not sep or not _KEY_ID.match(kid):
            raise KeyFormatError(
                f"{source}: entry {n} is not '<key id>:<base64 key>' with a key id of 1-32 "
                "characters from A-Z a-z 0-9 . _ -"
            )
        try:
            key = _b64decode_any(material)
        except (binascii.Error, ValueError):
            raise KeyFormatError(f"{source}: key {kid!r} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise KeyFormatError(
                f"{source}: key {kid!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES} "
                "(generate one with `dispatcher keys generate`)"
            )
        keys.append((kid, key))
    return keys


def generate_key(key_id: str) -> str:
    """A new ``<key id>:<base64 key>`` entry for DISPATCHER_ENCRYPTION_KEYS."""
    if not _KEY_ID.match(key_id):
        raise KeyFormatError(f"key id {key_id!r} must be 1-32 characters from A-Z a-z 0-9 . _ -")
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    aead: AESGCM


class Keyring:
    """The configured keys: the first encrypts, every one decrypts. Never prints key material."""

    def __init__(self, keys: Iterable[tuple[str, bytes]] = ()) -> None:
        self._keys: dict[str, _Key] = {}
        self._primary: str | None = None
        for kid, material in keys:
            if kid in self._keys:
                raise KeyFormatError(f"key id {kid!r} is configured twice")
            self._keys[kid] = _Key(kid, AESGCM(material))
            if self._primary is None:
                self._primary = kid

    def __repr__(self) -> str:
        return f"Keyring(ids={self.key_ids!r}, primary={self._primary!r})"

    @classmethod
    def from_sources(
        cls,
        keys: str | None = None,
        key_file: str | None = None,
        credentials_directory: str | None = None,
    ) -> Keyring:
        """Keys from the setting, then the key file, then the systemd credential, in that order.

        Missing files are an error for ``key_file`` and ignored for the credentials directory
        (the credential is optional there).
        """
        found: list[tuple[str, bytes]] = []
        if keys:
            found += parse_keys(keys)
        if key_file:
            found += parse_keys(_read(Path(key_file)), source="DISPATCHER_ENCRYPTION_KEYS_FILE")
        if credentials_directory:
            path = Path(credentials_directory) / CREDENTIAL_NAME
            if path.exists():
                found += parse_keys(_read(path), source=f"credential {CREDENTIAL_NAME}")
        return cls(found)

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    @property
    def primary(self) -> str | None:
        """The id of the key that encrypts (None: no key, values are written as plaintext)."""
        return self._primary

    def __bool__(self) -> bool:
        return self._primary is not None

    def encrypt(
        self, plaintext: str, *, key_id: str | None = None, nonce: bytes | None = None
    ) -> str:
        """Encrypt under the primary key (or ``key_id``). ``nonce`` is for test vectors only."""
        kid = key_id or self._primary
        if kid is None or kid not in self._keys:
            raise KeyFormatError("no encryption key configured (DISPATCHER_ENCRYPTION_KEYS)")
        nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
        header = f"{PREFIX}{VERSION}:{kid}"
        sealed = self._keys[kid].aead.encrypt(nonce, plaintext.encode("utf-8"), header.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{header}:{body}"

    def decrypt(self, value: str) -> str:
        """Plaintext of a stored value; plaintext values come back unchanged. DecryptError."""
        if not value.startswith(PREFIX):
            return value
        parts = value.split(":", 3)
        if len(parts) != 4 or parts[1] != VERSION:
            raise DecryptError(
                f"unsupported encrypted value format {':'.join(parts[:2])!r} (expected enc:v1)"
            )
        kid, body = parts[2], parts[3]
        key = self._keys.get(kid)
        if key is None:
            known = ", ".join(self._keys) or "none"
            raise DecryptError(
                f"encrypted with key id {kid!r}, which is not configured (configured: {known})"
            )
        try:
            raw = _b64decode_any(body)
        except (binascii.Error, ValueError):
            raise DecryptError(f"corrupted value under key {kid!r}: not base64url") from None
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise DecryptError(f"corrupted value under key {kid!r}: too short")
        header = f"{PREFIX}{VERSION}:{kid}".encode()
        try:
            plain = key.aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], header)
        except InvalidTag:
            raise DecryptError(
                f"value under key {kid!r} failed authentication (wrong key material for that "
                "id, or the value was altered)"
            ) from None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptError(f"value under key {kid!r} is not UTF-8 text") from None

    def seal(self, plaintext: str | None) -> str | None:
        """Encrypt when a key is configured; otherwise the plaintext (host-compatible)."""
        if plaintext is None or not self:
            return plaintext
        return self.encrypt(plaintext)

    def needs_reencryption(self, value: object, *, rotate: bool) -> bool:
        """Plaintext always needs it (given a key); with ``rotate``, values under other keys too."""
        if not isinstance(value, str) or not value or not self:
            return False
        if not is_encrypted(value):
            return True
        return rotate and key_id_of(value) != self._primary


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except OSError as exc:
        raise KeyFormatError(f"cannot read key file {path}: {exc.strerror or exc}") from None


def is_sensitive_key(name: str) -> bool:
    lowered = name.lower()
    return lowered in SENSITIVE_KEYS or lowered.endswith(SENSITIVE_SUFFIXES)


def decrypt_config(config: Any, keyring: Keyring, *, path: str = "config") -> Any:
    """A copy of ``config`` with every encrypted string decrypted. DecryptError names the key."""
    if isinstance(config, Mapping):
        return {k: decrypt_config(v, keyring, path=f"{path}.{k}") for k, v in config.items()}
    if isinstance(config, list):
        return [decrypt_config(v, keyring, path=f"{path}[{i}]") for i, v in enumerate(config)]
    if is_encrypted(config):
        try:
            return keyring.decrypt(config)
        except DecryptError as exc:
            raise DecryptError(f"cannot decrypt integrations.{path}: {exc}") from None
    return config


def encrypt_config(
    config: Any, keyring: Keyring, *, rotate: bool = False, sensitive: bool = False
) -> tuple[Any, int]:
    """(copy of config with sensitive values (re-)encrypted, how many values changed).

    Plaintext values of sensitive keys are encrypted; with ``rotate``, any value encrypted under
    another key is re-encrypted under the primary key. DecryptError when one cannot be read.
    """
    if isinstance(config, Mapping):
        out: dict[str, Any] = {}
        changed = 0
        for k, v in config.items():
            out[k], n = encrypt_config(
                v, keyring, rotate=rotate, sensitive=sensitive or is_sensitive_key(str(k))
            )
            changed += n
        return out, changed
    if isinstance(config, list):
        items = [encrypt_config(v, keyring, rotate=rotate, sensitive=sensitive) for v in config]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(config, str) and (sensitive or is_encrypted(config)):
        if keyring.needs_reencryption(config, rotate=rotate):
            return keyring.encrypt(keyring.decrypt(config)), 1
    return config, 0
