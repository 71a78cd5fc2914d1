"""Refusing to serve beyond loopback without a token.

Every server here binds to 127.0.0.1 by default. Someone who passes ``--host 0.0.0.0``
and forgets the token would publish an open job queue (or an open GPU); so a server told
to bind beyond loopback without its token refuses to start, with one line saying what to
set, unless ``ZIMG_ALLOW_PUBLIC_BIND`` says the operator accepts it (another layer, such
as a private network or an authenticating proxy, guards it).
"""

from __future__ import annotations

import ipaddress
import socket

import structlog

log = structlog.get_logger(__name__)


class PublicBindRefused(RuntimeError):
    """Raised instead of starting; ``str()`` is the one line to print (then exit with status 2, a usage error)."""


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (``""`` and ``0.0.0.0`` are not)."""
    host = host.strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def check_bind(host: str, *, token: str | None, token_setting: str, allow_public: bool, server: str) -> None:
    """Raise :class:`PublicBindRefused` when ``host`` is beyond loopback, no token is set and it is not allowed."""
    if token or is_loopback(host):
        return
    if allow_public:
        log.warning("public_bind_without_token", server=server, host=host or "*", allowed_by="ZIMG_ALLOW_PUBLIC_BIND")
        return
    raise PublicBindRefused(
        f"{server}: refusing to bind to {host or '*'} (beyond loopback) without a token: set {token_setting}, "
        "or ZIMG_ALLOW_PUBLIC_BIND=true if something else guards it"
    )
