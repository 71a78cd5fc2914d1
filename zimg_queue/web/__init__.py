"""zimg-queue over HTTP: the API blueprint, the Flask extension and the standalone app.

``ZimgQueue(app)`` (or ``init_app``) gives a Flask app the routes under its own prefix;
``app.register_blueprint(blueprint, url_prefix=...)`` works too (settings then come from
``app.config`` on registration). :func:`create_app` is the standalone service ``zimg web``
runs, with rq-dashboard at ``/rq/``.
"""

from __future__ import annotations

from .api import bp as blueprint
from .app import create_app
from .client import ApiClient, ApiClientError
from .extension import ZimgQueue, get_state, mount_dashboard

__all__ = ["ApiClient", "ApiClientError", "ZimgQueue", "blueprint", "create_app", "get_state", "mount_dashboard"]
