from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from zimg_queue.settings import Settings, SettingsError


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
    assert "s3cr3t-value" not in repr(Settings(api_token="s3cr3t-value"))
    with pytest.raises(ValueError):
        s.queue_name("urgent")


# --- pydantic-settings: every source converts strings the same way, and a bad value names itself -------------------


def test_flask_config_strings_are_converted_like_environment_strings():
    """A Flask app whose config came from a .env file holds strings: "1,4,16" and "false" must mean what they say."""
    s = Settings.from_mapping(
        {"ZIMG_RETRY_INTERVALS": "1,4,16", "ZIMG_OOM_DOWNSCALE": "false", "ZIMG_JOB_TIMEOUT": "30"}
    )
    assert s.retry_intervals == (1.0, 4.0, 16.0) and s.oom_downscale is False and s.job_timeout == 30


def test_dotenv_file_in_the_working_directory_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / ".env").write_text("ZIMG_JOB_TIMEOUT=42\nZIMG_RETRY_INTERVALS=2,3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZIMG_JOB_TIMEOUT", raising=False)
    s = Settings()
    assert s.job_timeout == 42 and s.retry_intervals == (2.0, 3.0)
    monkeypatch.setenv("ZIMG_JOB_TIMEOUT", "7")  # the environment wins over .env
    assert Settings().job_timeout == 7


@pytest.mark.parametrize(
    ("name", "value", "shown", "rule"),
    [
        ("ZIMG_OOM_DOWNSCALE", "flase", "'flase'", "bool"),
        ("ZIMG_JOB_TIMEOUT", "ten", "'ten'", "integer"),
        ("ZIMG_RETRY_INTERVALS", "1,x", "'x'", "item 2 must be a valid number"),
        ("ZIMG_STORAGE", "ftp", "'ftp'", "'local' or 's3'"),
        ("ZIMG_LEASE_TTL", "0", "'0'", "greater than 0"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_value_and_rule(name, value, shown, rule, monkeypatch):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        Settings()
    message = str(info.value)
    assert "\n" not in message and name in message and shown in message and rule in message
    with pytest.raises(SettingsError):  # the same from a Flask config
        Settings.from_mapping({name: value})


def test_a_bad_setting_stops_the_cli_with_one_line_and_no_traceback():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMG_")}
    env["ZIMG_JOB_TIMEOUT"] = "ten"
    out = subprocess.run(
        [sys.executable, "-m", "zimg_queue.cli", "status", "x"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "ZIMG_JOB_TIMEOUT='ten'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_no_zimg_variable_is_read_outside_settings():
    """Every ZIMG_* name goes through Settings: grep the code for os.environ / getenv with a ZIMG_ name."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*root.glob("zimg_queue/**/*.py"), *root.glob("workers/**/*.py")]:
        if path.name == "settings.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(environ(\.get)?\s*[\[(]\s*f?[\"']ZIMG_|getenv\(\s*[\"']ZIMG_)", line):
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_readme_lists_every_setting():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [f"ZIMG_{name.upper()}" for name in Settings.model_fields if f"ZIMG_{name.upper()}" not in readme]
    assert not missing, f"README.md does not document: {missing}"


def test_default_data_dir_is_absolute_and_the_same_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("ZIMG_DATA_DIR", raising=False)
    first = Settings().data_dir
    monkeypatch.chdir(tmp_path)
    assert Path(first).is_absolute() and Settings().data_dir == first


def test_the_readme_settings_table_is_the_generated_one():
    from zimg_queue.settings import settings_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("<!-- settings-table:start -->\n", 1)[1].split("\n<!-- settings-table:end -->", 1)[0]
    assert table == settings_table(), "regenerate the README's settings table from zimg_queue.settings.settings_table()"
