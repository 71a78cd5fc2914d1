"""``GET /v1/jobs/<id>/events``: live progress as server-sent events (issue 13, point 9).

The whole path runs against a real ``zimg web`` (gunicorn gthread), a worker and the sim
inference server; the bounds (stream length, slots, reconnects) in-process, where the
constants can be shortened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import requests

from zimg_queue.queue import Producer

TOKEN = "sse-token"


def read_events(lines: Iterator[str]) -> Iterator[dict]:
    """Parse an event stream into ``{"id", "event", "data"}`` dicts (``retry:`` and comments skipped)."""
    event: dict = {}
    for line in lines:
        if line == "":
            if "data" in event:
                yield event
            event = {}
        elif line.startswith(":") or line.startswith("retry:"):
            continue
        else:
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


def test_events_stream_a_job_to_the_end_on_a_real_server(procs, web):
    procs.inference(latency_a="1.5", latency_b="0")  # long enough to see the job start before it ends
    procs.worker()
    server = web(ZIMG_API_TOKEN=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"prompt": "a lighthouse", "width": 64, "height": 64, "seed": 3}
    job = requests.post(f"{server.url}/v1/jobs", json=body, headers=auth, timeout=10).json()
    url = f"{server.url}/v1/jobs/{job['id']}/events"
    assert requests.get(url, timeout=10).status_code == 401  # auth as every other route
    started = time.monotonic()
    with requests.get(url, headers=auth, stream=True, timeout=(5, 30)) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events = list(read_events(r.iter_lines(decode_unicode=True)))
    assert time.monotonic() - started < 30
    assert [e["event"] for e in events][-1] == "end"
    states = [json.loads(e["data"]) for e in events if e["event"] == "status"]
    assert states[-1]["status"] == "finished" and states[-1]["result"]["image_url"] == job["urls"]["image"]
    assert "started" in {s["status"] for s in states}, [s["status"] for s in states]
    stages = [s["progress"]["stage"] for s in states]
    assert len(set(stages)) >= 2 and stages[-1] == "done", stages
    assert len({e["id"] for e in events if e["event"] == "status"}) == len(states)  # one event per change
    final = requests.get(f"{server.url}/v1/jobs/{job['id']}", headers=auth, timeout=10).json()
    assert states[-1] == final
    again = requests.get(url, headers={**auth, "Last-Event-ID": events[-2]["id"]}, timeout=10)
    assert again.status_code == 204  # the client has the final state: EventSource stops reconnecting


def _stream(client, path: str, **headers: str) -> tuple[int, list[dict]]:
    r = client.get(path, headers=headers, buffered=False)
    if r.status_code != 200:
        return r.status_code, []
    text = "".join(chunk.decode() for chunk in r.response)
    r.close()
    return 200, list(read_events(iter(text.split("\n"))))


def test_a_stream_is_bounded_and_a_reconnect_does_not_repeat_what_it_has(web_app, producer: Producer, monkeypatch):
    from zimg_queue.web import events

    monkeypatch.setattr(events, "MAX_STREAM_S", 1.0)  # shortened for the test (25 s as shipped)
    job_id = producer.enqueue("nobody works", width=64, height=64)
    client = web_app().test_client()
    started = time.monotonic()
    code, first = _stream(client, f"/v1/jobs/{job_id}/events")
    assert code == 200 and time.monotonic() - started < 10  # closed although the job is not final
    assert [json.loads(e["data"])["status"] for e in first] == ["queued"]
    code, again = _stream(client, f"/v1/jobs/{job_id}/events", **{"Last-Event-ID": first[0]["id"]})
    assert code == 200 and again == []  # nothing changed: nothing re-sent
    producer.cancel(job_id)
    code, last = _stream(client, f"/v1/jobs/{job_id}/events", **{"Last-Event-ID": first[0]["id"]})
    assert [e["event"] for e in last] == ["status", "end"] and json.loads(last[0]["data"])["status"] == "canceled"
    assert _stream(client, f"/v1/jobs/{job_id}/events", **{"Last-Event-ID": last[0]["id"]})[0] == 204


def test_when_every_stream_slot_is_taken_the_client_gets_the_state_and_comes_back(web_app, producer, monkeypatch):
    import threading

    from zimg_queue.web import events

    monkeypatch.setattr(events, "_slots", threading.BoundedSemaphore(1))
    events._slots.acquire()  # another stream holds the only slot
    job_id = producer.enqueue("x", width=64, height=64)
    r = web_app().test_client().get(f"/v1/jobs/{job_id}/events")
    text = r.get_data(as_text=True)
    assert r.status_code == 200 and "retry: 2000" in text and '"status":"queued"' in text


def test_events_of_an_unknown_job_are_404_json(web_app):
    r = web_app().test_client().get("/v1/jobs/no-such-job/events")
    assert r.status_code == 404 and r.json["error"] == "not_found"


def test_the_route_is_in_the_openapi_document(web_app):
    doc = web_app().test_client().get("/v1/openapi.json").json
    assert "text/event-stream" in json.dumps(doc["paths"]["/v1/jobs/{job_id}/events"])
