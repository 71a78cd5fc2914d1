"""Make docs/console.png: run ``zimg up`` (sim backend), watch the console while jobs come in waves, screenshot.

    .venv/bin/python docs/console_screenshot.py [--seconds 150] [--out docs/console.png]

Needs Debian's chromium and chromium-driver, and selenium. Everything runs on loopback ports
picked free, with a private Redis in a temporary folder; all of it is stopped at the end.
The GPU figures in the picture come from the simulator (``sim`` backend), and the page says so.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

from zimg_queue.processes import stop_processes, wait_http
from zimg_queue.redis_server import free_port

PROMPTS = [
    "a lighthouse at dusk, oil painting", "a bowl of ramen, studio photo", "a paper boat on a pond",
    "a snowy mountain cabin at night", "a red fox in tall grass", "a city skyline in the rain",
    "a vintage bicycle against a yellow wall", "a cup of coffee with latte art", "a desert road at noon",
    "an astronaut reading in a library", "a field of sunflowers", "a koi pond from above",
    "a neon sign that says OPEN", "a watercolor of a harbor", "a cat sleeping on a windowsill",
    "a bowl of lemons on a blue table",
]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--out", default=str(Path(__file__).with_name("console.png")))
    args = parser.parse_args()
    web_port, inference_port = free_port(), free_port()
    base = f"http://127.0.0.1:{web_port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
        env.update(ZIMG_DATA_DIR=tmp, ZIMG_SIM_LATENCY_A="0.4", ZIMG_SIM_LATENCY_B="0.15", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "zimg_queue.cli", "up", "--workers", "6", "--web-port", str(web_port),
               "--inference-port", str(inference_port)]  # fmt: skip
        log = open(Path(tmp) / "up.log", "wb")  # noqa: SIM115 - closed with the folder
        up = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"{base}/healthz", up, timeout=120, ok_codes=(200,))
            shoot(base, args.out, lambda: feed(base, args.seconds))
        finally:
            stop_processes(up, timeout=20)
            log.close()
    print(args.out)
    return 0


def feed(base: str, seconds: float) -> None:
    """Jobs in waves (a sine of the rate), so GPU busy and batch size move over the minutes shown."""
    rng = random.Random(7)
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        rate = 1.0 + 5.0 * max(0.0, math.sin(elapsed / seconds * 2.5 * math.pi))  # jobs per second
        body = {"prompt": rng.choice(PROMPTS), "width": 256, "height": 256, "seed": rng.randrange(10_000)}
        requests.post(f"{base}/v1/jobs", json=body, timeout=10).raise_for_status()
        time.sleep(1.0 / rate)


def shoot(base: str, out: str, meanwhile: Callable[[], None]) -> None:
    """Open the console, run ``meanwhile`` (the page watching, so GPU samples are taken), then screenshot."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1260", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"{base}/")
        meanwhile()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = driver.execute_script(
                "const imgs = [...document.querySelectorAll('#gallery img')];"
                "return imgs.length >= 12 && imgs.every(i => i.complete && i.naturalWidth > 0)"
                " && document.querySelector('#busy-chart polyline') !== null;"
            )
            if ready:
                break
            time.sleep(0.5)
        driver.save_screenshot(out)
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
