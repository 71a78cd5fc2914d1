"""Every validation rule rejects with a message that names the field and the rule."""

from __future__ import annotations

import pytest

from zimg_queue.request import MAX_SEED, GenerateRequest, ValidationError, json_schema


def errors_of(data, **kw) -> dict[str, str]:
    with pytest.raises(ValidationError) as exc:
        GenerateRequest.from_dict(data, **kw)
    return {e["field"]: e["message"] for e in exc.value.errors}


def test_defaults_follow_the_upstream_turbo_contract():
    req = GenerateRequest.from_dict({"prompt": "a cat"})
    assert (req.width, req.height, req.num_inference_steps, req.guidance_scale) == (1024, 1024, 8, 0.0)
    assert req.negative_prompt == "" and req.output_format == "png"
    assert 0 <= req.seed <= MAX_SEED


def test_a_missing_seed_is_drawn_and_kept():
    seeds = {GenerateRequest.from_dict({"prompt": "a cat"}).seed for _ in range(20)}
    assert len(seeds) > 1  # drawn, not a constant


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({}, "prompt", "is required"),
        ({"prompt": ""}, "prompt", "must not be empty"),
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"prompt": 5}, "prompt", "must be a string"),
        ({"prompt": "x" * 2001}, "prompt", "at most 2000"),
        ({"prompt": "a", "negative_prompt": None}, "negative_prompt", "must be a string"),
        ({"prompt": "a", "width": 1000}, "width", "multiple of 64"),
        ({"prompt": "a", "height": 0}, "height", "between 64 and 2048"),
        ({"prompt": "a", "width": 4096}, "width", "between 64 and 2048"),
        ({"prompt": "a", "width": "512"}, "width", "must be an integer"),
        ({"prompt": "a", "width": 512.0}, "width", "must be an integer"),
        ({"prompt": "a", "height": True}, "height", "must be an integer"),
        ({"prompt": "a", "num_inference_steps": 0}, "num_inference_steps", "between 1 and 50"),
        ({"prompt": "a", "num_inference_steps": 51}, "num_inference_steps", "between 1 and 50"),
        ({"prompt": "a", "guidance_scale": 3.5}, "guidance_scale", "must be 0.0"),
        ({"prompt": "a", "guidance_scale": "0"}, "guidance_scale", "must be 0.0"),
        ({"prompt": "a", "seed": -1}, "seed", "between 0 and 4294967295"),
        ({"prompt": "a", "seed": 2**32}, "seed", "between 0 and 4294967295"),
        ({"prompt": "a", "seed": 1.5}, "seed", "must be an integer"),
        ({"prompt": "a", "output_format": "gif"}, "output_format", "png, jpeg, webp"),
        ({"prompt": "a", "colour": "red"}, "colour", "unknown field"),
    ],
)
def test_each_rule_names_its_field(data, field, words):
    errors = errors_of(data)
    assert field in errors, errors
    assert words in errors[field]


def test_guidance_message_says_why():
    assert "black or empty images" in errors_of({"prompt": "a", "guidance_scale": 1.0})["guidance_scale"]


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


def test_body_must_be_an_object():
    assert "body" in errors_of(["prompt"])


def test_jpg_is_read_as_jpeg_and_zero_int_guidance_is_accepted():
    req = GenerateRequest.from_dict({"prompt": "a", "output_format": "JPG", "guidance_scale": 0})
    assert req.output_format == "jpeg" and req.guidance_scale == 0.0


def test_key_is_stable_and_differs_by_any_field():
    a = GenerateRequest.from_dict({"prompt": "a", "seed": 1})
    assert a.key == GenerateRequest.from_dict({"prompt": "a", "seed": 1}).key
    assert len(a.key) == 64
    assert a.key != GenerateRequest.from_dict({"prompt": "a", "seed": 2}).key
    assert a.key != GenerateRequest.from_dict({"prompt": "a", "seed": 1, "output_format": "webp"}).key


def test_json_schema_lists_every_field_and_forbids_others():
    schema = json_schema()
    assert set(schema["properties"]) == set(GenerateRequest.__dataclass_fields__)
    assert schema["additionalProperties"] is False and schema["required"] == ["prompt"]
    assert schema["properties"]["width"]["multipleOf"] == 64
