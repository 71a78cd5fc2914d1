"""Prometheus metrics: read from Redis at scrape time (workers are other processes), and the inference server's own."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from workers.inference.metrics import InferenceMetrics
from zimg_queue import campaign
from zimg_queue.metrics import exposition
from zimg_queue.queue import Producer


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_histograms_depth_and_workers_come_from_redis(procs, producer: Producer, redis_conn):
    inference = procs.inference(latency_a="0.05", latency_b="0", max_wait_ms="50")
    procs.worker(processes=1)
    ids = producer.enqueue_many([{"prompt": f"p{i}", "width": 64, "height": 64} for i in range(4)])
    for job_id in ids:
        assert producer.wait(job_id, timeout=30)["status"] == "finished"
    producer.wait(producer.enqueue("p0", width=64, height=64, seed=producer.status(ids[0])["request"]["seed"]))
    failing = producer.enqueue("bad", width=64, height=64, priority="low", options={"postprocess": {"watermark": "x"}})
    assert producer.wait(failing, timeout=30)["status"] == "failed"
    body, content_type = exposition(redis_conn, procs.settings.queue_names)
    assert content_type.startswith("text/plain")
    m = samples(body.decode())
    q = (("queue", "zimg-normal"),)
    assert m[("zimg_jobs_enqueued_total", q)] == 5
    assert m[("zimg_jobs_finished_total", q)] == 5
    assert m[("zimg_jobs_failed_total", (("queue", "zimg-low"),))] == 1
    assert m[("zimg_images_generated_total", q)] == 4  # the fifth was a cache hit
    assert m[("zimg_job_duration_seconds_count", q)] == 5
    assert m[("zimg_job_inference_seconds_count", q)] == 5
    assert m[("zimg_job_inference_seconds_bucket", (("le", "+Inf"), ("queue", "zimg-normal")))] == 5
    assert m[("zimg_job_duration_seconds_sum", q)] > 0
    assert m[("zimg_job_queued_seconds_count", q)] == 5
    assert m[("zimg_jobs_in_registry", (("queue", "zimg-normal"), ("registry", "finished")))] == 5
    assert m[("zimg_workers", ())] == 1
    assert ("zimg_queue_depth", (("queue", "zimg-high"),)) in m

    text = requests.get(f"{inference.url}/metrics", timeout=5).text
    served = samples(text)
    assert served[("zimg_inference_batch_size_count", ())] == 4
    assert served[("zimg_inference_batch_size_sum", ())] >= 4
    assert served[("zimg_inference_requests_total", (("outcome", "ok"),))] == 4


def test_queue_depth_counts_waiting_jobs(producer: Producer, redis_conn, settings):
    producer.enqueue_many([{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}], priority="low")
    m = samples(exposition(redis_conn, settings.queue_names)[0].decode())
    assert m[("zimg_queue_depth", (("queue", "zimg-low"),))] == 3
    assert m[("zimg_jobs_enqueued_total", (("queue", "zimg-low"),))] == 3
    assert m[("zimg_workers", ())] == 0


def test_metrics_and_campaign_status_over_http(procs, producer: Producer, web_app, tmp_path):
    procs.inference(latency_a="0", latency_b="0")
    procs.worker()
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    campaign.run(producer, "web-test", prompts, timeout=30)
    client = web_app().test_client()
    resp = client.get("/metrics")
    assert resp.status_code == 200 and b"zimg_jobs_finished_total" in resp.data
    got = client.get("/v1/campaigns/web-test").get_json()
    assert got["total"] == 2 and got["complete"] and got["counts"] == {"finished": 2}
    assert [r["status"] for r in got["rows"]] == ["finished", "finished"]
    assert client.get("/v1/campaigns/web-test?rows=0").get_json()["done"] == 2
    assert client.get("/v1/campaigns/nope").status_code == 404
    assert client.get("/v1/campaigns/bad%20name").status_code == 400
    locked = web_app(ZIMG_API_TOKEN="t").test_client()
    assert locked.get("/metrics").status_code == 401
    assert locked.get("/metrics", headers={"Authorization": "Bearer t"}).status_code == 200


def test_help_texts_say_which_side_measured(redis_conn, settings):
    """The worker's round trip and the server's request time must not be confused: HELP says who measured."""
    families = list(text_string_to_metric_families(exposition(redis_conn, settings.queue_names)[0].decode()))
    served = list(families)
    families += list(text_string_to_metric_families(InferenceMetrics(lambda: 0, lambda: 0).exposition()[0].decode()))
    helps = {f.name: f.documentation for f in families}
    assert helps["zimg_job_inference_seconds"].startswith("Measured by the worker")
    assert "zimg_inference_request_seconds" in helps["zimg_job_inference_seconds"]  # points at the other side's
    assert "measured by the inference server" in helps["zimg_inference_request_seconds"].lower()
    assert helps["zimg_http_request_duration_seconds"].startswith("Measured by the web API")
    for family in served:  # every number the web API serves says who measured or counted it
        assert family.documentation.split(":")[0].split()[-1] in ("worker", "API", "producer", "Redis"), family.name
