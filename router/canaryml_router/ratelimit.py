"""Per-client rate limiting: one token bucket per client, the buckets of the clients seen last.

The arithmetic is `core.take_token` (pure); this module keeps the buckets. Which client a
request is: the value of the limit's client header when the request has it, else the peer
address. At most `max_clients` buckets are kept (least recently seen evicted first): memory is
bounded whatever the clients do. An evicted client comes back with a full bucket, so a client
that can pick its own name (an untrusted header) could cycle through names: name clients by a
header only a trusted proxy sets (docs/operator.md, "A/B segments, version pins and rate
limits").
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from canaryml_router.core import Bucket, RateLimit, take_token

DEFAULT_MAX_CLIENTS = 10_000
_LONGEST_KEPT_NAME = 64  # longer client names are kept as a digest (bounded memory per client)


def client_key(header_value: bytes | None, peer: object) -> bytes:
    """The bucket key of one request: `h:` and its client header's value (a digest when long),
    else `p:` and the peer's address; the prefixes keep a header value from naming a peer."""
    if header_value is not None:
        if len(header_value) > _LONGEST_KEPT_NAME:
            header_value = hashlib.blake2b(header_value, digest_size=16).digest()
        return b"h:" + header_value
    host = peer[0] if isinstance(peer, list | tuple) and peer else "unknown"
    return b"p:" + str(host).encode("latin-1", "replace")


class ClientLimiter:
    """The buckets of the `max_clients` clients seen last; `clock` is monotonic seconds."""

    def __init__(
        self, *, max_clients: int = DEFAULT_MAX_CLIENTS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {max_clients}")
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[bytes, Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: bytes, limit: RateLimit) -> float | None:
        """None when the client's request may go (a token taken), else the seconds to wait."""
        buckets = self._buckets
        bucket, retry_after = take_token(buckets.get(key), limit, self._clock())
        buckets[key] = bucket
        buckets.move_to_end(key)
        if len(buckets) > self.max_clients:
            buckets.popitem(last=False)
        return retry_after
