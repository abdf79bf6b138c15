"""Read at most a number of bytes of an HTTP response body (a webhook receiver's answer,
a token endpoint's): one ``read()`` returns only what has arrived so far, so a body sent in
several TCP segments takes a loop, which stops at the bound, at the end, or when the read
breaks off.

No timeout of its own: the request's (aiohttp's ClientTimeout) bounds it.
"""

from __future__ import annotations

import aiohttp


async def read_bounded(
    resp: aiohttp.ClientResponse, limit: int, *, keep_partial: bool = False
) -> tuple[bytes, Exception | None]:
    """The body's first ``limit`` bytes (all of it when shorter), and None.

    A read that breaks off (timeout, reset, a malformed chunk) raises; with
    ``keep_partial`` it ends the read instead: what arrived is returned with the
    exception that stopped it (a receiver that answered a status and then stalled)."""
    chunks: list[bytes] = []
    got = 0
    try:
        while got < limit:
            chunk = await resp.content.read(limit - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if not keep_partial:
            raise
        return b"".join(chunks), exc
    return b"".join(chunks), None
