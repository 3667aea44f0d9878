"""The bearer-token check the REST and gRPC transports share."""

from __future__ import annotations

import hmac

__all__ = ["bearer_matches"]


def bearer_matches(value: str | bytes | None, token: bytes) -> bool:
    """Whether an ``Authorization`` value is ``Bearer <token>``; ``token`` is the UTF-8 secret.

    The scheme's name matches in any case (RFC 7235), the token byte for byte and in constant
    time. A ``str`` value is an HTTP header as servers decode it (latin-1, so its bytes come
    back unchanged) or gRPC metadata (ASCII).
    """
    if isinstance(value, str):
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:  # not what a transport decodes: compare its UTF-8 bytes
            raw = value.encode()
    else:
        raw = value or b""
    scheme, _, credentials = raw.partition(b" ")
    same = hmac.compare_digest(credentials.lstrip(b" "), token)
    return scheme.lower() == b"bearer" and same
