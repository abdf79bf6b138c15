"""The documentation stays true: every setting documented, links resolve, code samples work."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from dispatcher.request import build_request
from dispatcher.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
OWN_DOCS = [
    "README.md",
    "docs/architecture.md",
    "docs/operations.md",
    "docs/receivers.md",
    "systemd/README.md",
    "CHANGELOG.md",
]
SETTINGS = sorted(ENV_PREFIX + name.upper() for name in Settings.model_fields)


@pytest.mark.parametrize("variable", SETTINGS)
def test_every_setting_is_in_the_example_env_file(variable: str) -> None:
    text = (ROOT / "dispatcher.env.example").read_text()
    assert re.search(rf"^#?{variable}=", text, re.MULTILINE), f"{variable} missing"


@pytest.mark.parametrize("variable", SETTINGS)
def test_every_setting_is_in_the_readme_table(variable: str) -> None:
    text = (ROOT / "README.md").read_text()
    assert f"| `{variable}` |" in text, f"{variable} missing from README's configuration table"


def test_the_example_env_file_names_no_unknown_setting() -> None:
    text = (ROOT / "dispatcher.env.example").read_text()
    named = set(re.findall(rf"^#?({ENV_PREFIX}[A-Z0-9_]+)=", text, re.MULTILINE))
    assert named <= set(SETTINGS), f"not settings: {sorted(named - set(SETTINGS))}"


@pytest.mark.parametrize("doc", OWN_DOCS)
def test_relative_links_resolve(doc: str) -> None:
    path = ROOT / doc
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    local = [t for t in targets if "://" not in t and not t.startswith("mailto:")]
    missing = [t for t in local if not (path.parent / t).exists()]
    assert missing == [], f"{doc} links to missing files: {missing}"


def _receiver_sample() -> Any:
    text = (ROOT / "docs" / "receivers.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/receivers.md", "exec"), namespace)
    return namespace["verify_request"]


def test_python_receiver_sample_accepts_what_the_dispatcher_sends() -> None:
    verify_request = _receiver_sample()
    secret, old = secrets.token_hex(32), secrets.token_hex(32)
    body = b'{"id": "e1", "data": {"n": 1}, "type": "order.paid", "event": "order.paid"}'
    for signing in ([secret], [secret, old]):  # plain, and during a rotation
        sent = build_request(
            delivery_id="d1", event_type="order.paid", body=body, secrets=signing, headers={}
        )
        assert verify_request(sent.headers, body, secret)["type"] == "order.paid"


@pytest.mark.parametrize("tamper", ["body", "secret", "intime"])
def test_python_receiver_sample_rejects_forgeries(tamper: str) -> None:
    verify_request = _receiver_sample()
    secret = secrets.token_hex(32)
    body = b'{"id": "e1"}'
    headers = build_request(
        delivery_id="d1", event_type="x.y", body=body, secrets=[secret], headers={}
    ).headers
    if tamper == "body":
        body = b'{"id": "e2"}'
    elif tamper == "secret":
        secret = secrets.token_hex(32)
    else:
        headers["X-InTime-Signature"] = "sha256=" + "0" * 64
    with pytest.raises(WebhookVerificationError):
        verify_request(headers, body, secret)
