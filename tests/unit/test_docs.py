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
OWN_DOCS = sorted(
    {
        "README.md",
        "systemd/README.md",
        "CHANGELOG.md",
        *(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
    }
)
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
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


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub makes of a Markdown file's headings (lowercase, punctuation but `-`
    and `_` dropped, spaces to `-`, `-1`, `-2`... for repeats), plus explicit <a id/name>."""
    text = FENCED.sub("", path.read_text())
    found: set[str] = set(re.findall(r'<a (?:name|id)="([^"]+)"', text))
    repeats: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen = repeats.get(slug, 0)
        repeats[slug] = seen + 1
        found.add(slug if seen == 0 else f"{slug}-{seen}")
    return found


def _broken_links(path: Path) -> list[str]:
    """Relative links of ``path`` (outside code blocks) to a missing file or a missing heading
    anchor of a Markdown file (``other.md#anchor``, ``#anchor``)."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCED.sub("", path.read_text())):
        if "://" in target or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        linked = path.parent / file if file else path
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no such heading)")
    return broken


@pytest.mark.parametrize("doc", OWN_DOCS)
def test_relative_links_resolve(doc: str) -> None:
    broken = _broken_links(ROOT / doc)
    assert broken == [], f"{doc} has broken links: {broken}"


def test_broken_links_are_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text(
        "# Other page\n\n## Webhook states (v2)\n\n## Webhook states (v2)\n"
    )
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n\n```md\n[in code](nowhere.md)\n```\n"
        "[ok](other.md#webhook-states-v2) [ok](other.md#webhook-states-v2-1) [ok](#title)\n"
        "[bad](missing.md) [bad](other.md#webhook-states) [bad](#nothing) [web](https://x.test/y)\n"
    )
    assert _broken_links(doc) == [
        "missing.md (no such file)",
        "other.md#webhook-states (no such heading)",
        "#nothing (no such heading)",
    ]


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
        sent = build_request(delivery_id="d1", event_type="order.paid", body=body, secrets=signing)
        assert verify_request(sent.headers, body, secret)["type"] == "order.paid"


@pytest.mark.parametrize("tamper", ["body", "secret", "intime"])
def test_python_receiver_sample_rejects_forgeries(tamper: str) -> None:
    verify_request = _receiver_sample()
    secret = secrets.token_hex(32)
    body = b'{"id": "e1"}'
    headers = build_request(delivery_id="d1", event_type="x.y", body=body, secrets=[secret]).headers
    if tamper == "body":
        body = b'{"id": "e2"}'
    elif tamper == "secret":
        secret = secrets.token_hex(32)
    else:
        headers["X-InTime-Signature"] = "sha256=" + "0" * 64
    with pytest.raises(WebhookVerificationError):
        verify_request(headers, body, secret)
