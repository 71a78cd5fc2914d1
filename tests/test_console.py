"""The live console at ``/``: auth like the API, an SSE stream of snapshots, and a real Chromium watching it update.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` and ``selenium`` (as tests/test_browser.py);
it saves a screenshot in its tmp folder. docs/console.png is made by ``docs/console_screenshot.py`` (longer run).
"""

from __future__ import annotations

import base64
import json
import shutil

import pytest
import requests

from tests.conftest import wait_until


def events(url: str, n: int, headers: dict | None = None, timeout: float = 30) -> list[tuple[str, dict]]:
    """The first ``n`` events of an SSE stream, parsed."""
    out: list[tuple[str, dict]] = []
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        name, data = None, []
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and name:
                out.append((name, json.loads("\n".join(data))))
                name, data = None, []
                if len(out) == n:
                    break
    return out


def test_console_page_and_stream_need_the_token_and_a_browser_gets_basic(web_app):
    client = web_app(ZIMG_API_TOKEN="t0ken").test_client()
    for path in ("/", "/console/events", "/console/static/console.js", "/console/images/some-job"):
        resp = client.get(path)
        assert resp.status_code == 401, path
    assert client.get("/").headers["WWW-Authenticate"].startswith("Basic")  # the browser's own login prompt
    assert client.get("/console/images/some-job").headers["WWW-Authenticate"].startswith("Basic")  # for <img>
    basic = "Basic " + base64.b64encode(b"anyone:t0ken").decode()
    page = client.get("/", headers={"Authorization": basic})
    assert page.status_code == 200 and b"/console/events" in page.data and b"console.js" in page.data
    assert client.get("/console/static/console.js", headers={"Authorization": "Bearer t0ken"}).status_code == 200


def test_the_stream_sends_queues_workers_gpu_and_the_latest_images(procs, producer, web):
    inference = procs.inference(latency_a="0.01", latency_b="0.01")
    procs.worker()
    ids = [producer.enqueue(f"a red fox number {i}", width=64, height=64, seed=i) for i in range(3)]
    for job_id in ids:
        assert producer.wait(job_id, timeout=30)["status"] == "finished"
    api = web()
    (name, first), (_, second) = events(f"{api.url}/console/events", 2)
    assert name == "snapshot"
    assert {q["name"] for q in first["queues"]} == set(producer.settings.queue_names)
    assert len(first["workers"]) == 1
    assert [g["id"] for g in first["gallery"]] == ids[::-1]  # newest first
    fox = first["gallery"][0]
    assert fox["prompt"] == "a red fox number 2" and (fox["width"], fox["height"], fox["seed"]) == (64, 64, 2)
    assert fox["timings"]["total_s"] > 0 and fox["image"] == f"/console/images/{ids[2]}"
    got = requests.get(api.url + fox["image"], timeout=5)
    assert got.headers["Content-Type"] == "image/png", got.text
    (server,) = second["gpu"][-1]["servers"]
    assert server["url"] == inference.url and server["up"] and 0 <= server["busy"] <= 1
    assert len(second["gpu"]) >= 2  # the history grows, one sample per interval


webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")


@pytest.fixture
def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian chromium/chromium-driver not installed: apt-get install -y chromium chromium-driver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_a_browser_sees_the_console_update_live(procs, producer, web, browser, tmp_path):
    """Sets ZIMG_API_TOKEN: the browser logs in with Basic, as a person would (the stream test above has none)."""
    from selenium.webdriver.common.by import By

    procs.inference(latency_a="0.2", latency_b="0.05", max_wait_ms="300")
    procs.worker(processes=2)
    api = web(ZIMG_API_TOKEN="console-t0ken")
    first = [producer.enqueue(p, width=256, height=256, seed=7) for p in ("a lighthouse at dusk", "a bowl of ramen")]
    for job_id in first:
        producer.wait(job_id, timeout=30)

    browser.get(api.url.replace("http://", "http://operator:console-t0ken@") + "/")  # Basic: any user, the token
    wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#gallery figure")) == 2, timeout=20)
    assert "live" in browser.find_element(By.ID, "status").text
    rows = {r.get_attribute("data-queue") for r in browser.find_elements(By.CSS_SELECTOR, "#queues tbody tr")}
    assert rows == set(producer.settings.queue_names)
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#gallery figure figcaption")]
    assert sorted(c.splitlines()[0] for c in captions) == ["a bowl of ramen", "a lighthouse at dusk"]
    assert all("256×256 · seed 7" in c and "inference" in c and "total" in c for c in captions)

    # New work shows up without a reload: the page is fed by the event stream.
    prompts = ["a paper boat on a pond", "a snowy mountain cabin", "<b>not bold</b> a cactus", "a city at night"]
    more = producer.enqueue_many([{"prompt": p, "width": 256, "height": 256, "seed": i} for i, p in enumerate(prompts)])
    for job_id in more:
        producer.wait(job_id, timeout=30)
    wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#gallery figure")) == 6, timeout=20)
    assert "<b>not bold</b> a cactus" in browser.find_element(By.ID, "gallery").text  # text, never markup
    assert not browser.find_elements(By.CSS_SELECTOR, "#gallery figcaption b")
    wait_until(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 256)"
    ), timeout=20)  # fmt: skip
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#busy-chart polyline"), timeout=20)
    assert browser.find_element(By.ID, "busy-now").text.endswith("%")

    shot = tmp_path / "console.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_past_max_streams_a_page_gets_one_snapshot_and_polls_instead(web_app):
    """Open consoles never take more than MAX_STREAMS of a process's threads away from the API."""
    from zimg_queue.web import console

    client = web_app().test_client()
    taken = [console.STREAMS.acquire(blocking=False) for _ in range(console.MAX_STREAMS)]  # as streams elsewhere
    assert all(taken)
    try:
        polled = client.get("/console/events").get_data(as_text=True)  # must end by itself
        busy_ms = int(console.BUSY_RETRY_S * 1000)
        assert polled.startswith(f"retry: {busy_ms}\n")
        assert polled.count("event: snapshot") == 1
    finally:
        for _ in taken:
            console.STREAMS.release()
    streaming = client.get("/console/events", buffered=False)  # a slot is free: a real stream
    first = next(iter(streaming.response))
    interval_ms = int(console.INTERVAL_S * 1000)
    assert first == f"retry: {interval_ms}\n\n".encode()
    assert free_slots(console.STREAMS, console.MAX_STREAMS) == console.MAX_STREAMS - 1
    streaming.close()  # the slot comes back when the server closes the answer
    assert free_slots(console.STREAMS, console.MAX_STREAMS) == console.MAX_STREAMS


def free_slots(semaphore, most: int) -> int:
    got = [semaphore.acquire(blocking=False) for _ in range(most)]
    for ok in got:
        if ok:
            semaphore.release()
    return sum(got)


def test_with_redis_down_the_page_loads_and_the_stream_says_why(web_app):
    from zimg_queue.redis_server import free_port

    client = web_app(ZIMG_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0").test_client()
    assert client.get("/").status_code == 200
    streaming = client.get("/console/events", buffered=False)
    try:
        chunks = iter(streaming.response)
        next(chunks)  # retry
        event = next(chunks).decode()
        assert event.startswith("event: unavailable\n") and "Redis: ConnectionError" in event
    finally:
        streaming.close()
