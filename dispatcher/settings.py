"""One typed settings object, read from `DISPATCHER_*` environment variables.

Invalid values raise ConfigError with one line naming the variable. Secrets are
SecretStr and never printed: `summary()` is the redacted view that is logged.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any, Literal
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from dispatcher.dns import parse_dns_servers
from dispatcher.errors import ConfigError
from dispatcher.ssrf import IPNetwork, parse_networks

ENV_PREFIX = "DISPATCHER_"


class Settings(BaseSettings):
    """Every setting of the daemon. See dispatcher.env.example for the commented list."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DISPATCHER_DATABASE_URL", "DATABASE_URL"),
        description="libpq URL or key=value string of the PostgreSQL database",
    )
    allowed_target_networks: str = Field(
        default="",
        description="comma-separated CIDRs that webhooks may target despite the SSRF guard",
    )
    concurrency: int = Field(default=256, ge=1, le=4096, description="attempts in flight at once")
    per_webhook_concurrency: int = Field(
        default=32, ge=1, le=4096, description="attempts in flight to one webhook at once"
    )
    claim_ahead: int | None = Field(
        default=None,
        ge=0,
        le=4096,
        description="rows leased ahead per webhook held back by its cap, started as its "
        "attempts end (default: twice per_webhook_concurrency, none for a cap of 1; 0: off)",
    )
    shared_depth: int = Field(
        default=0,
        ge=0,
        le=4096,
        description="opt-in: attempts in flight to a webhook with a backlog while other "
        "webhooks without one (and with no more than this in flight) have started one within "
        "the last second (0, the default, or at least per_webhook_concurrency: off)",
    )
    batch_size: int = Field(default=64, ge=1, le=5000, description="rows claimed per query")
    poll_interval: float = Field(
        default=1.0, gt=0, le=300, description="seconds between polls when no NOTIFY arrives"
    )
    lease_seconds: float = Field(
        default=90.0, ge=5, le=3600, description="how long a claim is held before others retake it"
    )
    http_timeout: float = Field(default=30.0, gt=0, le=600, description="per-attempt timeout, s")
    shutdown_grace: float = Field(
        default=25.0, ge=0, le=3600, description="seconds in-flight attempts get on SIGTERM"
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="largest request body sent; larger fails"
    )
    response_body_chars: int = Field(
        default=10_000, ge=0, le=1_000_000, description="characters of a response body kept"
    )
    toast_compression: Literal["lz4", "server"] = Field(
        default="lz4",
        description=(
            "compression of the wide delivery columns the daemon writes: lz4 where the server "
            "supports it (less CPU than pglz), or the server's default_toast_compression"
        ),
    )
    dns_servers: str = Field(
        default="",
        description="comma-separated DNS servers (ip or ip:port) for webhook hosts; "
        "empty = /etc/resolv.conf",
    )
    dns_timeout: float = Field(
        default=5.0, gt=0, le=120, description="seconds one webhook host lookup may take"
    )
    dns_max_per_org: int = Field(
        default=8, ge=1, le=4096, description="webhook host lookups one org may have waiting"
    )
    dns_threads: int = Field(
        default=8, ge=1, le=256, description="lookup threads, only when aiodns is not installed"
    )
    migrate_lock_timeout_ms: int = Field(
        default=2000,
        ge=10,
        le=600_000,
        description="`migrate`: how long a statement may wait for a lock on a host table",
    )
    migrate_lock_attempts: int = Field(
        default=5, ge=1, le=100, description="`migrate`: tries of a migration whose locks are busy"
    )
    database_startup_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="seconds the start-up waits for PostgreSQL to answer before exit 4",
    )
    pool_min_size: int = Field(default=2, ge=1, le=100)
    pool_max_size: int = Field(default=8, ge=1, le=200)
    statement_timeout_ms: int = Field(default=30_000, ge=0)
    idle_in_transaction_timeout_ms: int = Field(default=60_000, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    metrics_address: str = Field(
        default="127.0.0.1:9464", description="host:port of /healthz /readyz /metrics; empty = off"
    )
    metrics_webhooks_top: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="/metrics: per-webhook health of the N webhooks with the largest backlog",
    )
    instance_name: str = Field(default_factory=socket.gethostname)
    lifecycle_events: bool = Field(
        default=True,
        description="publish webhook.disabled/recovered, delivery.dead_lettered (publish_event)",
    )
    delivery_retention_days: int = Field(
        default=30, ge=1, le=3650, description="days success/failed deliveries are kept"
    )
    retention_interval: float = Field(
        default=600.0, gt=0, le=86400, description="seconds between retention passes"
    )
    encryption_keys: SecretStr | None = Field(
        default=None, description="comma-separated key-id:base64 keys; the first encrypts"
    )
    # -- integrations (dispatcher/integrations/worker.py; docs/encryption.md) --------------------
    encryption_keys_file: str | None = Field(
        default=None, description="file of key-id:base64 keys (one a line), after the env keys"
    )
    credentials_directory: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DISPATCHER_CREDENTIALS_DIRECTORY", "CREDENTIALS_DIRECTORY"),
        description="systemd LoadCredential directory; its `encryption-keys` file adds keys",
    )
    integrations_enabled: bool = Field(default=True, description="run OAuth refresh/health checks")
    integrations_poll_seconds: float = Field(default=5.0, gt=0, le=300)
    integrations_concurrency: int = Field(default=8, ge=1, le=256)
    integrations_lease_seconds: float = Field(default=120.0, ge=1, le=3600)
    integrations_http_timeout: float = Field(default=30.0, gt=0, le=300)
    oauth_refresh_lead_seconds: float = Field(default=300.0, ge=0, le=86400)
    oauth_retry_base_seconds: float = Field(default=10.0, gt=0, le=3600)
    oauth_retry_max_seconds: float = Field(default=300.0, gt=0, le=86400)
    health_check_interval_seconds: float = Field(default=300.0, gt=0, le=86400)
    health_check_jitter: float = Field(default=0.1, ge=0, le=0.5)
    health_check_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    health_check_slow_ms: int = Field(default=3000, ge=1)
    health_unhealthy_after: int = Field(default=2, ge=1, le=100)
    health_log_retention_days: int = Field(default=30, ge=1, le=3650)
    health_log_purge_interval_seconds: float = Field(default=3600.0, gt=0)

    @field_validator("dns_servers")
    @classmethod
    def _dns_servers_parse(cls, value: str) -> str:
        parse_dns_servers(value)
        return value

    @field_validator("allowed_target_networks")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("encryption_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr | None) -> SecretStr | None:
        from dispatcher.crypto import Keyring, parse_keys

        if value is not None:
            Keyring(parse_keys(value.get_secret_value()))
        return value

    @field_validator("encryption_keys_file", "credentials_directory")
    @classmethod
    def _key_sources_parse(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The key file / credential parse, and together with the keys before them no key id
        is configured twice (fields validate in order, so `info.data` holds the earlier ones)."""
        from dispatcher.crypto import Keyring

        if value:
            keys = info.data.get("encryption_keys")
            secret = keys.get_secret_value() if keys else None
            if info.field_name == "credentials_directory":
                Keyring.from_sources(secret, info.data.get("encryption_keys_file"), value)
            else:
                Keyring.from_sources(secret, value)
        return value or None

    @field_validator("metrics_address")
    @classmethod
    def _address_parse(cls, value: str) -> str:
        if value.strip():
            split_address(value)
        return value.strip()

    @model_validator(mode="after")
    def _lease_outlives_attempt(self) -> Settings:
        if self.lease_seconds < self.http_timeout + 10:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds:g}) must exceed http_timeout "
                f"({self.http_timeout:g}) by at least 10 s, or a slow attempt could be "
                "taken over and sent twice"
            )
        return self

    @property
    def allowed_networks(self) -> list[IPNetwork]:
        return parse_networks(self.allowed_target_networks)

    def dsn(self) -> str:
        """The database URL, or ConfigError saying what to set."""
        if self.database_url is None or not self.database_url.get_secret_value().strip():
            raise ConfigError(
                "no database configured: set DISPATCHER_DATABASE_URL (or DATABASE_URL), "
                "e.g. postgresql://dispatcher@localhost:5432/app"
            )
        value = self.database_url.get_secret_value()
        try:
            conninfo_to_dict(value)
        except psycopg.ProgrammingError as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "unparsable"
            # libpq quotes fragments of the string (possibly a password's tail): not shown.
            detail = re.sub(
                r'"([^"]*)"',
                lambda m: m[0] if len(m[1]) <= 1 else '"..."',
                detail.replace(value, "..."),
            )
            raise ConfigError(
                "invalid setting DISPATCHER_DATABASE_URL: not a PostgreSQL connection string "
                f"({detail})"
            ) from None
        return value

    def summary(self) -> dict[str, Any]:
        """Redacted view for the start-up log line: no password, no key."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "database_url":
                value = redact_dsn(value.get_secret_value()) if value else None
            elif isinstance(value, SecretStr):
                value = "**********" if value.get_secret_value() else None
            out[name] = value
        return out


def split_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


# Connection parameters whose values are secrets (libpq's names).
_SECRET_PARAMS = frozenset({"password", "sslpassword"})
_UNPARSABLE = "(unparsable connection string: not shown)"


def redact_dsn(dsn: str) -> str:
    """A DSN with every secret replaced by ``***``, for logs and errors.

    Parsed by libpq's own parser (``psycopg.conninfo``), never by pattern: escaped quotes,
    spaces, %-encoding and ``?password=`` in a URI cannot leak a tail. The result is rebuilt
    from the parsed values (a URI stays a URI); a string libpq cannot parse is not shown.
    """
    try:
        params = conninfo_to_dict(dsn)
    except (psycopg.Error, ValueError, TypeError):
        return _UNPARSABLE
    for key in _SECRET_PARAMS & params.keys():
        params[key] = "***"
    text = dsn.strip()
    if not text.startswith(("postgresql://", "postgres://")):
        return make_conninfo("", **params)
    return _as_uri(text.split("://", 1)[0], params)


def dsn_secrets(dsn: str) -> list[str]:
    """The secret values in a DSN as libpq reads them (to scrub them from other text)."""
    try:
        params = conninfo_to_dict(dsn)
    except (psycopg.Error, ValueError, TypeError):
        return []
    return [str(params[k]) for k in sorted(_SECRET_PARAMS & params.keys()) if params[k]]


def _as_uri(scheme: str, params: dict[str, Any]) -> str:
    user = params.pop("user", None)
    password = params.pop("password", None)
    dbname = params.pop("dbname", None)
    hosts = str(params.pop("host", "") or "")
    ports = str(params.pop("port", "") or "")
    authority = ""
    if user is not None:
        authority = quote(str(user), safe="")
        if password is not None:
            authority += ":" + ("***" if password == "***" else quote(str(password), safe=""))
        authority += "@"
    elif password is not None:
        params["password"] = password
    if hosts.startswith("/") or ("," in ports and "," not in hosts):
        params["host"], params["port"] = hosts or None, ports or None
        hosts = ports = ""
    host_list = hosts.split(",") if hosts else []
    port_list = ports.split(",") if ports else []
    parts = []
    for i, host in enumerate(host_list or [""]):
        shown = f"[{host}]" if ":" in host else quote(host, safe=".-_~")
        port = port_list[i] if i < len(port_list) else (port_list[0] if port_list else "")
        parts.append(f"{shown}:{quote(port, safe='')}" if port else shown)
    uri = f"{scheme}://{authority}{','.join(parts)}"
    if dbname is not None:
        uri += "/" + quote(str(dbname), safe="")
    rest = {k: str(v) for k, v in params.items() if v is not None}
    if rest:
        uri += "?" + urlencode(rest, safe="*/", quote_via=quote)
    return uri


DATABASE_URL_CREDENTIAL = "database-url"


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; ConfigError with one line naming the variable when invalid.

    With no database URL in the environment, a `database-url` file in the systemd
    credentials directory (LoadCredential=database-url:...) provides it.
    """
    try:
        settings = Settings(**overrides)
        url_set = settings.database_url and settings.database_url.get_secret_value().strip()
        if not url_set and settings.credentials_directory:
            path = os.path.join(settings.credentials_directory, DATABASE_URL_CREDENTIAL)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as fh:
                    url = SecretStr(fh.read().strip())
                settings = settings.model_copy(update={"database_url": url})
        return settings
    except OSError as exc:
        raise ConfigError(f"cannot read the {DATABASE_URL_CREDENTIAL} credential: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        extra = f" ({len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        if not err["loc"]:  # a rule across settings: the message names them
            raise ConfigError(f"invalid settings: {msg}{extra}") from None
        field = str(err["loc"][0])
        env = field if field.isupper() else ENV_PREFIX + field.upper()
        raise ConfigError(f"invalid setting {env}: {msg}{extra}") from None
