"""JobOptions: each rule names its field under ``options.``; what the published patterns accept, the code can use."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zimg_queue.options import JobOptions, Postprocess, Watermark
from zimg_queue.validation import URL_PATTERN, ValidationError

WM = "options.postprocess.watermark."


def errors_of(data) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        JobOptions.from_dict(data)
    return {e["field"]: e["message"] for e in exc.value.errors}


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ([1], "options", "must be an object"),
        ({"colour": 1}, "options.colour", "unknown field"),
        ({"placeholders": {"a": "b"}}, "options.placeholders", "need options.preset"),
        ({"placeholders": {"a": "b"}, "preset": None}, "options.placeholders", "need options.preset"),
        ({"preset": "a b"}, "options.preset", "A-Z, a-z, 0-9"),
        ({"preset": "main\n"}, "options.preset", "A-Z, a-z, 0-9"),
        ({"preset": "m", "placeholders": {"a": True}}, "options.placeholders.a", "must be a string (got boolean)"),
        ({"webhook_url": "ftp://x"}, "options.webhook_url", "http:// or https://"),
        ({"webhook_url": "http://[::1]/"}, "options.webhook_url", "http:// or https://"),
        ({"webhook_url": "https://example.com/\n"}, "options.webhook_url", "http:// or https://"),
        ({"webhook_url": "https://" + "a" * 2048}, "options.webhook_url", "at most 2048"),
        ({"storage": "gcs"}, "options.storage", "must be one of local, s3 (got 'gcs')"),
        ({"postprocess": 3}, "options.postprocess", "must be an object"),
        ({"postprocess": {"quality": True}}, "options.postprocess.quality", "must be an integer (got boolean)"),
        ({"postprocess": {"quality": 101}}, "options.postprocess.quality", "between 1 and 100"),
        ({"postprocess": {"thumbnail": 8}}, "options.postprocess.thumbnail", "between 16 and 2048"),
        ({"postprocess": {"format": "PNG"}}, "options.postprocess.format", "must be one of"),
        ({"postprocess": {"watermark": "../x"}}, "options.postprocess.watermark.name", "A-Z, a-z, 0-9"),
        ({"postprocess": {"watermark": {"name": "b", "opacity": 2}}}, "options.postprocess.watermark.opacity", "0.0"),
        ({"postprocess": {"watermark": {"name": "b", "margin": float("nan")}}}, WM + "margin", "finite"),
    ],
)
def test_each_rule_names_its_field(data, field, words):
    errors = errors_of(data)
    assert field in errors, errors
    assert words in errors[field]


def test_nulls_mean_not_given_and_defaults_are_dropped_from_the_job():
    assert JobOptions.from_dict({"preset": None, "placeholders": None, "postprocess": None}) == JobOptions()
    assert JobOptions.from_dict(None).to_dict() == {}
    opts = JobOptions.from_dict(
        {"preset": "main", "placeholders": {"n": 3}, "postprocess": {"watermark": "brand", "format": "jpg"}}
    )
    assert opts.placeholders == {"n": "3"} and opts.postprocess is not None and opts.postprocess.format == "jpeg"
    assert opts.to_dict() == {
        "preset": "main",
        "placeholders": {"n": "3"},
        "postprocess": {"watermark": {"name": "brand"}, "format": "jpeg"},
    }
    assert JobOptions.from_dict(opts.to_dict()) == opts


def test_postprocess_and_watermark_check_on_their_own():
    assert Postprocess.from_dict({"thumbnail": 64.0}).thumbnail == 64
    assert Watermark.from_dict("brand").position == "bottom-right"
    with pytest.raises(ValidationError, match="watermark.position"):
        Postprocess.from_dict({"watermark": {"name": "b", "position": "middle"}})


@settings(derandomize=True, max_examples=300, database=None, deadline=None)
@given(st.from_regex(URL_PATTERN, fullmatch=True))
def test_every_url_the_pattern_accepts_parses_with_a_host(url):
    """The webhook code splits URLs with urlsplit: whatever the published pattern takes must not make it raise."""
    parts = urlsplit(url)
    assert parts.scheme in ("http", "https") and parts.hostname
    assert JobOptions.from_dict({"webhook_url": url}).webhook_url == url or len(url) > 2048
