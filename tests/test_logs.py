"""Structured logs: JSON lines off a terminal, readable lines on one, stdlib and structlog alike, no prompts."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest
import structlog

from zimg_queue.logs import bind, configure_logging, unbind
from zimg_queue.settings import Settings


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def logged():
    """Configure logging into a buffer; yield a function returning the JSON lines written so far."""
    buffers: list[io.StringIO] = []

    def setup(settings: Settings | None = None, process="worker", stream: io.StringIO | None = None):
        buffers.append(stream or io.StringIO())
        configure_logging(settings or Settings(), process=process, stream=buffers[-1])
        return buffers[-1]

    yield setup
    configure_logging(Settings(), process="cli")  # back to stderr for the rest of the session


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_structlog_and_stdlib_records_are_json_lines_with_the_same_fields(logged):
    out = logged(process="worker")
    structlog.get_logger("zimg.test").info("job_finished", job_id="j1", total_s=1.5)
    logging.getLogger("rq.worker").info("Job %s: %s", "OK", "j1")  # RQ logs with %-arguments
    first, second = lines(out)
    assert first["event"] == "job_finished" and first["job_id"] == "j1" and first["total_s"] == 1.5
    assert second["event"] == "Job OK: j1" and second["logger"] == "rq.worker"
    for line in (first, second):
        assert line["level"] == "info" and line["process"] == "worker" and line["timestamp"].endswith("Z")


def test_bound_request_id_appears_on_every_line_until_unbound(logged):
    out = logged(process="web")
    bind(request_id="r-123")
    structlog.get_logger().info("one")
    logging.getLogger("werkzeug").warning("two")
    unbind("request_id")
    structlog.get_logger().info("three")
    got = lines(out)
    assert [g.get("request_id") for g in got] == ["r-123", "r-123", None]
    assert got[0]["process"] == "web"


def test_exceptions_are_rendered_into_the_json_line(logged):
    out = logged()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("zimg").exception("failed")
    (line,) = lines(out)
    assert line["level"] == "error" and "RuntimeError: boom" in line["exception"]


def test_a_terminal_gets_readable_lines_not_json(logged):
    out = logged(stream=Terminal())
    structlog.get_logger().info("job_finished", job_id="j1")
    text = out.getvalue()
    assert "job_finished" in text and "job_id=j1" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_default_level_is_info(logged):
    out = logged()
    log = structlog.get_logger()
    log.debug("hidden")
    log.info("shown")
    assert [line["event"] for line in lines(out)] == ["shown"]


def test_log_level_setting_drops_lower_levels(logged):
    # Changes ZIMG_LOG_LEVEL; test_default_level_is_info is its twin on the default.
    out = logged(Settings(log_level="warning"))
    structlog.get_logger().info("hidden")
    logging.getLogger("rq.worker").info("hidden too")
    structlog.get_logger().warning("shown")
    assert [line["event"] for line in lines(out)] == ["shown"]


def test_prompts_are_not_logged_by_default(logged):
    out = logged()
    structlog.get_logger().info("job_started", prompt="my secret product launch", negative_prompt="blurry")
    (line,) = lines(out)
    assert "secret" not in out.getvalue() and "blurry" not in out.getvalue()
    assert line["prompt_chars"] == len("my secret product launch") and line["negative_prompt_chars"] == 6


def test_log_prompts_setting_keeps_them(logged):
    # Changes ZIMG_LOG_PROMPTS; test_prompts_are_not_logged_by_default is its twin on the default.
    out = logged(Settings(log_prompts=True))
    structlog.get_logger().info("job_started", prompt="a red fox")
    assert lines(out)[0]["prompt"] == "a red fox"


def test_a_real_worker_logs_json_lines_rq_included(procs):
    proc = procs.worker(burst=True)  # no job: RQ logs its start and stop, then the process exits
    assert proc.popen is not None and proc.popen.wait(timeout=60) == 0
    parsed = []
    for raw in proc.output().splitlines():
        try:
            parsed.append(json.loads(raw))
        except json.JSONDecodeError:
            pytest.fail(f"a log line that is not JSON: {raw!r}")
    assert parsed, "the worker logged nothing"
    assert all(p["process"] == "worker" and "timestamp" in p and "level" in p for p in parsed)
    assert any(p["logger"].startswith("rq.") for p in parsed), "RQ (stdlib logging) is routed too"


def test_as_a_library_our_events_go_through_standard_logging_never_stdout():
    """A script importing zimg_queue without configuring logs: unconfigured structlog printed to its stdout."""
    code = (
        "import logging, structlog, zimg_queue; logging.basicConfig(level=logging.INFO); "
        "structlog.get_logger('zimg_queue.x').info('hello', prompt='secret words'); print('OUT')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout == "OUT\n"
    assert "INFO:zimg_queue.x:event='hello'" in done.stderr and "secret words" not in done.stderr
