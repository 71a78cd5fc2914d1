"""A real headless Chromium loads the example app's page, submits a prompt and sees the image appear.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``)
and ``selenium`` from PyPI; skipped, saying so, only when they are missing.
"""

from __future__ import annotations

import shutil
import sys

import pytest

from tests.conftest import Proc
from zimg_queue.redis_server import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip(
        "Debian chromium/chromium-driver not installed: apt-get install -y chromium chromium-driver",
        allow_module_level=True,
    )

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1024,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def example_server(procs):
    """The example app next to a worker and a sim inference server that takes 1.5 s, so progress can be seen."""
    procs.inference(latency_a="1.5", latency_b="0")
    procs.worker()
    stack = procs
    port = free_port()
    proc = Proc(
        [sys.executable, "examples/flask_app.py", "--port", str(port)],
        env=stack.env(),
        log=stack.tmp / "logs" / "example.log",
        url=f"http://127.0.0.1:{port}/api",
        health_codes=(200, 503),
    )
    stack.started.append(proc)
    proc.start()
    return f"http://127.0.0.1:{port}"


def test_the_page_shows_the_image_when_the_job_is_done(browser, example_server):
    browser.get(example_server + "/")
    browser.find_element(By.ID, "prompt").send_keys("a lighthouse at dusk, oil painting")
    Select(browser.find_element(By.ID, "size")).select_by_value("256")
    browser.find_element(By.ID, "go").click()
    image = WebDriverWait(browser, 60).until(ec.visibility_of_element_located((By.ID, "result")))
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return arguments[0].complete", image))
    width = browser.execute_script("return arguments[0].naturalWidth", image)
    assert width == 256, browser.find_element(By.ID, "status").text
    assert "/api/v1/jobs/" in image.get_attribute("src") and image.get_attribute("src").endswith("/image")
    status = browser.find_element(By.ID, "status")
    assert status.text == "finished"
    seen = status.get_attribute("data-stages").split()
    assert any(s.startswith("started:") for s in seen) and seen[-1] == "finished:done", seen  # live progress
    requested = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(url.endswith("/events") for url in requested), requested
    assert not any("?wait=" in url for url in requested), requested  # followed by events, not by polling


def test_the_page_lists_field_errors(browser, example_server):
    browser.get(example_server + "/")
    browser.execute_script("document.getElementById('prompt').removeAttribute('required')")
    browser.find_element(By.ID, "prompt").send_keys("   ")
    browser.find_element(By.ID, "go").click()
    errors = WebDriverWait(browser, 30).until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#errors li")))
    assert errors.text.startswith("prompt:")


def test_the_dashboard_acts_from_its_own_page_and_a_foreign_page_cannot(browser, web, producer):
    """Real browser requests: same-site POSTs work; a page on another origin (localhost here) acts on nothing."""
    server = web()
    port = server.url.rsplit(":", 1)[1]
    waiting = producer.enqueue("stays queued", width=64, height=64)
    post = (
        "return (async () => { const r = await fetch(arguments[0], "
        "{method: 'POST', mode: arguments[1], headers: arguments[2]}); return r.status; })()"
    )
    browser.get(f"http://127.0.0.1:{port}/rq/")  # the dashboard's own origin
    assert browser.execute_script(post, "/rq/queue/zimg-low/compact", "same-origin", {}) == 200
    browser.get(f"http://localhost:{port}/healthz")  # another origin, as any foreign site would be
    for url, headers in [
        (f"http://127.0.0.1:{port}/rq/queue/zimg-normal/queued/empty", {}),
        (f"http://127.0.0.1:{port}/v1/jobs", {"Content-Type": "text/plain"}),
    ]:
        assert browser.execute_script(post, url, "no-cors", headers) == 0  # sent, answer opaque to the page
    assert producer.status(waiting)["status"] == "queued"  # not emptied
    assert producer.connection.llen("rq:queue:zimg-normal") == 1  # and no job made by the text/plain post
    log = server.output()
    assert log.count('"status": 403') == 2, log[-2000:]  # both reached the server and were refused
