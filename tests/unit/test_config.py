"""Config precedence: defaults < YAML < ANOMALY_AGENT_* env < explicit overrides; secrets masked."""

from __future__ import annotations

import pytest

from agent.config import ConfigError, load_config


def test_precedence(isolated_home, tmp_path, monkeypatch):
    assert load_config().backend == "auto"
    yml = tmp_path / "c.yaml"
    yml.write_text("backend: none\nthreads: 3\nmax_model_calls: 5\n")
    cfg = load_config(yml)
    assert (cfg.backend, cfg.threads, cfg.max_model_calls) == ("none", 3, 5)
    monkeypatch.setenv("ANOMALY_AGENT_BACKEND", "openai")
    monkeypatch.setenv("ANOMALY_AGENT_THREADS", "4")
    cfg = load_config(yml)
    assert (cfg.backend, cfg.threads, cfg.max_model_calls) == ("openai", 4, 5)
    cfg = load_config(yml, backend="scripted", threads=None)
    assert (cfg.backend, cfg.threads) == ("scripted", 4)


def test_memory_path_follows_home(isolated_home):
    assert load_config().memory_path == isolated_home / "memory"


def test_masked_secrets(isolated_home, monkeypatch):
    monkeypatch.setenv("ANOMALY_AGENT_API_KEY", "sk-secret")
    data = load_config().masked()
    assert data["api_key"] == "***"
    assert "sk-secret" not in str(data)


def test_errors_name_the_setting(isolated_home, tmp_path):
    with pytest.raises(ConfigError, match="backend"):
        load_config(backend="gpt")
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_setting: 1\n")
    with pytest.raises(ConfigError, match="unknown setting.*no_such_setting"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
