"""The ``zimg`` command: run the pieces of the stack, and enqueue from a shell."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from .request import ValidationError
from .settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(redis_url=getattr(args, "redis_url", None))


def _producer(args: argparse.Namespace):
    from .queue import Producer
    from .redis_server import DEFAULT_URL

    settings = _settings(args)
    if not settings.redis_url:
        settings = settings.with_(redis_url=DEFAULT_URL)
    return Producer(settings=settings)


def cmd_inference_server(args: argparse.Namespace) -> int:
    from workers.inference.server import serve

    options: dict[str, Any] = {}
    if args.backend == "zimage":
        import os

        options["model"] = args.model or os.environ.get("ZIMG_MODEL")
        if not options["model"]:
            raise SystemExit("the zimage backend needs --model or ZIMG_MODEL (a folder or a hub id)")
    serve(
        _settings(args),
        backend_name=args.backend,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        backend_options=options,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.worker import run

    from .redis_server import DEFAULT_URL

    settings = _settings(args)
    run(settings.with_(redis_url=settings.redis_url or DEFAULT_URL), processes=args.processes, burst=args.burst)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    fields = {
        k: v
        for k, v in {
            "width": args.width,
            "height": args.height,
            "seed": args.seed,
            "output_format": args.format,
            "negative_prompt": args.negative_prompt,
            "num_inference_steps": args.steps,
        }.items()
        if v is not None
    }
    producer = _producer(args)
    job_id = producer.enqueue(args.prompt, priority=args.priority, job_id=args.id, **fields)
    if not args.wait:
        print(job_id)
        return 0
    status = producer.wait(job_id, timeout=args.timeout)
    return _print_final(status, args.output)


def _print_final(status: dict[str, Any], output: str | None = None) -> int:
    if status["status"] == "finished":
        path = status["result"]["path"]
        if output:
            import shutil

            shutil.copyfile(path, output)
            path = output
        print(path)
        return 0
    print(f"job {status['id']} is {status['status']}: {status.get('error') or 'not done yet'}", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_producer(args).status(args.id), indent=2))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    print(json.dumps(_producer(args).cancel(args.id), indent=2))
    return 0


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from workers.inference.tiny_model import make_tiny_model

    print(make_tiny_model(args.directory))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .stack import Stack

    has_web = importlib.util.find_spec("zimg_queue.web") is not None
    stack = Stack(_settings(args), workers=args.workers, web=has_web and not args.no_web, web_port=args.web_port)
    stack.inference_port = args.inference_port
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        for name, url in stack.urls().items():
            print(f"{name:>10}: {url}", flush=True)
        if args.demo:
            from .queue import Producer

            producer = Producer(settings=stack.settings)
            job_id = producer.enqueue(args.demo_prompt, width=512, height=512, seed=42)
            print(f"demo job {job_id}: {args.demo_prompt!r}", flush=True)
            return _print_final(producer.wait(job_id, timeout=120))
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zimg", description="Z-Image-Turbo behind an RQ job queue.")
    parser.add_argument("--redis-url", help="default: $ZIMG_REDIS_URL, else redis://127.0.0.1:6379/0")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inference-server", help="serve POST /v1/generate with dynamic batching")
    p.add_argument("--backend", default="sim", choices=["sim", "zimage"])
    p.add_argument("--model", help="zimage backend: local folder or hub id (default $ZIMG_MODEL)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
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
    p.add_argument("--negative-prompt")
    p.add_argument("--format", choices=["png", "jpeg", "webp"])
    p.add_argument("--priority", default="normal", choices=["high", "normal", "low"])
    p.add_argument("--id", help="job id (idempotency: never enqueued twice)")
    p.add_argument("--wait", action="store_true", help="wait and print the image path")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--output", "-o", help="copy the finished image here")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("status", help="print a job's status as JSON")
    p.add_argument("id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel a queued job or stop a started one")
    p.add_argument("id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("up", help="run the whole local stack")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--web-port", type=int, default=8000)
    p.add_argument("--inference-port", type=int, default=7860)
    p.add_argument("--no-web", action="store_true")
    p.add_argument("--demo", action="store_true", help="run one demo job, print its path, stop")
    p.add_argument("--demo-prompt", default="a cat on a windowsill")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("make-tiny-model", help="build a tiny random-weight Z-Image pipeline (offline tests)")
    p.add_argument("directory")
    p.set_defaults(func=cmd_make_tiny_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as exc:
        print(f"invalid request: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
