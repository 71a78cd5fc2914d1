"""Auth: with ``ZIMG_API_TOKEN`` set nothing but ``/healthz`` answers without ``Authorization: Bearer``."""

from __future__ import annotations

import base64

import pytest
import requests

from zimg_queue.web.auth import token_matches

TOKEN = "t0ken-with-enough-entropy"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ROUTES = [
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs/abc"),
    ("get", "/v1/jobs/abc/image"),
    ("delete", "/v1/jobs/abc"),
    ("post", "/v1/jobs/abc/cancel"),
    ("get", "/v1/queues"),
    ("get", "/v1/openapi.json"),
    ("get", "/rq/"),
    ("get", "/rq/0/data/queues.json"),
    ("get", "/no/such/route"),
]


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Token {TOKEN}",
        "Bearer \u00e9\u00e9",
    ],
)
@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_but_healthz_needs_the_token(web_app, method, path, header):
    client = web_app(ZIMG_API_TOKEN=TOKEN).test_client()
    headers = {"Authorization": header} if header is not None else {}
    r = getattr(client, method)(path, headers=headers)
    assert r.status_code == 401, (method, path, r.status_code)
    assert r.json["error"] == "unauthorized" and TOKEN not in r.get_data(as_text=True)
    assert r.headers["WWW-Authenticate"].startswith("Basic" if path.startswith("/rq") else "Bearer")


def test_with_the_token_every_route_answers(web_app):
    client = web_app(ZIMG_API_TOKEN=TOKEN).test_client()
    created = client.post("/v1/jobs", json={"prompt": "x", "width": 64, "height": 64}, headers=BEARER)
    assert created.status_code == 202
    job_id = created.json["id"]
    for path in (f"/v1/jobs/{job_id}", "/v1/queues", "/v1/openapi.json", "/rq/", "/rq/0/data/queues.json"):
        assert client.get(path, headers=BEARER).status_code == 200, path
    assert client.get(f"/v1/jobs/{job_id}/image", headers=BEARER).status_code == 404  # not finished: not 401
    assert client.delete(f"/v1/jobs/{job_id}", headers=BEARER).status_code == 200


def test_healthz_needs_no_token(web_app):
    client = web_app(ZIMG_API_TOKEN=TOKEN).test_client()
    assert client.get("/healthz").status_code in (200, 503)


def test_without_a_token_configured_nothing_asks_for_one(web_app):
    client = web_app().test_client()
    assert client.get("/v1/queues").status_code == 200
    assert client.get("/rq/0/data/queues.json").status_code == 200


def test_basic_auth_with_the_token_as_password_is_accepted_for_browsers(web_app):
    client = web_app(ZIMG_API_TOKEN=TOKEN).test_client()
    good = base64.b64encode(f"ops:{TOKEN}".encode()).decode()
    bad = base64.b64encode(b"ops:guess").decode()
    assert client.get("/rq/", headers={"Authorization": f"Basic {good}"}).status_code == 200
    assert client.get("/rq/", headers={"Authorization": f"Basic {bad}"}).status_code == 401
    assert client.get("/rq/", headers={"Authorization": "Basic !!notbase64"}).status_code == 401


def test_token_matches_is_exact():
    assert token_matches(f"Bearer {TOKEN}", TOKEN) and token_matches(f"bearer {TOKEN}", TOKEN)
    assert not token_matches(f"Bearer {TOKEN} ", TOKEN + "x")
    assert not token_matches(None, TOKEN) and not token_matches("Bearer", TOKEN)


def test_a_real_server_with_a_token(stack, web):
    server = web(ZIMG_API_TOKEN=TOKEN)
    body = {"prompt": "a cat", "width": 64, "height": 64}
    assert requests.post(f"{server.url}/v1/jobs", json=body, timeout=10).status_code == 401
    assert requests.get(f"{server.url}/rq/", timeout=10).status_code == 401
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
    job = requests.post(f"{server.url}/v1/jobs", json=body, headers=BEARER, timeout=10).json()
    assert requests.get(f"{server.url}{job['urls']['get']}", timeout=10).status_code == 401
    status = requests.get(f"{server.url}{job['urls']['get']}?wait=30", headers=BEARER, timeout=40).json()
    assert status["status"] == "finished"
    assert requests.get(f"{server.url}{status['result']['image_url']}", timeout=10).status_code == 401
    image = requests.get(f"{server.url}{status['result']['image_url']}", headers=BEARER, timeout=10)
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert TOKEN not in server.output()  # never logged
