from __future__ import annotations

from pathlib import Path

import pytest

from zimg_queue.settings import Settings


def test_environment_overrides_defaults_with_types():
    s = Settings.from_env(
        {
            "ZIMG_REDIS_URL": "redis://h:1/2",
            "ZIMG_JOB_TIMEOUT": "30",
            "ZIMG_OOM_DOWNSCALE": "false",
            "ZIMG_RETRY_INTERVALS": "0.5, 2",
            "ZIMG_READ_TIMEOUT": "9.5",
        }
    )
    assert s.redis_url == "redis://h:1/2" and s.job_timeout == 30 and s.oom_downscale is False
    assert s.retry_intervals == (0.5, 2.0) and s.read_timeout == 9.5


def test_flask_style_config_wins_over_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ZIMG_INFERENCE_URL", "http://env:1")
    monkeypatch.setenv("ZIMG_MAX_RETRIES", "7")
    s = Settings.from_mapping({"ZIMG_INFERENCE_URL": "http://config:2", "SECRET_KEY": "x"})
    assert s.inference_url == "http://config:2" and s.max_retries == 7


def test_queues_by_priority_and_image_folder():
    s = Settings(data_dir="/d")
    assert s.queue_names == ["zimg-high", "zimg-normal", "zimg-low"]
    assert s.images_path == Path("/d/images")
    assert "api_token" not in repr(Settings(api_token="secret"))
    with pytest.raises(ValueError):
        s.queue_name("urgent")
