"""A small real Flask app on zimg-queue: a form enqueues a job, the page follows it live until the image is shown.

The view enqueues with the extension's producer (the same validation as everywhere), hands
the job's status URL to the page, and the page follows ``GET /api/v1/jobs/<id>/events``
(server-sent events: status, stage and step as they change) with ``EventSource`` until the
job is finished, then shows ``result.image_url``. No polling.

Run it next to a stack (``zimg up`` in another shell, ``source .venv/bin/activate`` in this one)::

    python examples/flask_app.py        # http://127.0.0.1:5000 ($PORT if set, or --port N)

It finds Redis as every zimg entry point does: ``ZIMG_REDIS_URL``, else the private Redis of a
running ``zimg up`` (see ``zimg_queue.connection``).

The example sets no ``ZIMG_API_TOKEN``: the page's own JavaScript calls the API. In your
app, put the blueprint behind your own login instead (see the README).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify, render_template_string, request, url_for

from zimg_queue import ValidationError
from zimg_queue.web import ZimgQueue
from zimg_queue.web.body import ApiError
from zimg_queue.web.origin import check_origin

zimg = ZimgQueue()

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>zimg-queue example</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }
  input[type=text] { width: 100%; padding: .4rem; } #errors { color: #b00; } img { max-width: 100%; margin-top: 1rem; }
</style></head>
<body>
<h1>Text to image</h1>
<form id="form" method="post" action="{{ url_for('generate') }}">
  <p><label>Prompt <input type="text" id="prompt" name="prompt" required maxlength="2000"></label></p>
  <p><label>Size <select id="size" name="size">
    {% for s in sizes %}<option value="{{ s }}">{{ s }} x {{ s }}</option>{% endfor %}
  </select></label>
  <button id="go" type="submit">Generate</button></p>
</form>
<p id="status" aria-live="polite"></p>
<ul id="errors"></ul>
<img id="result" alt="" hidden>
<script>
const $ = (id) => document.getElementById(id);
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("errors").replaceChildren(); $("result").hidden = true; $("go").disabled = true;
  const size = Number($("size").value);
  try {
    const answer = await fetch($("form").action, {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({prompt: $("prompt").value, width: size, height: size}),
    });
    const job = await answer.json();
    if (!answer.ok) { showErrors(job); $("go").disabled = false; return; }
    $("status").textContent = "queued";
    await follow(job);
  } catch (err) {
    $("status").textContent = "error: " + err;
    $("go").disabled = false;
  }
});
function showErrors(body) {
  $("status").textContent = body.message || "error";
  for (const e of body.errors || []) {
    const li = document.createElement("li"); li.textContent = e.field + ": " + e.message; $("errors").append(li);
  }
}
function follow(job) {
  // Server-sent events: one message per change of status, stage or step, until the job is final.
  // EventSource reconnects by itself (the server ends each stream after a while), resuming from the last event.
  return new Promise((resolve) => {
    const source = new EventSource(job.urls.get + "/events");
    const done = () => { source.close(); $("go").disabled = false; resolve(); };
    source.addEventListener("status", (event) => {
      const s = JSON.parse(event.data);
      const p = s.progress || {};
      const step = p.steps ? " step " + p.step + "/" + p.steps : "";
      const place = s.position != null ? " (" + s.position + " ahead)" : "";
      $("status").textContent = s.status + place + " " + (p.stage || "") + " " + (p.percent || 0) + "%" + step;
      $("status").dataset.stages = ($("status").dataset.stages || "") + s.status + ":" + (p.stage || "") + " ";
      if (s.status === "finished") {
        $("result").alt = s.request.prompt; $("result").src = s.result.image_url; $("result").hidden = false;
        $("status").textContent = "finished";
        done();
      } else if (["failed", "canceled", "stopped"].includes(s.status)) {
        $("status").textContent = s.status + ": " + (s.error || ""); done();
      }
    });
    source.addEventListener("end", done);
  });
}
</script>
</body>
</html>
"""

SIZES = (256, 512, 768, 1024)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The example app; ``config`` (``ZIMG_*`` keys) overrides the environment."""
    app = Flask(__name__)
    app.config.update(config or {})
    zimg.init_app(app, url_prefix="/api")  # the API at /api/v1/jobs, /api/healthz, ...

    @app.get("/")
    def index() -> str:
        return render_template_string(PAGE, sizes=SIZES)

    @app.post("/generate")
    def generate():
        """Enqueue from your own view: your checks here, then the producer's validation."""
        try:
            check_origin()  # this view takes plain form posts: refuse them from other sites (403)
        except ApiError as exc:
            return exc.response()
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            data = {"prompt": request.form.get("prompt", ""), "width": request.form.get("size", type=int)}
            data["height"] = data["width"]
        try:
            job_id = zimg.producer.enqueue(data)
        except ValidationError as exc:
            return jsonify(exc.to_dict()), 400
        status_url = url_for("zimg_queue.get_job", job_id=job_id)
        urls = {"get": status_url, "image": f"{status_url}/image", "cancel": f"{status_url}/cancel"}
        return jsonify(id=job_id, status="queued", urls=urls), 202

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 5000), help="default: $PORT, 5000")
    args = parser.parse_args()
    from waitress import serve

    serve(create_app(), host=args.host, port=args.port, threads=16)


if __name__ == "__main__":
    main()
