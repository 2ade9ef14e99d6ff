"""All settings in one place. Every field can be set by an environment variable FERRYMAN_<NAME>."""
from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FERRYMAN_")

    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = f"sqlite:///{ROOT / 'ferryman.db'}"
    redis_url: str | None = None  # set to share rate limits across gateway replicas
    admin_key: str | None = None  # when unset, `serve` mints one per start and prints it

    small_model: str = "ferryman-small"
    large_model: str = "ferryman-large"
    small_model_path: Path = ROOT / "models" / "small"
    large_model_path: Path = ROOT / "models" / "large"
    # Remote OpenAI-compatible replicas of the large model (comma-separated base URLs); empty = in-process engine.
    large_upstreams: str = ""
    large_quantization: str | None = None  # "int8" | "int4": quantize the in-process large engine's weights on load
    large_speculation: str | None = None  # "draft" (the small model drafts) | "ngram" | None: speculative decoding
    idle_unload_s: float | None = None  # scale-to-zero: unload an in-process model idle this long; None = keep loaded

    default_max_tokens: int = 256
    request_timeout_s: float = 120.0
    cascade: bool = False  # answer with the small model first, escalate when its confidence is low
    router_path: Path | None = None  # None = the bundled classifier artifact
