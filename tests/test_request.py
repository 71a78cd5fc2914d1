"""Every validation rule rejects with a message that names the field and the rule; each edge is decided."""

from __future__ import annotations

import dataclasses

import jsonschema
import pytest

from zimg_queue.request import MAX_SEED, SCHEMA, GenerateRequest, UpstreamRequest, ValidationError, json_schema


def errors_of(data, **kw) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        GenerateRequest.from_dict(data, **kw)
    return {e["field"]: e["message"] for e in exc.value.errors}


def test_defaults_follow_the_upstream_turbo_contract():
    req = GenerateRequest.from_dict({"prompt": "a cat"})
    assert (req.width, req.height, req.num_inference_steps, req.guidance_scale) == (1024, 1024, 8, 0.0)
    assert req.negative_prompt == "" and req.output_format == "png"
    assert 0 <= req.seed <= MAX_SEED


@pytest.mark.parametrize("given", [{}, {"seed": None}])
def test_a_missing_or_null_seed_is_drawn_and_kept(given):
    seeds = {GenerateRequest.from_dict({"prompt": "a cat", **given}).seed for _ in range(20)}
    assert len(seeds) > 1  # drawn, not a constant
    assert all(isinstance(s, int) and 0 <= s <= MAX_SEED for s in seeds)


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({}, "prompt", "is required"),
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"prompt": "\n"}, "prompt", "must not be empty"),
        ({"prompt": "\u3000\t"}, "prompt", "must not be empty"),
        ({"prompt": "a\x00b"}, "prompt", "must not contain NUL"),
        ({"prompt": "a\ud800"}, "prompt", "lone surrogate"),
        ({"prompt": 5}, "prompt", "must be a string (got integer)"),
        ({"prompt": b"a cat"}, "prompt", "must be a string"),
        ({"prompt": "x" * 2001}, "prompt", "at most 2000"),
        ({"prompt": "a", "negative_prompt": None}, "negative_prompt", "must be a string (got null)"),
        ({"prompt": "a", "negative_prompt": "no\x00"}, "negative_prompt", "must not contain NUL"),
        ({"prompt": "a", "width": 1000}, "width", "must be a multiple of 64 (got 1000)"),
        ({"prompt": "a", "height": 0}, "height", "between 64 and 2048"),
        ({"prompt": "a", "width": 4096}, "width", "between 64 and 2048"),
        ({"prompt": "a", "width": "512"}, "width", "must be an integer (got string)"),
        ({"prompt": "a", "width": 512.5}, "width", "must be an integer (got 512.5)"),
        ({"prompt": "a", "height": True}, "height", "must be an integer (got boolean)"),
        ({"prompt": "a", "width": 10**30}, "width", "between 64 and 2048"),
        ({"prompt": "a", "width": 1e300}, "width", "between 64 and 2048"),
        ({"prompt": "a", "width": float("inf")}, "width", "must be an integer"),
        ({"prompt": "a", "num_inference_steps": 0}, "num_inference_steps", "between 1 and 50"),
        ({"prompt": "a", "num_inference_steps": 51}, "num_inference_steps", "between 1 and 50"),
        ({"prompt": "a", "num_inference_steps": [8]}, "num_inference_steps", "must be an integer (got array)"),
        ({"prompt": "a", "guidance_scale": 3.5}, "guidance_scale", "must be 0.0"),
        ({"prompt": "a", "guidance_scale": "0"}, "guidance_scale", "must be 0.0"),
        ({"prompt": "a", "guidance_scale": False}, "guidance_scale", "must be 0.0"),
        ({"prompt": "a", "guidance_scale": float("nan")}, "guidance_scale", "must be 0.0"),
        ({"prompt": "a", "seed": -1}, "seed", "between 0 and 4294967295"),
        ({"prompt": "a", "seed": 2**32}, "seed", "between 0 and 4294967295"),
        ({"prompt": "a", "seed": 1.5}, "seed", "must be an integer"),
        ({"prompt": "a", "seed": "random"}, "seed", "must be an integer (got string)"),
        ({"prompt": "a", "output_format": "gif"}, "output_format", "png, jpeg, webp"),
        ({"prompt": "a", "output_format": "PNG"}, "output_format", "got 'PNG'"),
        ({"prompt": "a", "output_format": None}, "output_format", "must be one of"),
        ({"prompt": "a", "colour": "red"}, "colour", "unknown field"),
        ({"prompt": "a", "nested": {"width": 64}}, "nested", "unknown field"),
    ],
)
def test_each_rule_names_its_field(data, field, words):
    errors = errors_of(data)
    assert field in errors, errors
    assert words in errors[field]


@pytest.mark.parametrize(
    ("given", "field", "value"),
    [
        ({"width": 512.0}, "width", 512),  # JSON Schema's "integer" accepts 512.0 too
        ({"num_inference_steps": 8.0}, "num_inference_steps", 8),
        ({"seed": 7.0}, "seed", 7),
        ({"guidance_scale": 0}, "guidance_scale", 0.0),
        ({"guidance_scale": -0.0}, "guidance_scale", 0.0),
        ({"output_format": "jpg"}, "output_format", "jpeg"),
        ({"prompt": " a cat\n"}, "prompt", " a cat\n"),  # kept as sent: the key hashes what was asked
    ],
)
def test_accepted_edges_are_normalised(given, field, value):
    req = GenerateRequest.from_dict({"prompt": "a", **given})
    got = getattr(req, field)
    assert got == value and type(got) is type(value)


def test_guidance_message_says_why():
    assert "black or empty images" in errors_of({"prompt": "a", "guidance_scale": 1.0})["guidance_scale"]


def test_width_message_is_the_readmes():
    assert errors_of({"prompt": "a", "width": 1000}) == {"width": "must be a multiple of 64 (got 1000)"}


def test_pixel_budget_is_configurable():
    GenerateRequest.from_dict({"prompt": "a", "width": 2048, "height": 2048})
    assert (
        "at most 1048576 pixels"
        in errors_of({"prompt": "a", "width": 2048, "height": 1024}, max_pixels=1024**2)["width"]
    )


def test_all_problems_are_reported_at_once_and_str_names_them():
    with pytest.raises(ValidationError) as exc:
        GenerateRequest.from_dict({"prompt": "", "width": 10, "seed": -5})
    message = str(exc.value)
    assert {"prompt", "width", "seed"} <= {e["field"] for e in exc.value.errors}
    assert "width: must be" in message and "seed: must be" in message


@pytest.mark.parametrize("body", [["prompt"], "a cat", None, 5])
def test_body_must_be_an_object(body):
    assert errors_of(body) == {"body": "must be a JSON object"}


def test_key_is_stable_and_differs_by_any_field():
    a = GenerateRequest.from_dict({"prompt": "a", "seed": 1})
    assert a.key == GenerateRequest.from_dict({"prompt": "a", "seed": 1}).key
    assert len(a.key) == 64
    assert a.key != GenerateRequest.from_dict({"prompt": "a", "seed": 2}).key
    assert a.key != GenerateRequest.from_dict({"prompt": "a", "seed": 1, "output_format": "webp"}).key


@pytest.mark.parametrize(
    ("data", "key"),
    [
        # Recorded with the hand-written validator this model replaced (commit 298ee05): stored images
        # are found by these keys, so the bytes hashed must never change.
        ({"prompt": "a cat", "seed": 1}, "4a62540d6deb9b7b30f31f2848f11b3e594bcf74558c93ead212cde0863e91b4"),
        (
            {
                "prompt": "Ünïcode ✓ 猫",
                "negative_prompt": "blurry",
                "width": 512,
                "height": 768,
                "num_inference_steps": 4,
                "seed": 4294967295,
                "output_format": "jpg",
            },
            "48ec130e08736bc183ab5d0f887928be69634731b9c7dd1bde50d65391afa923",
        ),
    ],
)
def test_the_content_address_is_byte_identical_to_before(data, key):
    assert GenerateRequest.from_dict(data).key == key
    assert GenerateRequest.from_dict({**data, "seed": float(data["seed"])}).key == key  # 1.0 is 1


def test_json_schema_lists_every_field_and_forbids_others():
    schema = json_schema()
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(GenerateRequest)} == set(SCHEMA)
    assert schema["additionalProperties"] is False and schema["required"] == ["prompt"]
    assert schema["properties"]["width"]["multipleOf"] == 64
    assert schema["properties"]["seed"]["type"] == ["integer", "null"]


@pytest.mark.parametrize(
    "text",
    ["a", " a", "a ", "\t\ncat", "\u3000x", "\u00a0", "\u2028", "\x1c", "\u200b", "x" * 2000, "é" * 2000, "\U0001f431"],
)
def test_the_published_prompt_pattern_is_the_servers_rule(text):
    """Python's ``str.isspace`` defines blank; the published pattern spells out the same set."""
    schema_ok = jsonschema.Draft202012Validator(json_schema()).is_valid({"prompt": text, "seed": 1})
    server_ok = "prompt" not in _errors_or_none({"prompt": text, "seed": 1})
    assert schema_ok == server_ok == bool(text.strip())


def _errors_or_none(data) -> dict[str, str]:
    try:
        GenerateRequest.from_dict(data)
    except ValidationError as exc:
        return {e["field"]: e["message"] for e in exc.errors}
    return {}


def test_the_upstream_request_takes_only_what_the_server_encodes():
    assert UpstreamRequest.from_dict({"prompt": "a", "output_format": "jpg"}).output_format == "jpeg"
    with pytest.raises(ValidationError, match="output_format: must be one of png, jpeg, jpg"):
        UpstreamRequest.from_dict({"prompt": "a", "output_format": "webp"})


def test_a_request_can_be_copied_with_changes_and_stays_valid():
    req = GenerateRequest.from_dict({"prompt": "a", "seed": 3})
    smaller = dataclasses.replace(req, width=512, height=512)
    assert (smaller.width, smaller.seed) == (512, 3)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's own error: replace() is not a client path
        dataclasses.replace(req, width=500)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.width = 64  # type: ignore[misc]


def test_messages_never_echo_a_whole_oversized_value():
    errors = errors_of({"prompt": "a", "width": 1e300, "output_format": "x" * 5000, "guidance_scale": "y" * 100})
    assert all(len(message) < 200 for message in errors.values()), errors
    assert errors["output_format"].endswith("...)")
