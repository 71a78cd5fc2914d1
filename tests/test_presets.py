"""Presets and job options: templates, placeholders and the errors a client sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from zimg_queue.options import JobOptions, resolve_watermark
from zimg_queue.presets import PresetError, load_presets, parse_presets
from zimg_queue.queue import Producer
from zimg_queue.request import ValidationError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "daily_posters" / "presets.toml"


def fields(exc: ValidationError) -> set[str]:
    return {e["field"] for e in exc.errors}


def test_example_file_loads_with_placeholders_postprocess_watermarks_and_schedules():
    pf = load_presets(EXAMPLE)
    assert set(pf.presets) == {"main", "detail", "social"}
    assert pf.presets["main"].placeholders == {"title", "selling_point"}
    assert pf.presets["social"].placeholders == {"title", "tagline"}
    assert pf.presets["main"].postprocess.watermark.name == "brand"
    assert pf.watermarks["brand"].is_file()
    assert pf.schedules["daily"]["cron"] == "0 6 * * *"


def test_render_fills_templates_and_keeps_defaults():
    main = load_presets(EXAMPLE).get("main")
    req = main.render({"title": "linen shirt", "selling_point": "breathable"})
    assert req["prompt"].startswith("Studio product photo of linen shirt, breathable")
    assert (req["width"], req["height"]) == (1024, 1024)
    assert "blurry" in req["negative_prompt"]


def test_missing_and_unknown_placeholders_name_the_field():
    main = load_presets(EXAMPLE).get("main")
    with pytest.raises(ValidationError) as info:
        main.render({"title": "x", "colour": "red"})
    assert fields(info.value) == {"placeholders.selling_point", "placeholders.colour"}
    assert "unknown placeholder" in str(info.value) and "required" in str(info.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValidationError, match="known: detail, main, social"):
        load_presets(EXAMPLE).get("poster")


@pytest.mark.parametrize(
    "table, message",
    [
        ({"presets": {"a": {"prompt": "{title.__class__}"}}}, "plain name"),
        ({"presets": {"a": {"prompt": "{0}"}}}, "plain name"),
        ({"presets": {"a": {"prompt": "x", "colour": "red"}}}, "unknown key"),
        ({"presets": {"a": {"prompt": "x", "width": 1000}}}, "multiple of 64"),
        ({"presets": {"a": {"width": 512}}}, "needs a prompt"),
        ({"presets": {"a": {"prompt": "x", "postprocess": {"watermark": {"name": "../etc"}}}}}, "watermark"),
        ({"preset": {}}, "unknown top-level"),
    ],
)
def test_bad_preset_files_are_rejected_when_loaded(table, message):
    with pytest.raises(PresetError, match=message):
        parse_presets(table)


def test_options_validation_names_each_bad_field():
    with pytest.raises(ValidationError) as info:
        JobOptions.from_dict(
            {
                "webhook_url": "file:///etc/passwd",
                "storage": "ftp",
                "postprocess": {"watermark": {"name": "/etc/passwd", "opacity": 2}, "format": "gif", "thumbnail": 5},
                "extra": 1,
            }
        )
    assert fields(info.value) == {
        "options.webhook_url",
        "options.storage",
        "options.postprocess.watermark.name",
        "options.postprocess.watermark.opacity",
        "options.postprocess.format",
        "options.postprocess.thumbnail",
        "options.extra",
    }


def test_options_round_trip_small_json():
    opts = JobOptions.from_dict(
        {"postprocess": {"watermark": "brand", "format": "jpg"}, "webhook_url": "https://x.y/h"}
    )
    assert opts.to_dict() == {"postprocess": {"watermark": {"name": "brand"}, "format": "jpeg"},
                              "webhook_url": "https://x.y/h"}  # fmt: skip
    assert JobOptions.from_dict(opts.to_dict()) == opts


def test_watermarks_resolve_by_name_only(tmp_path, monkeypatch):
    (tmp_path / "logo.png").write_bytes((EXAMPLE.parent / "brand.png").read_bytes())
    monkeypatch.setenv("ZIMG_WATERMARK_DIR", str(tmp_path))
    monkeypatch.delenv("ZIMG_PRESETS", raising=False)
    assert resolve_watermark("logo") == tmp_path / "logo.png"
    assert resolve_watermark("brand", EXAMPLE).name == "brand.png"
    with pytest.raises(ValidationError, match="known: logo"):
        resolve_watermark("nope")
    with pytest.raises(ValidationError):
        resolve_watermark("../logo")


def test_producer_expands_a_preset_and_keeps_options_beside_the_request(producer: Producer):
    producer.presets_path = str(EXAMPLE)
    job_id = producer.enqueue(
        {"seed": 5},
        options={"preset": "social", "placeholders": {"title": "jeans", "tagline": "move"},
                 "webhook_url": "https://93.184.216.34/h"},
    )  # fmt: skip
    job = producer.fetch(job_id)
    request, options = job.args
    assert request["prompt"].startswith("Lifestyle photo of a young person wearing jeans") and request["seed"] == 5
    assert (request["width"], request["height"]) == (1024, 576)
    assert options["preset"] == "social" and options["webhook_url"] == "https://93.184.216.34/h"
    assert options["postprocess"]["watermark"]["name"] == "brand" and options["postprocess"]["format"] == "webp"


def test_producer_rejects_bad_preset_use_before_enqueueing(producer: Producer, redis_conn):
    producer.presets_path = str(EXAMPLE)
    with pytest.raises(ValidationError) as info:
        producer.enqueue(None, options={"preset": "main", "placeholders": {"title": "x"}})
    assert fields(info.value) == {"placeholders.selling_point"}
    with pytest.raises(ValidationError, match="no watermark named 'ghost'"):
        producer.enqueue("a cat", options={"postprocess": {"watermark": "ghost"}})
    with pytest.raises(ValidationError, match="need options.preset"):
        producer.enqueue("a cat", options={"placeholders": {"title": "x"}})
    assert producer.queue().count == 0


def test_a_flask_apps_config_names_the_presets_file(web_app, monkeypatch):
    """ZIMG_PRESETS in app.config (not the environment) reaches the producer behind POST /v1/jobs."""
    monkeypatch.delenv("ZIMG_PRESETS", raising=False)
    client = web_app(ZIMG_PRESETS=str(EXAMPLE)).test_client()
    body = {"seed": 5, "options": {"preset": "social", "placeholders": {"title": "jeans", "tagline": "move"}}}
    answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == 202, answer.get_json()
