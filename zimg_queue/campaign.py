"""Campaigns: every item of a CSV/JSONL file x every preset, as one RQ group, idempotently.

A campaign is named. Each job's id is ``<campaign>__<item key>__<preset>``, so running
the same campaign again enqueues only what is missing: finished and in-flight jobs are
left alone, failed ones are re-queued, and expired ones are re-enqueued (their images
are still in the content-addressed store, so no GPU time is spent). A job whose preset
fixes no seed gets one derived from its item key and preset, so a re-run asks for
exactly the same image.

All jobs go in with one ``enqueue_many`` pipeline as one ``rq.group.Group`` named
after the campaign; the (item, preset, job id) plan is kept in Redis under
``zimg:campaign:<name>``, which is what ``GET /v1/campaigns/<name>`` and the manifest read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from .presets import load_presets
from .queue import Producer
from .request import MAX_SEED, ValidationError
from .status import FINAL, now_iso

NAME_RE = re.compile(r"^[A-Za-z0-9-]+(_[A-Za-z0-9-]+)*$")
KEY_COLUMNS = ("key", "id", "sku")
INT_FIELDS = {"width", "height", "seed", "num_inference_steps"}
RETRYABLE = {JobStatus.FAILED.value, JobStatus.STOPPED.value}
DOC_KEY = "zimg:campaign:{}"


def check_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > 64 or not NAME_RE.match(name):
        raise ValidationError.single("campaign", "must be 1-64 characters of A-Z, a-z, 0-9, '-', single '_'")
    return name


def slug(text: str) -> str:
    """A campaign name made from free text (a file name): ``products 2026.csv`` -> ``products-2026``."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:64] or "campaign"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class Items(list):
    """Rows read from a file, with where each came from: ``lines[i]`` is row ``i``'s line in ``source``.

    A plain ``list`` of rows works everywhere too; then items are named ``item N``.
    """

    source: str = ""
    lines: list[int]

    def __init__(self, rows: Iterable[dict[str, Any]] = (), source: str = "", lines: Sequence[int] = ()):
        super().__init__(rows)
        self.source = source
        self.lines = list(lines)


def _jsonl(text: str, name: str) -> Items:
    rows, lines, errors = [], [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append({"field": f"{name} line {n}", "message": f"not valid JSON ({exc.msg}, column {exc.colno})"})
            continue
        if not isinstance(row, dict):
            errors.append({"field": f"{name} line {n}", "message": "must be a JSON object"})
            continue
        rows.append(row)
        lines.append(n)
    if errors:  # every bad line at once
        raise ValidationError(errors)
    return Items(rows, name, lines)


def load_items(path: str | Path) -> Items:
    """Rows of a ``.csv`` (header row), ``.jsonl`` (one object per line), ``.json`` (a list) or text file.

    A text file is one prompt per line (blank lines and ``#`` comments skipped). The result
    remembers each row's line, so errors and summaries can say ``prompts.txt line 3``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {p} (give the path of a CSV, JSONL or text file of prompts)") from None
    suffix = p.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        rows, lines = [], []
        for row in reader:
            rows.append({k.strip(): (v or "").strip() for k, v in row.items() if k})
            lines.append(reader.line_num)
        return Items(rows, p.name, lines)
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl(text, p.name)
    if suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValidationError.single("items", f"{p.name}: must be a JSON list of objects")
        return Items(data, p.name)
    numbered = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    kept = [(n, line) for n, line in numbered if line and not line.startswith("#")]
    return Items([{"prompt": line} for _, line in kept], p.name, [n for n, _ in kept])


def item_key(row: Mapping[str, Any]) -> str:
    """The row's ``key``/``id``/``sku`` column, else a digest of its content (stable if rows are reordered)."""
    for column in KEY_COLUMNS:
        if str(row.get(column) or "").strip():
            return str(row[column]).strip()
    return _digest(json.dumps(row, sort_keys=True, ensure_ascii=False))[:12]


def item_label(row: Mapping[str, Any], index: int, items: Sequence[Any]) -> str:
    """What a person calls the item: its key column, else ``line N`` of its file, else ``item N``."""
    for column in KEY_COLUMNS:
        if str(row.get(column) or "").strip():
            return str(row[column]).strip()
    lines = getattr(items, "lines", None)
    return f"line {lines[index]}" if lines and index < len(lines) else f"item {index + 1}"


def _where(items: Sequence[Any], index: int, label: str, preset: str | None) -> str:
    """``products.csv line 2 (TS-001), preset main``: how an error names an item."""
    source, lines = getattr(items, "source", ""), getattr(items, "lines", None)
    place = f"{source} line {lines[index]}" if source and lines and index < len(lines) else label
    if not place.endswith(label):
        place += f" ({label})"
    return f"{place}, preset {preset}" if preset else place


def job_id_for(campaign: str, key: str, preset: str | None) -> str:
    """``<campaign>__<key>__<preset>``; keys with other characters get a slug plus a digest suffix."""
    slug = re.sub(r"[^A-Za-z0-9-]+", "_", key).strip("_")[:40] or "item"
    if slug != key:
        slug = f"{slug}-{_digest(key)[:8]}"
    job_id = "__".join(p for p in (campaign, slug, preset) if p)
    return job_id if len(job_id) <= 128 else f"{campaign}__{_digest(key, preset or '')[:40]}"


def _seed(key: str, preset: str | None) -> int:
    return int(_digest(key, preset or "")[:8], 16) % (MAX_SEED + 1)


def _request_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A CSV/JSONL row as request fields (numbers from CSV text), without the key columns."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in KEY_COLUMNS or v in ("", None):
            continue
        if k in INT_FIELDS and isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        elif k == "guidance_scale" and isinstance(v, str):
            v = float(v)
        out[k] = v
    return out


@dataclass(frozen=True)
class Entry:
    item: str
    preset: str | None
    job_id: str
    #: How errors name this entry (file, line, key, preset).
    where: str = ""


@dataclass
class Campaign:
    """A plan of jobs; :meth:`start` enqueues what is missing and returns the counts."""

    #: ``None`` plans without Redis (``zimg batch --api``); presets then come from ``presets_file``.
    producer: Producer | None
    name: str
    items: Sequence[Mapping[str, Any]]
    presets: Sequence[str] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    priority: str = "normal"
    #: The presets file when planning without a producer (default ``ZIMG_PRESETS``).
    presets_file: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.items:
            raise ValidationError.single("items", "the campaign has no items")

    def plan(self) -> tuple[list[Entry], list[dict[str, Any]], list[dict[str, Any]]]:
        entries: list[Entry] = []
        requests: list[dict[str, Any]] = []
        options: list[dict[str, Any]] = []
        presets: list[str | None] = [*self.presets] or [None]
        seen: dict[str, str] = {}
        duplicates: list[dict[str, str]] = []
        for index, row in enumerate(self.items):
            key, label = item_key(row), item_label(row, index, self.items)
            where = _where(self.items, index, label, None)
            if key in seen:
                same = "key" if label == key else "content"
                duplicates.append({"field": where, "message": f"has the same {same} as {seen[key]}: remove one"})
                continue
            seen[key] = where
            for preset in presets:
                job_id = job_id_for(self.name, key, preset)
                entries.append(Entry(label, preset, job_id, _where(self.items, index, label, preset)))
                if preset is None:
                    requests.append({"seed": _seed(key, None), **_request_row(row)})
                    options.append(dict(self.options))
                else:
                    # One row feeds several presets: give each only the placeholders it takes.
                    spec = load_presets(self.producer.presets_path if self.producer else self.presets_file).get(preset)
                    values = {k: v for k, v in row.items() if k in spec.placeholders}
                    requests.append({} if "seed" in spec.fields else {"seed": _seed(key, preset)})
                    options.append({**self.options, "preset": preset, "placeholders": values})
        if duplicates:
            raise ValidationError(duplicates)
        return entries, requests, options

    def start(self) -> dict[str, Any]:
        """Enqueue every missing job in one round trip; re-queue failed ones. Returns what it did."""
        assert self.producer is not None, "start() enqueues through Redis: give the campaign a producer"
        entries, requests, options = self.plan()
        conn = self.producer.connection
        ids = [e.job_id for e in entries]
        statuses = fetch_statuses(conn, ids)
        retry = [i for i, s in zip(ids, statuses) if s in RETRYABLE]
        todo = [i for i, s in enumerate(statuses) if s is None]
        self._save(entries)
        try:
            self.producer.enqueue_many(
                [requests[i] for i in todo],
                job_ids=[ids[i] for i in todo],
                options=[options[i] for i in todo],
                priority=self.priority,
                group_id=self.name,
            )
        except ValidationError as exc:  # name the file, line, item and preset, not the index among the missing ones
            errors = []
            for e in exc.errors:
                index, _, rest = e["field"].partition("].")
                entry = entries[todo[int(index.lstrip("["))]]
                errors.append({**e, "field": f"{entry.where}: {rest}"})
            raise ValidationError(errors) from None
        for job_id in retry:
            Job.fetch(job_id, connection=conn, serializer=JSONSerializer).requeue()
        return {"campaign": self.name, "jobs": len(ids), "enqueued": len(todo), "requeued": len(retry),
                "skipped": len(ids) - len(todo) - len(retry)}  # fmt: skip

    def _save(self, entries: list[Entry]) -> None:
        assert self.producer is not None
        doc = {
            "name": self.name,
            "presets": list(self.presets),
            "items": len(self.items),
            "started_at": now_iso(),
            "entries": [[e.item, e.preset, e.job_id] for e in entries],
        }
        conn = self.producer.connection
        conn.set(DOC_KEY.format(self.name), json.dumps(doc), ex=max(self.producer.settings.result_ttl, 3600))


def fetch_statuses(conn: Any, job_ids: Sequence[str]) -> list[str | None]:
    """Each job's status (``None`` when no such job), in one pipelined round trip."""
    with conn.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(Job.key_for(job_id), "status")
        return [s.decode() if s else None for s in pipe.execute()]


def load_doc(conn: Any, name: str) -> dict[str, Any]:
    """The campaign's saved plan, or :class:`NoSuchJobError` (the API answers 404)."""
    raw = conn.get(DOC_KEY.format(check_name(name)))
    if not raw:
        raise NoSuchJobError(f"no campaign named {name!r}")
    return json.loads(raw)


def progress(conn: Any, name: str) -> dict[str, Any]:
    """Counts by status: cheap enough to poll (one round trip)."""
    doc = load_doc(conn, name)
    statuses = fetch_statuses(conn, [e[2] for e in doc["entries"]])
    counts = Counter(s or "expired" for s in statuses)
    done = sum(counts[s.value] for s in FINAL) + counts["expired"]
    return {
        "name": name,
        "total": len(statuses),
        "done": done,
        "counts": dict(counts),
        "complete": done == len(statuses),
    }


def manifest(conn: Any, name: str) -> dict[str, Any]:
    """The campaign's progress plus one row per job: item, preset, job id, status, path/url or error."""
    from .status import job_status

    doc = load_doc(conn, name)
    rows = []
    jobs = Job.fetch_many([e[2] for e in doc["entries"]], connection=conn, serializer=JSONSerializer)
    for (item, preset, job_id), job in zip(doc["entries"], jobs):
        row = {"item": item, "preset": preset or "", "job_id": job_id, "status": "expired", "path": "", "url": "",
               "thumbnail": "", "error": ""}  # fmt: skip
        if job is not None:
            status = job_status(job)
            result = status["result"] or {}
            thumbs = [f["path"] for f in result.get("files", []) if f.get("role") == "thumbnail"]
            row.update(status=status["status"], path=result.get("path", ""), url=result.get("url", ""),
                       thumbnail=thumbs[0] if thumbs else "", error=status["error"] or "")  # fmt: skip
        rows.append(row)
    counts = Counter(r["status"] for r in rows)
    return {"name": name, "presets": doc["presets"], "started_at": doc["started_at"], "total": len(rows),
            "counts": dict(counts), "rows": rows}  # fmt: skip


def write_manifest(data: Mapping[str, Any], path: str | Path) -> Path:
    """``.json``: the whole manifest; anything else: CSV of the rows."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() == ".json":
        p.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return p
    rows = data["rows"]
    with p.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["item", "preset", "job_id", "status"])
        writer.writeheader()
        writer.writerows(rows)
    return p


def wait(
    conn: Any, name: str, *, timeout: float = 3600, interval: float = 0.5,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Poll :func:`progress` until every job is final (or ``timeout``); report each change to ``on_progress``."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        state = progress(conn, name)
        if on_progress and state != last:
            on_progress(state)
        last = state
        if state["complete"] or time.monotonic() >= deadline:
            return state
        time.sleep(interval)


def progress_bar(stream: Any = None, width: int = 30) -> Callable[[dict[str, Any]], None]:
    """An ``on_progress`` that draws ``[#####-----] 12/150 finished 11 failed 1`` on one line, on a terminal only."""
    import sys

    out = stream or sys.stderr
    try:
        terminal = out.isatty()
    except (AttributeError, ValueError):
        terminal = False

    def draw(state: dict[str, Any]) -> None:
        if not terminal:  # a log file or a pipe gets the summary at the end, never \r sequences
            return
        total = max(1, state["total"])
        filled = int(width * state["done"] / total)
        counts = " ".join(f"{k} {v}" for k, v in sorted(state["counts"].items()))
        end = "\n" if state["complete"] else ""
        out.write(f"\r[{'#' * filled}{'-' * (width - filled)}] {state['done']}/{state['total']}  {counts}{end}")
        out.flush()

    return draw


def run(
    producer: Producer, name: str, items: str | Path | Iterable[Mapping[str, Any]], presets: Sequence[str] = (), *,
    options: Mapping[str, Any] | None = None, manifest_path: str | Path | None = None, timeout: float = 3600,
    on_progress: Callable[[dict[str, Any]], None] | None = None, wait_for_end: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """The whole campaign in one call: enqueue, wait, write the manifest; returns the manifest."""
    rows = load_items(items) if isinstance(items, (str, Path)) else items if isinstance(items, Items) else list(items)
    started = Campaign(producer, name, rows, list(presets), dict(options or {})).start()
    if wait_for_end:
        wait(producer.connection, name, timeout=timeout, on_progress=on_progress)
    data = {**manifest(producer.connection, name), "run": started}
    if manifest_path:
        write_manifest(data, manifest_path)
    return data
