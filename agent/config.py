"""One `AgentConfig` for everything the agent, tools, memory and evals need.

Precedence (lowest to highest): defaults < YAML file (``--config``) < ``ANOMALY_AGENT_*``
environment variables < explicit overrides (CLI flags, keyword arguments to `load_config`).
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tools.base import ToolSettings
from tools.cache import DEFAULT_CACHE_MB
from tools.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE

BACKENDS = ("auto", "openai", "transformers", "scripted", "none")
_yaml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("yaml_path", default=None)


class ConfigError(ValueError):
    """A configuration problem; the message names the setting and the fix."""


def default_home() -> Path:
    """Where memory and caches live by default: ``$ANOMALY_AGENT_HOME`` or ``~/.cache/anomaly-agent``."""
    return Path(os.environ.get("ANOMALY_AGENT_HOME", Path.home() / ".cache" / "anomaly-agent"))


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file named by `load_config(config_file=...)`."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = _yaml_path.get()
        self._data: dict[str, Any] = {}
        if path is not None:
            if not path.exists():
                msg = f"config file {path} not found. Fix: check the --config path"
                raise ConfigError(msg)
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(exc, "problem", None) or type(exc).__name__
                msg = f"config file {path} is not valid YAML{where} ({problem}). Fix: correct the syntax"
                raise ConfigError(msg) from None
            if not isinstance(data, dict):
                msg = f"config file {path} must hold a mapping of settings, got {type(data).__name__}"
                raise ConfigError(msg)
            unknown = sorted(set(data) - set(settings_cls.model_fields))
            if unknown:
                msg = f"config file {path}: unknown setting(s) {', '.join(unknown)}. Fix: see `anomaly-agent config show` for valid names"
                raise ConfigError(msg)
            self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - required by the ABC
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class AgentConfig(BaseSettings):
    """The effective configuration. Every field can be set as ``ANOMALY_AGENT_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="ANOMALY_AGENT_", extra="forbid", validate_default=True)

    # model backend
    backend: Literal["auto", "openai", "transformers", "scripted", "none"] = "auto"
    base_url: str | list[str] | None = Field(
        None, description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1; several replicas of one model: "
        "a list, or URLs separated by commas (requests go to the least busy; a refusing one cools down)")
    api_key: SecretStr = SecretStr("EMPTY")
    model: str = Field("Qwen/Qwen3-VL-8B-Instruct", description="model id served at base_url")
    local_model: str = Field("Qwen/Qwen3-VL-2B-Instruct", description="in-process model (path or HF id)")
    script: Path | None = Field(None, description="scripted backend: JSON/YAML script or saved trace")
    request_timeout_s: float = Field(60.0, gt=0, allow_inf_nan=False,
                                     description="seconds per model request (a finite number > 0)")
    max_retries: int = Field(2, ge=0)
    image_max_side: int = Field(1024, ge=64, description="images sent to the model are downscaled to this side")
    image_format: Literal["JPEG", "PNG"] = Field(
        "JPEG", description="encoding of images sent to the model (JPEG q90: ~20x faster and ~10x smaller "
        "than PNG; tools always measure on the original pixels)")
    max_new_tokens: int = Field(512, ge=1, description="in-process model: tokens generated per call")
    # sampling sent with every request to an OpenAI-compatible server: without them vLLM samples with
    # the model's generation_config (else temperature 1.0) and lets an answer run to the context length
    temperature: float = Field(0.0, ge=0.0, le=2.0, allow_inf_nan=False,
                               description="sampling temperature sent to the model server (0: greedy)")
    seed: int | None = Field(0, description="sampling seed sent to the model server (None: not sent)")
    max_tokens: int = Field(1024, ge=1, description="most tokens the model server may generate per answer; "
                            "an answer cut off there is reported as truncated, never read as a label")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    # tools and weights
    backbone: str = "efficientnet_lite0"
    patch_position: bool = Field(
        True, description="patch_knn's positional view (finds swapped or misplaced parts); turn it off "
        "when the parts' position varies at random between normal images")
    clip_model: str = "ViT-B-16-plus-240"
    clip_pretrained: str = "laion400m_e32"
    sam_checkpoint: Path | None = None
    sam_model_type: str = "vit_b"
    dinov2_weights: Path | None = Field(
        None, description="DINOv2 ViT weights for backbone 'dinov2_vit' (dinov2_vits14_pretrain.pth from "
        "dl.fbaipublicfiles.com/dinov2, or a timm *_dinov2 model.safetensors); default: that file in weights_dir "
        "or ~/.cache/torch/hub/checkpoints")
    weights_dir: Path | None = Field(None, description="folder searched first for weight files")
    allow_downloads: bool = False

    # budgets
    max_model_calls: int = Field(8, ge=1)
    max_tool_calls: int = Field(12, ge=0)
    max_images_per_request: int = Field(
        4, ge=1, description="images in one model request, the query always among them; `serve-model` "
        "passes the same number to vLLM as --limit-mm-per-prompt (older images become a text line)")
    max_memory_normals: int = Field(8, ge=0, description="nearest normal examples retrieved from memory")
    max_memory_anomalies: int = Field(4, ge=0, description="nearest labelled anomalies retrieved from memory, apart from the normals")
    memory_leave_out: Literal["same-pixels", "near-copies"] = Field(
        "same-pixels", description="which memory examples count as the query itself and are never retrieved: "
        "'same-pixels' (identical decoded pixels), or also 'near-copies' (re-encoded or rescaled copies, and "
        "re-captures that look the same at 64x64; `eval` reading a user's memory sets it, so a copy of a test "
        "image cannot answer for it); detect and serve keep near-identical normals the inspector marked")
    survey_weights: dict[str, float] | None = Field(
        None, description="the survey's other tools and their weights beside patch_knn (agent.survey_fusion; "
        "None: the defaults chosen by leave-category-out: none beside patch_knn); a tool with weight > 0 "
        "runs in every survey with references, e.g. {'reference_diff': 0.5} for aligned objects (slower)")
    survey_fine_scale: bool = Field(
        True, description="the survey adds patch_knn on unpooled features (patch_knn_fine) to patch_knn's reading "
        "(agent.survey_fusion, 'Two scales'); off: patch_knn alone, faster (about 0.7x the time per image)")
    max_wall_s: float = Field(180.0, gt=0, allow_inf_nan=False)
    max_reflections: int = Field(1, ge=0)

    # decision
    threshold: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False)
    policy: Literal["evidence-stands", "model-decides"] = Field(
        "evidence-stands", description="safety policy (README 'Safety policy'): 'evidence-stands' keeps a measured "
        "reading clearly beyond the threshold (by logit(0.9) in log-odds) anomalous whatever the model says, and "
        "lets the model lower it only within the anomalous side; 'model-decides' lets the plain weighted fusion decide")

    # memory
    memory_path: Path = Field(default_factory=lambda: default_home() / "memory")
    memory_host: str | None = None
    memory_port: int = 8000
    memory_token: SecretStr | None = None

    # chat sessions (LangGraph SqliteSaver)
    sessions_path: Path = Field(default_factory=lambda: default_home() / "sessions.sqlite")

    # runtime
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    feature_cache_mb: float = Field(
        DEFAULT_CACHE_MB, gt=0, allow_inf_nan=False, description="memory (MB) for reference features and banks "
        "kept between images (least recently used dropped first); the query's own features are released after "
        "its run")
    bank_cache: bool = Field(True, description="store reference banks on disk (bank_dir) so the next process "
                             "with the same references and settings skips the build")
    bank_dir: Path = Field(default_factory=lambda: default_home() / "banks",
                           description="folder of stored reference banks (see bank_cache)")
    max_references: int = Field(
        32, ge=1, description="at most this many normal references per image; above it the most diverse are "
        "kept (farthest-point selection on small thumbnails), and a note says so")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    min_image_side: int = Field(DEFAULT_MIN_SIDE, ge=1, description="images whose shorter side is below "
                                "this many pixels are refused as too small to judge")

    @field_validator("survey_weights")
    @classmethod
    def _survey_tools_known(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        known = ("reference_diff", "parts_check")
        for name, w in (v or {}).items():
            if name not in known:
                msg = f"survey_weights: unknown tool {name!r}; the survey can add {', '.join(known)}"
                raise ValueError(msg)
            if not 0.0 <= float(w) <= 4.0:
                msg = f"survey_weights[{name!r}] must be in [0, 4], got {w}"
                raise ValueError(msg)
        return v

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str | list[str] | None) -> str | list[str] | None:
        """One URL stays a string; several (a list, or a comma-separated string) become a list."""
        parts = v.split(",") if isinstance(v, str) else (v or [])
        urls = list(dict.fromkeys(u.strip().rstrip("/") for u in parts if u.strip()))
        if not urls:
            return None
        return urls[0] if len(urls) == 1 else urls

    @property
    def base_urls(self) -> list[str]:
        """``base_url`` as a list (empty when none is configured)."""
        if not self.base_url:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))

    def tool_settings(self, out_dir: Path | None = None) -> ToolSettings:
        """The subset the tools read (every `ToolSettings` field has a same-named field here)."""
        shared = set(ToolSettings.model_fields) - {"out_dir", "bank_dir"}
        return ToolSettings(**self.model_dump(include=shared), out_dir=out_dir,
                            bank_dir=self.bank_dir if self.bank_cache else None)

    def masked(self) -> dict[str, Any]:
        """The config as JSON-able values, secrets shown as '***' (for `config show`)."""
        data = self.model_dump(mode="json")
        for name in ("api_key", "memory_token"):
            if getattr(self, name) is not None:
                data[name] = "***"
        return data


def _describe_error(err: dict) -> str:
    """``request_timeout_s (ANOMALY_AGENT_REQUEST_TIMEOUT_S): Input should be a finite number``."""
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    if len(err["loc"]) == 1 and str(err["loc"][0]) in AgentConfig.model_fields:
        loc = f"{loc} (ANOMALY_AGENT_{str(err['loc'][0]).upper()})"
    return f"{loc}: {err['msg']}"


def load_config(config_file: str | Path | None = None, **overrides: Any) -> AgentConfig:
    """Build the effective config.

    Args:
        config_file: optional YAML file of settings.
        overrides: explicit values (CLI flags); None values are ignored so unset flags do not win.

    Raises:
        ConfigError: unreadable file, unknown setting or invalid value, naming the fix.
    """
    from pydantic import ValidationError

    token = _yaml_path.set(Path(config_file) if config_file else None)
    try:
        return AgentConfig(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(_describe_error(err) for err in exc.errors())
        msg = f"invalid configuration: {problems}. Fix: correct the setting (flag, ANOMALY_AGENT_* variable or --config file)"
        raise ConfigError(msg) from None
    finally:
        _yaml_path.reset(token)
