"""Bearer-token auth for the API and the dashboard.

One shared secret (``ZIMG_API_TOKEN``), compared in constant time with
:func:`hmac.compare_digest` so response timing tells nothing about how much of a
guess was right. The token is never logged or echoed; a failed check says only
that a token is missing or wrong.

Programs send ``Authorization: Bearer <token>``. A browser cannot add that header to
a page load, so HTTP Basic with the token as the password (any user name) is accepted
too, and the dashboard's 401 asks for it: the browser shows its own login prompt.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, g, jsonify, request

from ..tokens import token_matches

#: Endpoints anyone may call: a load balancer's health probe has no token.
PUBLIC_ENDPOINTS = {"zimg_queue.healthz", "static"}
#: Blueprints browsed by people: their 401 asks the browser for a Basic login (password = token).
BASIC_BLUEPRINTS = {"rq_dashboard", "zimg_console"}


def unauthorized(basic: bool = False) -> Response:
    response = jsonify(error="unauthorized", message="send 'Authorization: Bearer <token>' (ZIMG_API_TOKEN)")
    response.status_code = 401
    scheme = "Basic" if basic else "Bearer"
    response.headers["WWW-Authenticate"] = f'{scheme} realm="zimg-queue"'
    return response


def check_request(token: str | None) -> Response | None:
    """The ``before_request`` body: ``None`` lets the request through, else a 401 answer.

    Marks the request as checked in ``flask.g`` so a second guard (app-wide and per
    blueprint both installed) does not compare again.
    """
    if not token or request.endpoint in PUBLIC_ENDPOINTS or g.get("zimg_authorized"):
        return None
    if not token_matches(request.headers.get("Authorization"), token):
        return unauthorized(basic=request.blueprint in BASIC_BLUEPRINTS)
    g.zimg_authorized = True
    return None


def guard(token_getter: Callable[[], str | None]) -> Callable[[], Response | None]:
    """A ``before_request`` function reading the current token through ``token_getter``."""

    def before_request() -> Response | None:
        return check_request(token_getter())

    return before_request


def protect_blueprint(app: Flask, blueprint_name: str, token_getter: Callable[[], str | None]) -> None:
    """Run the token check *first* among a registered blueprint's ``before_request`` functions.

    rq-dashboard's own ``before_request`` opens a Redis connection; ours must run before
    it, so it is inserted at the front rather than appended.
    """
    app.before_request_funcs.setdefault(blueprint_name, []).insert(0, guard(token_getter))
