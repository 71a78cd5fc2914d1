// The zimg-queue console: one EventSource, each "snapshot" event redraws the page.
// Every value from the server goes in through textContent or setAttribute, never innerHTML:
// prompts are user input.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const root = document.getElementById("console");
const statusEl = document.getElementById("status");

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function drawQueues(queues, workers) {
  const body = document.querySelector("#queues tbody");
  body.replaceChildren(...queues.map((q) => {
    const row = el("tr");
    row.dataset.queue = q.name;
    for (const v of [q.name, q.queued, q.started, q.finished, q.failed, q.scheduled]) row.append(el("td", v));
    return row;
  }));
  const list = document.getElementById("workers");
  if (!workers.length) {
    list.replaceChildren(el("li", "no worker alive", "empty"));
    return;
  }
  list.replaceChildren(...workers.map((w) => {
    const item = el("li");
    item.title = w.name + (w.current_job ? ` running ${w.current_job}` : "");
    const job = w.current_job ? ` · job ${w.current_job.slice(0, 8)}` : "";
    item.append(el("b", w.name.slice(0, 12)), document.createTextNode(` ${w.state}${job}`));
    return item;
  }));
}

// A polyline per inference server over the sampled history; y from 0 to max.
function drawChart(svg, history, pick, max) {
  svg.replaceChildren();
  if (history.length < 1) return;
  const t1 = history[history.length - 1].t, t0 = t1 - Number(root.dataset.window || 300);
  const urls = [...new Set(history.flatMap((p) => p.servers.map((s) => s.url)))];
  const colors = ["#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777"];
  urls.forEach((url, i) => {
    const pts = [];
    for (const p of history) {
      const s = p.servers.find((x) => x.url === url);
      const v = s ? pick(s) : null;
      if (v === null || v === undefined) continue;
      const x = ((p.t - t0) / (t1 - t0)) * 300;
      const y = 88 - (Math.min(v, max) / max) * 84;
      pts.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    }
    if (!pts.length) return;
    const line = document.createElementNS(SVG, pts.length > 1 ? "polyline" : "circle");
    if (pts.length > 1) {
      line.setAttribute("points", pts.join(" "));
      line.setAttribute("fill", "none");
      line.setAttribute("stroke-width", "2");
      line.setAttribute("vector-effect", "non-scaling-stroke");
      line.setAttribute("stroke", colors[i % colors.length]);
    } else {
      const [x, y] = pts[0].split(",");
      line.setAttribute("cx", x); line.setAttribute("cy", y); line.setAttribute("r", "3");
      line.setAttribute("fill", colors[i % colors.length]);
    }
    svg.append(line);
  });
}

function latest(history, pick) {
  for (let i = history.length - 1; i >= 0; i--) {
    const values = history[i].servers.map(pick).filter((v) => v !== null && v !== undefined);
    if (values.length) return values.reduce((a, b) => a + b, 0) / values.length;
  }
  return null;
}

function drawGpu(history) {
  const busy = latest(history, (s) => s.busy);
  const batch = latest(history, (s) => s.batch);
  document.getElementById("busy-now").textContent = busy === null ? "–" : `${Math.round(busy * 100)} %`;
  document.getElementById("batch-now").textContent = batch === null ? "–" : batch.toFixed(1);
  drawChart(document.getElementById("busy-chart"), history, (s) => s.busy, 1);
  const maxBatch = Math.max(1, ...history.flatMap((p) => p.servers.map((s) => s.batch || 0)));
  drawChart(document.getElementById("batch-chart"), history, (s) => s.batch, maxBatch);
  const last = history.length ? history[history.length - 1].servers : [];
  document.getElementById("servers").textContent = last
    .map((s) => `${s.url}: ` + (s.up ? `${s.backend || "?"} backend, ${s.queue ?? 0} waiting` : "unreachable")
      + (s.backend === "sim" ? " (simulator: GPU time is simulated)" : ""))
    .join(" · ");
}

function seconds(v) {
  return v === undefined || v === null ? "–" : `${Number(v).toFixed(2)} s`;
}

function drawGallery(items) {
  const box = document.getElementById("gallery");
  if (!items.length) {
    box.replaceChildren(el("p", "no finished job yet", "empty"));
    return;
  }
  const existing = new Map([...box.querySelectorAll("figure")].map((f) => [f.dataset.job, f]));
  box.replaceChildren(...items.map((it) => {
    if (existing.has(it.id)) return existing.get(it.id); // keep loaded images: no flicker
    const fig = el("figure");
    fig.dataset.job = it.id;
    const img = el("img");
    img.setAttribute("src", it.image);
    img.setAttribute("alt", it.prompt || "");
    img.setAttribute("loading", "lazy");
    const cap = el("figcaption");
    cap.append(el("div", it.prompt, "prompt"));
    const t = it.timings || {};
    cap.append(el("div", `${it.width}×${it.height} · seed ${it.seed}` + (it.cache_hit ? " · cache hit" : "")));
    cap.append(el("div", `queued ${seconds(t.queued_s)} · inference ${seconds(t.inference_s)} · total ${seconds(t.total_s)}`));
    fig.append(img, cap);
    return fig;
  }));
}

function connect() {
  const source = new EventSource(root.dataset.events);
  source.addEventListener("open", () => { statusEl.textContent = "live"; statusEl.className = "live"; });
  source.addEventListener("error", () => { statusEl.textContent = "reconnecting…"; statusEl.className = "down"; });
  source.addEventListener("snapshot", (event) => {
    const snap = JSON.parse(event.data);
    drawQueues(snap.queues, snap.workers);
    drawGpu(snap.gpu);
    drawGallery(snap.gallery);
    statusEl.textContent = `live · ${new Date().toLocaleTimeString()}`;
    statusEl.className = "live";
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  });
  source.addEventListener("unavailable", (event) => {
    statusEl.textContent = `unavailable: ${JSON.parse(event.data).error}`;
    statusEl.className = "down";
  });
}

connect();
