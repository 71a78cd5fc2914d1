"""Structured logs for every process of the stack, with structlog.

One call per process, at its entry point (``zimg`` does it in :func:`zimg_queue.cli.main`)::

    configure_logging(settings, process="worker")
    log = structlog.get_logger(__name__)
    log.info("job_finished", job_id=job.id, total_s=1.2)

Why one configuration for both APIs: our code logs key-value events through structlog,
while RQ, gunicorn, waitress and Flask log through the standard library. Both go through
the same processors (timestamp, level, logger, process, bound context such as
``request_id``) and the same renderer, so an operator gets one format per process:
JSON lines when the log stream is not a terminal (a log shipper reads it), readable
aligned lines when it is (a person reads it).

Logs go to stderr, as before: stdout stays for what a command prints (``zimg generate``
prints the job's JSON there).

Prompts are customer data. Unless ``ZIMG_LOG_PROMPTS`` is on, a ``prompt`` or
``negative_prompt`` key is replaced by its length before rendering, whoever logged it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor

from .settings import Settings

Process = Literal["web", "worker", "inference", "cli"]
#: Keys whose value is customer text: redacted unless ``log_prompts``.
PROMPT_KEYS = ("prompt", "negative_prompt")
#: Loggers that say too much at INFO for a production log.
QUIET_LOGGERS = {"urllib3": logging.WARNING, "botocore": logging.WARNING, "PIL": logging.INFO}
#: Loggers a library sets to INFO itself (RQ, at import): they follow ``ZIMG_LOG_LEVEL`` instead.
LIBRARY_LEVELS = ("rq.worker", "rq.scheduler")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is *now* (a test's capture, a re-opened stream)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


class _Context:
    """What the processors need from the settings; module state because logging is process state."""

    process: str = "cli"
    log_prompts: bool = False


def _add_process(_logger: Any, _name: str, event: EventDict) -> EventDict:
    event.setdefault("process", _Context.process)
    return event


def redact_prompts(_logger: Any, _name: str, event: EventDict) -> EventDict:
    """Replace prompt text by its length (``prompt_chars``) unless ``ZIMG_LOG_PROMPTS`` is on."""
    if _Context.log_prompts:
        return event
    for key in PROMPT_KEYS:
        value = event.get(key)
        if isinstance(value, str):
            del event[key]
            event[f"{key}_chars"] = len(value)
    return event


def _shared_processors() -> list[Processor]:
    """Processors run for structlog and stdlib records alike, before rendering."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_process,
        redact_prompts,
        structlog.processors.StackInfoRenderer(),
    ]


def _renderer(json: bool) -> list[Processor]:
    if json:
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(sort_keys=False)]
    return [structlog.dev.ConsoleRenderer(colors=False, sort_keys=False)]


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(
    settings: Settings | None = None,
    process: Process = "cli",
    *,
    stream: TextIO | None = None,
    json: bool | None = None,
) -> None:
    """Route structlog and the standard library through one set of processors.

    ``stream`` defaults to the current ``sys.stderr``; ``json`` defaults to "the stream is
    not a terminal". Calling it again replaces the previous configuration (handlers that
    others installed, such as pytest's, are left alone).
    """
    settings = settings or Settings()
    _Context.process = process
    _Context.log_prompts = settings.log_prompts
    level = getattr(logging, settings.log_level.upper())
    if json is None:
        json = not _is_terminal(stream or sys.stderr)

    shared = _shared_processors()
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=False,  # configure may run again (tests; a process re-configured)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_renderer(json)],
    )
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(formatter)
    handler._zimg = True  # type: ignore[attr-defined]

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_zimg", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in LIBRARY_LEVELS:
        logging.getLogger(name).setLevel(level)
    for name, quiet in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(quiet, level))


def bind(**values: Any) -> None:
    """Bind ``values`` (``request_id``, ``job_id``) to every log line of this thread/task until :func:`unbind`."""
    structlog.contextvars.bind_contextvars(**values)


def unbind(*keys: str) -> None:
    structlog.contextvars.unbind_contextvars(*keys)


def gunicorn_logger_class() -> type:
    """A gunicorn ``logger_class`` whose error and access loggers propagate to our root handler.

    gunicorn gives its loggers their own plain-text handlers and stops propagation; this keeps
    its levels and messages but renders them like every other line of the process.
    """
    from gunicorn.glogging import Logger  # type: ignore[import-untyped]

    class StructuredGunicornLogger(Logger):
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for lg in (self.error_log, self.access_log):
                for h in list(lg.handlers):
                    lg.removeHandler(h)
                lg.propagate = True

    return StructuredGunicornLogger


def use_standard_logging_until_configured() -> None:
    """As a library (a Flask app importing zimg_queue), log through the standard library, never to stdout.

    Unconfigured, structlog prints every event to stdout, which mixes our log lines into a
    script's output. Until someone calls :func:`configure_logging` (our processes do) or
    configures structlog themselves (an app that uses it: we never override that), our events
    become ordinary ``logging`` records under the module's logger name, rendered as
    ``key=value`` text, prompts redacted: the host application's handlers and levels decide.
    """
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            redact_prompts,
            structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
