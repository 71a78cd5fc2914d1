"""Where a webhook may be sent: http(s) only, and never into the service's own network by default.

A ``webhook_url`` is chosen by whoever submits a job, and the POST is made from a worker
on the GPU box. Without a check, a job could make that box call its own services
(``http://127.0.0.1:7860/...``, Redis' neighbours, a cloud metadata endpoint at
``169.254.169.254``): server-side request forgery. So, unless ``ZIMG_WEBHOOK_ALLOW_PRIVATE``
is set:

* up front (the producer, the API's 400): a URL whose host is written as a non-public
  address, or is ``localhost``, is refused with a :class:`ValidationError`;
* at send time (the worker): the host name is resolved, and the connection is made only
  to an address that is public (``ipaddress``'s ``is_global``: not loopback, private,
  link-local, carrier-grade NAT, multicast or reserved). The check is made inside the
  HTTP connection itself, on the very address connected to, so a DNS answer that changes
  between a check and the connection (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .request import ValidationError

FIELD = "options.webhook_url"
HINT = "set ZIMG_WEBHOOK_ALLOW_PRIVATE=true to allow it"


class TargetRefused(OSError):
    """The webhook's host resolves to no address it may be sent to. An ``OSError``, so HTTP clients wrap it."""


def is_public(address: str) -> bool:
    """Whether ``address`` (an IP literal) is globally routable; IPv4-mapped IPv6 is judged as IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def literal_problem(url: str) -> str | None:
    """Why ``url`` is refused before any DNS lookup (scheme, or a host written as a non-public address)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL"
    host = parts.hostname.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return f"must not point at this machine ({host}); {HINT}"
    try:
        public = is_public(host)
    except ValueError:
        return None  # a name: judged after DNS, when sending
    return None if public else f"must not point at a loopback, private or link-local address ({host}); {HINT}"


def check_url(url: str, *, allow_private: bool) -> None:
    """Raise :class:`ValidationError` (field ``options.webhook_url``) for a URL refused up front."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError.single(FIELD, "must be an http:// or https:// URL")
    problem = None if allow_private else literal_problem(url)
    if problem:
        raise ValidationError.single(FIELD, problem)


def public_address(host: str, port: int) -> str:
    """The first public address ``host`` resolves to, else :class:`TargetRefused`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetRefused(f"cannot resolve {host}: {exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        if is_public(address):
            return address
    raise TargetRefused(
        f"webhook host {host} resolves only to non-public addresses ({', '.join(sorted(set(addresses)))}); {HINT}"
    )


class _Guarded:
    """Mixed into urllib3 connections: connect only to a public address of the host (see the module docstring)."""

    _dns_host: str
    port: int

    def _new_conn(self) -> socket.socket:
        original = self._dns_host
        self._dns_host = public_address(original, self.port)
        try:
            return super()._new_conn()  # type: ignore[misc]
        finally:
            self._dns_host = original


class _GuardedHTTPConnection(_Guarded, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_Guarded, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


def session(*, allow_private: bool) -> requests.Session:
    """A ``requests`` session for webhook deliveries: no proxies from the environment, and guarded unless allowed."""
    s = requests.Session()
    s.trust_env = False  # an environment proxy would be connected to instead of the checked address
    if not allow_private:
        adapter = _GuardedAdapter()
        s.mount("http://", adapter)
        s.mount("https://", adapter)
    return s
