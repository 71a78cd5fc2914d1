"""Checking a bearer token, shared by the web API and the inference server.

Constant-time (:func:`hmac.compare_digest`) so response timing tells nothing about how
much of a guess was right; bytes on both sides so no header can make the check raise.
"""

from __future__ import annotations

import base64
import binascii
import hmac


def token_matches(header: str | None, token: str) -> bool:
    """True when ``header`` is ``Bearer <token>``. Both sides are bytes so non-ASCII input cannot raise."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    secret = given.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() == "basic":
        try:
            secret = base64.b64decode(secret, validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(secret, token.encode("utf-8"))
