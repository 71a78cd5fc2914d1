"""The ``zimg`` command: run the pieces of the stack, and enqueue from a shell.

This module is the parser, the commands that run the stack's processes, and the one place a
user's mistake becomes one line and an exit code (:func:`main`). The job commands (generate,
status, cancel, batch) and ``up``'s first-run pieces live in :mod:`zimg_queue.commands`.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError

from .commands.batch import cmd_batch
from .commands.jobs import cmd_cancel, cmd_generate, cmd_status
from .connection import RedisUnavailable
from .logs import configure_logging
from .processes import die_with_supervisor
from .request import ValidationError
from .settings import Settings, SettingsError

REDIS_URL_HELP = (
    "the Redis to use (before or after the subcommand); default $ZIMG_REDIS_URL (environment, .env), "
    "else a running `zimg up`'s private Redis, else redis://127.0.0.1:6379/0 with a warning"
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zimg-queue")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _settings(args: argparse.Namespace) -> Settings:
    """The ``ZIMG_*`` settings, with ``--redis-url`` (before or after the subcommand) as the Redis URL if given."""
    settings = Settings.from_env()
    flag = getattr(args, "redis_url", None)
    return settings.with_(redis_url=flag) if flag else settings


def _redis_settings(args: argparse.Namespace) -> Settings:
    """Settings with the Redis every entry point agrees on (``zimg_queue.connection.resolve_redis_url``)."""
    return Settings.from_env().with_default_redis(flag=getattr(args, "redis_url", None))


def cmd_inference_server(args: argparse.Namespace) -> int:
    from workers.inference.server import serve

    options: dict[str, Any] = {}
    if args.backend == "zimage":
        options["model"] = args.model or _settings(args).model
        if not options["model"]:
            raise SystemExit("the zimage backend needs --model or ZIMG_MODEL (a folder or a hub id)")
        speed = {"device": args.device, "dtype": args.dtype, "attention": args.attention, "compile": args.compile}
        options.update({k: v for k, v in speed.items() if v}, warmup_sizes=args.warmup_sizes)
    serve(
        _settings(args),
        backend_name=args.backend,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_batch_pixels=args.max_batch_pixels,
        backend_options=options,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.worker import run

    settings = _redis_settings(args)
    run(settings, processes=args.processes, burst=args.burst, logging_level=settings.log_level.upper())
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    import os

    from .web.serve import serve

    if getattr(args, "redis_url", None):  # the app (in every gunicorn process) reads its settings from here
        os.environ.update({"ZIMG_REDIS_URL": _redis_settings(args).redis_url or ""})

    serve(args.host, args.port, server=args.server, processes=args.processes, threads=args.threads)
    return 0


def cmd_cron(args: argparse.Namespace) -> int:
    from .schedules import run_cron

    return run_cron(_redis_settings(args), presets=args.presets, idle=args.idle)


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from workers.inference.tiny_model import make_tiny_model

    print(make_tiny_model(args.directory))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .gpus import parse_gpus
    from .stack import Stack

    has_web = importlib.util.find_spec("zimg_queue.web") is not None
    gpus = parse_gpus(args.gpus if args.gpus is not None else _settings(args).gpus)
    workers = args.workers or (16 if _settings(args).model else 2) * max(1, len(gpus))  # the default is per GPU
    if args.procfile:  # the same layout for a Procfile runner or a service manager
        from .gpus import layout, procfile

        backend = "zimage" if _settings(args).model else "sim"
        print(procfile(layout(gpus or ["0"], args.inference_port, workers), backend))
        return 0
    stack = Stack(_settings(args), workers=workers, web=has_web and not args.no_web, web_port=args.web_port)
    stack.gpus = gpus
    stack.inference_port = args.inference_port
    if args.demo:  # a one-shot: nothing outside needs its servers, so no web and no fixed port to collide on
        from .redis_server import free_port

        stack.web, stack.inference_port = False, free_port()
        demo_log = Path(stack.settings.data_dir).resolve() / "logs" / "demo.log"
        demo_log.parent.mkdir(parents=True, exist_ok=True)
        stack.log = demo_log.open("ab")  # the servers' logs go here: the terminal shows the demo and its summary
        print(f"starting Redis, the sim inference server and {workers} workers (their logs: {demo_log})", flush=True)
    else:
        from .commands.up import check_port

        check_port(stack.inference_port, "--inference-port", "the inference server")
        for i, gpu in enumerate(gpus[1:], start=1):  # --gpus: GPU i serves on --inference-port + i
            check_port(stack.inference_port + i, "--inference-port", f"GPU {gpu}'s inference server")
        if stack.web:
            check_port(stack.web_port, "--web-port", "the web API")
    if stack.settings.redis_url:  # a Redis we were told to use must answer now, not after every process started
        from .connection import require, resolve_redis_url

        require(resolve_redis_url(Settings.from_env(), flag=getattr(args, "redis_url", None)))
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    # A closed terminal sends SIGHUP: stop the stack as on Ctrl-C. Left to its default, zimg up died at once and
    # left its private Redis (in a session of its own) running, and gunicorn (SIGHUP: reload) too.
    signal.signal(signal.SIGHUP, on_signal)
    try:
        stack.start()
        for name, url in () if args.demo else stack.urls().items():  # the demo's servers stop with it: no URLs
            print(f"{name:>10}: {url}", flush=True)
        if args.demo:
            from .commands.up import demo_summary
            from .queue import Producer

            producer = Producer(settings=stack.settings)
            job_id = producer.enqueue(args.demo_prompt, width=512, height=512, seed=42)
            print(f"demo job {job_id}: {args.demo_prompt!r}", flush=True)
            return demo_summary(producer.wait(job_id, timeout=120))
        print("stack is up; Ctrl-C stops it", flush=True)
        while not stopping:
            dead = stack.dead()
            if dead:
                print(f"process exited: {', '.join(dead)}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        if stack.log is not None:
            stack.log.close()
    return 0


#: Which ``process`` field a command's log lines carry.
PROCESS_OF_COMMAND: dict[str, Any] = {"web": "web", "worker": "worker", "inference-server": "inference"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zimg", description="Z-Image-Turbo behind an RQ job queue.")
    parser.add_argument("--redis-url", help=REDIS_URL_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inference-server", help="serve POST /v1/generate with dynamic batching")
    p.add_argument("--backend", default="sim", choices=["sim", "zimage"])
    p.add_argument("--model", help="zimage backend: local folder or hub id (default $ZIMG_MODEL)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=0.0, help="after a batch, wait this long for its clients")
    p.add_argument(
        "--max-queue", type=int, help="requests waiting beyond this get 503 (default 4 x --max-batch, at least 16)"
    )
    p.add_argument("--max-batch-pixels", type=int, default=0, help="pixel budget of one batch (0: none)")
    p.add_argument("--device", help="zimage: cuda, cuda:1, cpu (default cuda when available)")
    p.add_argument("--dtype", help="zimage: bf16, fp16, fp32 (default bf16 on cuda, fp32 on cpu)")
    p.add_argument("--attention", help="zimage: a diffusers attention backend (default native SDPA)")
    p.add_argument("--compile", nargs="?", const=True, default=False, help="zimage: regional torch.compile")
    p.add_argument("--warmup-sizes", help="zimage: WxH list run once at start-up (default 64x64)")
    p.set_defaults(func=cmd_inference_server)

    p = sub.add_parser("worker", help="run RQ workers on the zimg queues")
    p.add_argument("--processes", "-n", type=int, default=1)
    p.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("generate", help="enqueue one image job")
    p.add_argument("prompt")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float, help="must be 0.0 for Z-Image-Turbo (the validator says why)")
    p.add_argument("--negative-prompt")
    p.add_argument("--format", choices=["png", "jpeg", "webp"])
    p.add_argument("--priority", default="normal", choices=["high", "normal", "low"])
    p.add_argument("--id", help="job id (idempotency: never enqueued twice)")
    p.add_argument("--wait", action="store_true", help="wait (stage and step on a terminal), print the image path")
    p.add_argument("--json", action="store_true", help="print the job id, or with --wait its final status, as JSON")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--output", "-o", help="copy the finished image here")
    p.add_argument("--api", metavar="URL", help="use a zimg web API instead of Redis (token: $ZIMG_API_TOKEN)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("status", help="print a job's status")
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="the whole status as JSON")
    p.add_argument("--api", metavar="URL", help="use a zimg web API instead of Redis (token: $ZIMG_API_TOKEN)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel a queued job or stop a started one")
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="the job's status after cancelling, as JSON")
    p.add_argument("--api", metavar="URL", help="use a zimg web API instead of Redis (token: $ZIMG_API_TOKEN)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("web", help="serve the HTTP API and rq-dashboard (/rq/)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--server", choices=["gunicorn", "waitress"], help="default: gunicorn if installed")
    p.add_argument("--processes", type=int, help="gunicorn worker processes (default: one per core)")
    p.add_argument("--threads", type=int, default=16, help="threads per process (?wait holds one)")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("up", help="run the whole local stack")
    p.add_argument(
        "--workers",
        type=int,
        help="worker processes; default 2 on the sim backend, 16 with ZIMG_MODEL: twice the batch size, so a "
        "full batch is always waiting when the GPU frees up (measured: 0.72 -> 0.93 of ideal throughput)",
    )
    p.add_argument("--web-port", type=int, default=8000)
    p.add_argument("--inference-port", type=int, default=7860, help="with --gpus, GPU i serves on this port + i")
    p.add_argument(
        "--gpus",
        help="`0,1,...` or `all` (default $ZIMG_GPUS): one inference server per GPU, the workers spread over them "
        "(--workers is then the total; its default is per GPU)",
    )
    p.add_argument("--procfile", action="store_true", help="print the inference/worker Procfile lines of this layout")
    p.add_argument("--no-web", action="store_true")
    p.add_argument("--demo", action="store_true", help="run one demo job, print its path, stop")
    p.add_argument("--demo-prompt", default="a cat on a windowsill")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("batch", help="a campaign: every item of FILE x every preset, one RQ group, a manifest")
    p.add_argument("file", help="CSV or JSONL of items (placeholders or request fields), or one prompt per line")
    p.add_argument("--presets", help="presets TOML file (default $ZIMG_PRESETS); workers need the same file")
    p.add_argument("--preset", action="append", help="preset to use (repeatable; default: all in --presets)")
    p.add_argument("--campaign", help="campaign name: re-running it skips finished jobs (default: FILE's name)")
    p.add_argument("--manifest", help="write the manifest here (.csv or .json)")
    p.add_argument("--watermark", help="watermark name for every image (configured by the operator)")
    p.add_argument("--format", choices=["png", "jpeg", "webp"], help="convert every image to this format")
    p.add_argument("--quality", type=int, help="jpeg/webp quality (1-100)")
    p.add_argument("--thumbnail", type=int, help="also write a thumbnail this many pixels on its longest side")
    p.add_argument("--webhook-url", help="POST each job's status here when it ends (signed)")
    p.add_argument("--timeout", type=float, default=6 * 3600)
    p.add_argument("--no-wait", action="store_true", help="enqueue and return at once")
    p.add_argument("--json", action="store_true", help="print the manifest (counts and rows) as JSON")
    p.add_argument("--api", metavar="URL", help="use a zimg web API instead of Redis (token: $ZIMG_API_TOKEN)")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("cron", help="run the campaigns of [schedules] in the presets file on RQ's CronScheduler")
    p.add_argument("--presets", help="presets TOML file with [schedules.*] (default $ZIMG_PRESETS)")
    p.add_argument(
        "--idle", action="store_true", help="with no schedules, stay up idle (Procfile runners stop all on exit)"
    )
    p.set_defaults(func=cmd_cron)

    p = sub.add_parser("make-tiny-model", help="build a tiny random-weight Z-Image pipeline (offline tests)")
    p.add_argument("directory")
    p.set_defaults(func=cmd_make_tiny_model)
    for subparser in sub.choices.values():  # --redis-url also after the subcommand's name
        subparser.add_argument("--redis-url", default=argparse.SUPPRESS, help=REDIS_URL_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    die_with_supervisor()  # a child of `zimg up` stops when it dies
    args = build_parser().parse_args(argv)
    try:
        configure_logging(_settings(args), process=PROCESS_OF_COMMAND.get(args.command, "cli"))
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except NoSuchJobError:
        what = f"no job {args.id!r}" if getattr(args, "id", None) else "no such job"
        print(f"{what}: check the id (`zimg generate` prints it; jobs are kept ZIMG_RESULT_TTL s)", file=sys.stderr)
        return 1
    except RedisUnavailable as exc:  # says which Redis, where that choice came from, and what to do
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:  # lost mid-way, after retries
        print(f"error: Redis: {exc} (`zimg up` starts one; ZIMG_REDIS_URL or --redis-url choose one)", file=sys.stderr)
        return 1
    except SettingsError as exc:
        print(f"bad setting: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"invalid request: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        from .presets import PresetError

        if not isinstance(exc, PresetError):
            raise
        print(f"presets file: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # includes requests' errors from --api (ApiClientError is one)
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
