"""Hypothesis fuzzing of what turns tenant-controlled data into a request: the request
builder, the checks before sending (Sender.prepare), and the event-type pattern matcher.

Whatever a webhook row holds, the outcome is a well-formed request or a clear refusal
(InvalidWebhook / a REFUSED AttemptResult): never another exception, never a header that
could split the request, never a custom header in place of one the dispatcher owns.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from datetime import UTC, datetime

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dispatcher.demo.patterns import matches, matches_any
from dispatcher.outcomes import Outcome
from dispatcher.request import (
    RESERVED,
    BuiltRequest,
    InvalidWebhook,
    build_request,
    parse_custom_headers,
    read_custom_headers,
)
from dispatcher.sender import AttemptResult, Sender, Target
from dispatcher.settings import load_settings

TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# Text as the database can hold it (no NUL, no lone surrogates) and anything at all.
DB_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
ANY_TEXT = st.text()
HEADER_NAMES = st.one_of(
    st.sampled_from([*sorted(RESERVED), "X-Tenant", "Authorization", "x-api-key", "X-A"]),
    st.sampled_from(sorted(RESERVED)).map(str.upper),
    st.from_regex(TOKEN, fullmatch=True),
    ANY_TEXT,
)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), ANY_TEXT
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(ANY_TEXT, inner, max_size=3)
    ),
    max_leaves=8,
)
HEADERS = st.one_of(
    st.dictionaries(HEADER_NAMES, JSON_SCALARS, max_size=8),
    st.dictionaries(HEADER_NAMES, JSON, max_size=3),
    JSON,
)
SECRETS = st.lists(
    st.one_of(
        st.just("a" * 64),
        st.text(min_size=0, max_size=80),
        st.from_regex(r"whsec_[A-Za-z0-9+/=!]{0,44}", fullmatch=True),
        st.binary(min_size=1, max_size=32).map(lambda b: "whsec_" + base64.b64encode(b).decode()),
    ),
    min_size=0,
    max_size=3,
)
NOW = datetime(2025, 12, 5, 14, 8, 26, 123000, tzinfo=UTC)


def _check_headers(req: BuiltRequest) -> None:
    for name, value in req.headers.items():
        assert TOKEN.match(name), name
        assert not CONTROL.search(value), (name, value)
        value.encode("utf-8")
    lowered = {k.lower(): k for k in req.headers}
    assert len(lowered) == len(req.headers), "two headers differ only by case"
    for name in RESERVED & set(lowered):
        # A reserved name present is the dispatcher's own header, not a custom one.
        assert lowered[name] in (
            "Content-Type",
            "User-Agent",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "X-InTime-Event",
            "X-InTime-Delivery",
            "X-InTime-Timestamp",
            "X-InTime-Signature",
        ), name


@settings(max_examples=400, deadline=None)
@given(
    event_type=ANY_TEXT,
    body=st.binary(max_size=256),
    secrets=SECRETS,
    headers=HEADERS,
)
@example(event_type="job.created\r\nX-Injected: 1", body=b"{}", secrets=["s"], headers={})
@example(event_type="x", body=b"{}", secrets=["s"], headers={"X-Evil": "a\r\nb: c"})
@example(event_type="x", body=b"{}", secrets=["whsec_!!!"], headers={})
@example(event_type="x", body=b"{}", secrets=["s", "whsec_!!!"], headers={})
@example(event_type="\ud800", body=b"{}", secrets=["s"], headers={"X-A": "\ud800"})
@example(event_type="x", body=b"{}", secrets=["s"], headers={"Content-Length": "0", "HOST": "e"})
def test_build_request_is_well_formed_or_refused(event_type, body, secrets, headers):
    delivery_id = str(uuid.uuid4())
    try:
        req = build_request(
            delivery_id=delivery_id,
            event_type=event_type,
            body=body,
            secrets=secrets,
            headers=read_custom_headers(headers),
            now=NOW,
        )
    except InvalidWebhook as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message
        for secret in secrets:
            if len(secret) >= 8:
                assert secret not in message, "a secret in an error message"
        return
    _check_headers(req)
    assert req.headers["webhook-id"] == delivery_id
    ts = req.headers["X-InTime-Timestamp"]
    mac = hmac.new(secrets[0].encode(), ts.encode() + b"." + body, hashlib.sha256)
    assert req.headers["X-InTime-Signature"] == "sha256=" + mac.hexdigest()
    assert req.headers["webhook-signature"].startswith("v1,")
    # Recorded headers: what was sent, minus the values of sensitive custom headers.
    assert set(req.recorded_headers) == set(req.headers)
    for name, value in req.recorded_headers.items():
        if value != req.headers[name]:
            assert value == "[redacted]" and name not in RESERVED
    for name in req.ignored_headers:
        assert name.lower() in RESERVED


SETTINGS = load_settings(
    database_url="postgresql://unused@127.0.0.1/none",
    allowed_target_networks="",
    max_body_bytes=4096,
)
URLS = st.one_of(
    ANY_TEXT,
    st.builds(
        lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
        st.sampled_from(["http", "https", "ftp", "file", "HTTP", "", "javascript"]),
        st.one_of(
            st.sampled_from(
                [
                    "example.com",
                    "127.0.0.1",
                    "[::1]",
                    "[::ffff:10.0.0.1]",
                    "0x7f.1",
                    "2130706433",
                    "169.254.169.254",
                    "[fe80::1%25eth0]",
                    "user:pw@example.com",
                    "%31%32%37.0.0.1",
                    "[64:ff9b::a00:1]",
                    "",
                    "exa mple.com",
                    "[zz]",
                ]
            ),
            ANY_TEXT,
        ),
        st.sampled_from(["", ":0", ":80", ":99999", ":-1", ":0x10", ":"]),
        st.sampled_from(["", "/", "/hook?a=b#frag", "/\r\nX: y", "/%0d%0a"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(url=URLS, event_type=ANY_TEXT, body=DB_TEXT, headers=HEADERS, secret=DB_TEXT)
def test_sender_prepare_never_raises(url, event_type, body, headers, secret):
    """Everything checked before a byte is sent: a built request or a REFUSED result."""
    sender = Sender(SETTINGS)
    target = Target(
        str(uuid.uuid4()), event_type, url, body, (secret,), read_custom_headers(headers)
    )
    prepared = sender.prepare(target)
    # the daemon's own path: the headers as the JSON text PostgreSQL gives (remembered signer)
    try:
        as_text = json.dumps(headers, allow_nan=False)  # jsonb holds no NaN
    except (TypeError, ValueError):
        as_text = None
    if as_text is not None:
        again = Target(
            target.delivery_id, event_type, url, body, (secret,), parse_custom_headers(as_text)
        )
        same = sender.prepare(again)
        assert type(same) is type(prepared)
        if isinstance(same, AttemptResult) and isinstance(prepared, AttemptResult):
            assert same.error_code == prepared.error_code
    if isinstance(prepared, AttemptResult):
        assert prepared.outcome is Outcome.REFUSED
        assert prepared.error_code in (
            "body_too_large",
            "invalid_url",
            "target_refused",
            "invalid_webhook",
        )
        assert prepared.error_message and "\n" not in prepared.error_message
        prepared.error_message.encode("utf-8")
    else:
        _check_headers(prepared.request)
        assert prepared.url.startswith(("http://", "https://"))
        assert "\r" not in prepared.url and "\n" not in prepared.url
        assert target.url == url  # the target is left as it was


# --- the pattern matcher ----------------------------------------------------------------------

SEGMENTS = st.text(
    st.characters(exclude_characters=".*", exclude_categories=["Cs"]), min_size=1, max_size=6
)
NAMES = st.lists(SEGMENTS, min_size=1, max_size=6).map(".".join)


@given(st.lists(ANY_TEXT, max_size=5), ANY_TEXT)
def test_matches_any_is_any_of_matches(patterns, event_type):
    assert matches_any(patterns, event_type) == any(matches(p, event_type) for p in patterns)


@given(NAMES, st.data())
def test_generalising_a_name_keeps_it_matching(name, data):
    """Every pattern that generalises an event name matches it: the name itself, '*', any
    proper prefix + '.*', '*.' + any proper suffix, and a middle segment replaced by '*'."""
    segments = name.split(".")
    assert matches(name, name)
    assert matches("*", name)
    if len(segments) > 1:
        cut = data.draw(st.integers(1, len(segments) - 1))
        assert matches(".".join(segments[:cut]) + ".*", name)
        assert matches("*." + ".".join(segments[cut:]), name)
        assert not matches(".".join(segments[:cut]) + ".*", ".".join(segments[:cut]))
    if len(segments) > 2:
        middle = data.draw(st.integers(1, len(segments) - 2))
        starred = [*segments[:middle], "*", *segments[middle + 1 :]]
        assert matches(".".join(starred), name)
        # ...and only names with the same number of segments.
        assert not matches(".".join(starred), name + ".extra")


@given(NAMES, NAMES)
def test_exact_names_match_only_themselves(a, b):
    assert matches(a, b) == (a == b)


@given(ANY_TEXT, ANY_TEXT)
def test_matcher_is_total_on_any_text(pattern, event_type):
    assert matches(pattern, event_type) in (True, False)
