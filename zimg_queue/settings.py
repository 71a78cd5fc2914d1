"""Settings: every ``ZIMG_*`` variable, typed, in one pydantic-settings class.

Every knob is an environment variable named ``ZIMG_<FIELD>`` in upper case, so the
same settings reach producers, workers and the inference server whether they run
under ``zimg up``, a Procfile runner or a Flask app. Sources, strongest first:
keyword arguments, the environment, a ``.env`` file in the working directory. A
Flask ``app.config`` goes through :meth:`Settings.from_mapping`, whose strings are
converted exactly as environment strings are (``"false"`` is false, ``"1,4,16"`` a
tuple). A bad value raises :class:`SettingsError`, one line naming the variable,
the value and the rule; the CLI prints it and exits 2.

Nothing else in the code reads ``os.environ`` for a ``ZIMG_*`` name: add a field here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PRIORITIES = ("high", "normal", "low")
#: Where producers, workers and the web app look for Redis when ``ZIMG_REDIS_URL`` is unset.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
ENV_PREFIX = "ZIMG_"


def default_data_dir() -> str:
    """One absolute folder per user and host (``~/.local/share/zimg-queue`` on Linux).

    Absolute so that a Flask app, the workers and the CLI started in different working
    directories all find the same images.
    """
    return str(platformdirs.user_data_path("zimg-queue"))


class SettingsError(ValueError):
    """A ``ZIMG_*`` setting has a bad value. ``str()`` is one line: variable, value, rule."""

    def __init__(self, problems: list[tuple[str, Any, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{ENV_PREFIX}{name.upper()}={value!r}: {rule}" for name, value, rule in problems))


def _csv(value: Any) -> Any:
    """``"1,4,16"`` -> ``("1", "4", "16")``; a list or tuple passes through; ``""`` is empty."""
    if isinstance(value, str):
        return tuple(x.strip() for x in value.split(",") if x.strip())
    return value


CsvFloats = Annotated[tuple[float, ...], NoDecode]
CsvStrs = Annotated[tuple[str, ...], NoDecode]


class Settings(BaseSettings):
    """All of zimg-queue's configuration. ``Settings()`` reads the environment and ``.env``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        validate_default=True,
        hide_input_in_errors=False,
    )

    # --- Redis, queues, jobs -------------------------------------------------------------------
    redis_url: str | None = Field(
        None, description="Redis for the queue; unset: see `zimg_queue.connection.resolve_redis_url`"
    )
    queue_prefix: str = Field("zimg", description="queues are `<prefix>-high`, `-normal`, `-low`")
    job_timeout: int = Field(600, gt=0, description="seconds a job may run")
    result_ttl: int = Field(86_400, ge=0, description="seconds a finished job is kept")
    failure_ttl: int = Field(7 * 86_400, ge=0, description="seconds a failed job is kept")
    max_retries: int = Field(3, ge=0, description="RQ `Retry` attempts after the first, for transient failures")
    retry_intervals: CsvFloats = Field(
        (1.0, 4.0, 16.0), description="seconds before each retry (comma list), ±25 % jitter per job"
    )
    lease_ttl: int = Field(15, gt=0, description="seconds after a worker's last heartbeat before its job runs again")
    outage_budget: float = Field(
        600.0, ge=0, description="seconds jobs wait out an unreachable or busy inference server before failing"
    )

    # --- Inference server ------------------------------------------------------------------------
    inference_url: str = Field("http://127.0.0.1:7860", description="the inference server the workers call")
    inference_token: SecretStr | None = Field(
        None, description="bearer token the inference server requires and the workers send"
    )
    connect_timeout: float = Field(3.05, gt=0, description="worker -> inference server connect timeout (s)")
    read_timeout: float = Field(300.0, gt=0, description="worker -> inference server read timeout (s)")
    oom_downscale: bool = Field(True, description="on CUDA out of memory, retry once at 3/4 of each side")
    model: str | None = Field(None, description="a folder or hub id: serve the `zimage` backend with it")
    gpus: str | None = Field(None, description="GPUs for `zimg up`: `0,1,...` or `all` (one inference server each)")

    # --- Requests and images -------------------------------------------------------------------
    max_pixels: int = Field(2048 * 2048, gt=0, description="pixel budget per image (width x height)")
    data_dir: str = Field(default_factory=default_data_dir, description="images and the private Redis")
    image_dir: str | None = Field(None, description="where images are written (default `$ZIMG_DATA_DIR/images`)")
    presets: str | None = Field(None, description="the presets TOML file (presets, watermarks, schedules)")
    watermark_dir: str | None = Field(None, description="a folder of watermark images, named by file stem")
    storage: Literal["local", "s3"] = Field("local", description="where images go: `local` or `s3`")

    # --- S3 --------------------------------------------------------------------------------------
    s3_bucket: str | None = Field(None, description="bucket for `ZIMG_STORAGE=s3`")
    s3_endpoint_url: str | None = Field(None, description="S3 API endpoint (MinIO, OSS); unset for AWS")
    s3_region: str | None = Field(None, description="region (default `$AWS_REGION`, else us-east-1)")
    s3_prefix: str = Field("images/", description="object key prefix")
    s3_public_url: str | None = Field(None, description="public base URL for objects; unset: presigned URLs")
    s3_url_expires: int = Field(7 * 86_400, gt=0, description="seconds a presigned URL is valid")
    s3_addressing_style: Literal["auto", "virtual", "path"] = Field("auto", description="S3 addressing style")

    # --- Webhooks --------------------------------------------------------------------------------
    webhook_secret: SecretStr | None = Field(None, description="`whsec_<base64>`: sign webhooks (Standard Webhooks)")
    webhook_retry_intervals: CsvFloats = Field(
        (5.0, 30.0, 120.0, 600.0, 1800.0), description="seconds between webhook delivery attempts (comma list)"
    )
    webhook_allow_private: bool = Field(
        False, description="allow webhook URLs that resolve to loopback, link-local or private addresses"
    )

    # --- Web API ---------------------------------------------------------------------------------
    api_token: SecretStr | None = Field(None, description="bearer token for every route but `/healthz`")
    rate_limit: str = Field("600/60", description="job creations per client per window (`10/s`, `0` = off)")
    max_body_bytes: int = Field(64 * 1024, gt=0, description="larger request bodies get 413")
    prompt_blocklist: CsvStrs = Field((), description="comma list of words; a prompt with one gets 400")
    proxy_count: int = Field(0, ge=0, description="reverse proxies in front of the web API (X-Forwarded-For)")
    web_keepalive: int = Field(5, ge=0, description="gunicorn keep-alive seconds (0: close after each request)")
    web_keepalive_requests: int = Field(
        20, gt=0, description="requests one kept-alive connection may make before `zimg web` closes it"
    )
    web_body_timeout: float = Field(
        10.0, gt=0, description="seconds a request may take to arrive whole (`zimg web`); slower ones get 408"
    )
    allow_public_bind: bool = Field(
        False, description="let a server bind beyond loopback without a token (you accept the risk)"
    )

    # --- Logs --------------------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_prompts: bool = Field(False, description="include prompt text in logs (off: prompts are customer data)")

    # --- The simulator (`sim` backend) -------------------------------------------------------------
    sim_profile: str | None = Field(None, description="a latency/OOM profile for the simulator, e.g. `h200-1024`")
    sim_latency_a: float = Field(0.05, ge=0, description="simulator: seconds per batch")
    sim_latency_b: float = Field(0.02, ge=0, description="simulator: seconds per image in a batch")
    sim_scale: float = Field(1.0, ge=0, description="simulator: multiplies the latency model")
    sim_oom_pixels: int = Field(0, ge=0, description="simulator: a batch above this many pixels runs out of memory")
    sim_fail_rate: float = Field(0.0, ge=0, le=1, description="simulator: share of answers that are 500")
    sim_drop_rate: float = Field(0.0, ge=0, le=1, description="simulator: share of connections cut mid-answer")
    sim_empty_rate: float = Field(0.0, ge=0, le=1, description="simulator: share of empty images")
    sim_slow_rate: float = Field(0.0, ge=0, le=1, description="simulator: share of slow answers")
    sim_slow_s: float = Field(0.0, ge=0, description="simulator: seconds a slow answer takes")
    sim_fault_seed: int = Field(0, description="simulator: seed of the fault draws")

    @field_validator("retry_intervals", "webhook_retry_intervals", "prompt_blocklist", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        return _csv(value)

    @field_validator("redis_url", "image_dir", "model", "gpus", "presets", "watermark_dir", "sim_profile",
                     "s3_bucket", "s3_endpoint_url", "s3_region", "s3_public_url", "inference_token",
                     "api_token", "webhook_secret", mode="before")  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("storage", "log_level", "s3_addressing_style", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except PydanticValidationError as exc:
            raise _settings_error(exc) from None

    # --- Construction ------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``ZIMG_*`` variables from ``env`` (default: the environment and ``.env``); overrides win.

        ``None`` overrides are ignored, so ``from_env(redis_url=args.redis_url)`` keeps the environment's.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        if env is None:
            return cls(**given)
        return cls._validate_strings({**_zimg_fields(env), **given})

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> Settings:
        """Settings from a Flask-style config (``ZIMG_*`` keys), falling back to the environment.

        String values are converted exactly as environment strings are.
        """
        return cls(**_zimg_fields(config))

    @classmethod
    def _validate_strings(cls, values: Mapping[str, Any]) -> Settings:
        try:
            return cls.model_validate(dict(values))
        except PydanticValidationError as exc:
            raise _settings_error(exc) from None

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes``, validated (the environment is not read again)."""
        return self._validate_strings({**self._raw(), **changes})

    def _raw(self) -> dict[str, Any]:
        raw = self.model_dump()
        for name, value in raw.items():
            if isinstance(value, SecretStr):
                raw[name] = value.get_secret_value()
        return raw

    def with_default_redis(self, *, flag: str | None = None, source: str | None = None) -> Settings:
        """These settings with the Redis every entry point agrees on (logged once; clients never start a server).

        The choice is :func:`zimg_queue.connection.resolve_redis_url`'s: ``flag`` (``--redis-url``),
        ``ZIMG_REDIS_URL``, a running ``zimg up``'s private Redis, else ``DEFAULT_REDIS_URL`` with a warning.
        """
        from .connection import resolve_redis_url

        url = resolve_redis_url(self, flag=flag, source=source).url
        return self if url == self.redis_url else self.with_(redis_url=url)

    # --- Derived values ----------------------------------------------------------------------------
    @property
    def images_path(self) -> Path:
        return Path(self.image_dir or Path(self.data_dir) / "images")

    def queue_name(self, priority: str = "normal") -> str:
        """The RQ queue for a priority; workers drain high, then normal, then low."""
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}")
        return f"{self.queue_prefix}-{priority}"

    @property
    def queue_names(self) -> list[str]:
        return [self.queue_name(p) for p in PRIORITIES]

    def secret(self, name: str) -> str | None:
        """The plain value of a secret setting (``api_token``, ``inference_token``, ``webhook_secret``)."""
        value = getattr(self, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else value

    def as_env(self) -> dict[str, str]:
        """These settings as ``ZIMG_*`` environment strings, for child processes."""
        env: dict[str, str] = {}
        for name, value in self._raw().items():
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env


def _zimg_fields(mapping: Mapping[str, Any]) -> dict[str, Any]:
    known = Settings.model_fields
    return {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in mapping.items()
        if isinstance(key, str) and key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in known
    }


def _settings_error(exc: PydanticValidationError) -> SettingsError:
    problems = []
    for err in exc.errors(include_url=False):
        name = str(err["loc"][0]) if err["loc"] else "?"
        rule = err["msg"].replace("Input should be", "must be")
        if len(err["loc"]) > 1 and isinstance(err["loc"][1], int):  # one item of a comma list
            rule = f"item {err['loc'][1] + 1} {rule}"
        problems.append((name, err.get("input"), rule))
    return SettingsError(problems)


def settings_table() -> str:
    """The README's settings table, generated from the class (a test keeps the README in step)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "per-user data dir" if name == "data_dir" else "(computed)"
        elif field.default is None:
            default = "unset"
        elif isinstance(field.default, tuple):
            default = "`" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in field.default) + "`"
            default = default if field.default else "empty"
        elif isinstance(field.default, bool):
            default = "true" if field.default else "false"
        else:
            default = f"`{field.default}`"
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {default} | {field.description or ''} |")
    return "\n".join(rows)


__all__ = ["DEFAULT_REDIS_URL", "PRIORITIES", "Settings", "SettingsError", "default_data_dir", "settings_table"]


def write_readme_table(readme: str = "README.md") -> None:
    """Regenerate the settings table between the README's ``settings-table`` markers."""
    from pathlib import Path as _Path

    path = _Path(readme)
    text = path.read_text()
    head, rest = text.split("<!-- settings-table:start -->\n", 1)
    _, tail = rest.split("\n<!-- settings-table:end -->", 1)
    path.write_text(f"{head}<!-- settings-table:start -->\n{settings_table()}\n<!-- settings-table:end -->{tail}")


if __name__ == "__main__":  # python -m zimg_queue.settings: rewrite the README's settings table
    write_readme_table()
