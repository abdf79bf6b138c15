"""What an attempt's error says of a redirect's target: scheme, host and port, never its path,
query or credentials (they may echo the webhook URL's own token; branch breakit)."""

from __future__ import annotations

import pytest

from dispatcher.sender import redirect_shown


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("https://hooks.example/in/T0KEN?token=s3cret", "https://hooks.example/..."),
        ("https://hooks.example?token=s3cret", "https://hooks.example/..."),
        ("https://user:s3cret@hooks.example/x", "https://hooks.example/..."),
        ("http://[::1]:8080/x?t=s3cret", "http://[::1]:8080/..."),
        ("http://169.254.169.254/", "http://169.254.169.254/"),
        ("https://hooks.example", "https://hooks.example"),
        ("/elsewhere?token=s3cret", "(a relative or unreadable Location)"),
        ("http://[::1/x?token=s3cret", "(a relative or unreadable Location)"),
        ("", "(no Location)"),
        # a host yarl accepts with encoded path and query in it, or a ';' (review)
        ("https://example.com%2Fhook%3Ftoken%3Ds3cret", "(a relative or unreadable Location)"),
        ("https://example.com;s3cret/x", "(a relative or unreadable Location)"),
        # yarl raises IndexError on these (review): no crash, nothing shown
        ("https://[]>@/", "(a relative or unreadable Location)"),
        ("http://[]@", "(a relative or unreadable Location)"),
    ],
)
def test_a_redirect_is_shown_by_its_origin_alone(location: str, shown: str) -> None:
    assert redirect_shown(location) == shown
    assert "s3cret" not in redirect_shown(location) and "T0KEN" not in redirect_shown(location)
