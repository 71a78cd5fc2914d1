"""``zimg batch``: a file of prompts, or a campaign (items x presets), over Redis or ``--api``.

Over Redis the whole plan goes in one round trip as one RQ group (:mod:`zimg_queue.campaign`); with
``--api URL`` the same plan and job ids go one ``POST /v1/jobs`` each, with idempotency keys. Either
way: a progress bar on a terminal only, then a summary table (or ``--json``) and the manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .. import campaign
from ..settings import Settings
from .common import producer_for


def cmd_batch(args: argparse.Namespace) -> int:
    """Items (CSV/JSONL/one prompt per line) x presets as one campaign: progress bar, then a manifest."""
    if args.api:
        return _batch_over_api(args)
    producer = producer_for(args)
    presets_file = args.presets or producer.settings.presets  # --presets, else $ZIMG_PRESETS
    if presets_file:
        producer.presets_path = str(Path(presets_file).resolve())
    name = args.campaign or campaign.slug(Path(args.file).stem)
    options = _batch_options(args)
    if presets_file and not args.preset:
        from ..presets import load_presets

        args.preset = sorted(load_presets(producer.presets_path).presets)
    data = campaign.run(
        producer,
        name,
        args.file,
        args.preset or (),
        options=options,
        manifest_path=args.manifest,
        timeout=args.timeout,
        on_progress=None if args.no_wait else campaign.progress_bar(),
        wait_for_end=not args.no_wait,
    )
    run = data["run"]
    print(
        f"campaign {name}: {run['jobs']} jobs ({run['enqueued']} enqueued, {run['requeued']} re-queued, "
        f"{run['skipped']} already there); {data['counts']}",
        file=sys.stderr,
    )
    if args.json:  # counts, the run and one row per job, for scripts
        print(json.dumps(data, indent=2, default=str))
    elif not args.no_wait:
        _print_summary(data["rows"])
        if args.manifest:
            print(f"manifest: {args.manifest}")
    if args.no_wait:
        return 0
    return 0 if data["counts"].get("finished", 0) == data["total"] else 1


def _batch_options(args: argparse.Namespace) -> dict[str, Any]:
    """The job options ``zimg batch``'s flags ask for (post-processing, webhook)."""
    post: dict[str, Any] = {k: v for k, v in {"format": args.format, "thumbnail": args.thumbnail}.items() if v}
    if args.watermark:
        post["watermark"] = {"name": args.watermark}
    if args.quality:
        post["quality"] = args.quality
    return {k: v for k, v in {"postprocess": post, "webhook_url": args.webhook_url}.items() if v}


def _batch_over_api(args: argparse.Namespace) -> int:
    """``zimg batch --api URL``: the same plan and job ids, sent one ``POST /v1/jobs`` each (idempotent keys)."""
    from ..web.client import ApiClient

    client = ApiClient(args.api)
    name = args.campaign or campaign.slug(Path(args.file).stem)
    presets_file = args.presets or Settings.from_env().presets
    if presets_file:  # read here only for each preset's placeholders; the server expands its own copy
        presets_file = str(Path(presets_file).resolve())
        if not args.preset:
            from ..presets import load_presets

            args.preset = sorted(load_presets(presets_file).presets)
    plan = campaign.Campaign(
        None, name, campaign.load_items(args.file), args.preset or (), _batch_options(args), presets_file=presets_file
    )
    entries, requests, job_options = plan.plan()
    for entry, request, opts in zip(entries, requests, job_options, strict=True):
        client.enqueue({**request, **({"options": opts} if opts else {})}, job_id=entry.job_id)
    if args.no_wait:
        print("\n".join(e.job_id for e in entries))
        return 0
    draw = campaign.progress_bar()
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for entry in entries:
        status = client.wait(entry.job_id, timeout=args.timeout)
        counts[status["status"]] = counts.get(status["status"], 0) + 1
        result = status.get("result") or {}
        rows.append({"item": entry.item, "preset": entry.preset, "job_id": entry.job_id, "status": status["status"],
                     "path": result.get("path"), "error": status.get("error")})  # fmt: skip
        draw({"total": len(entries), "done": len(rows), "counts": counts, "complete": len(rows) == len(entries)})
    if args.json:
        print(json.dumps({"name": name, "total": len(rows), "counts": counts, "rows": rows}, indent=2))
    else:
        _print_summary(rows)
    return 0 if counts.get("finished", 0) == len(entries) else 1


def _print_summary(rows: list[dict[str, Any]]) -> None:
    """One line per job: item, preset, status, then the image path or the failure's reason."""
    table = [("item", "preset", "status", "path or error")]
    table += [
        (str(r["item"]), str(r.get("preset") or "-"), str(r["status"]), str(r.get("path") or r.get("error") or ""))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
