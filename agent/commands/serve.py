"""`anomaly-agent serve`: the HTTP API, an OpenAI-compatible chat endpoint and a web page (agent/server/)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from agent.commands.common import ConfigOption, PolicyOption, config_from_cli


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (other than loopback needs --api-key)."),
        port: int = typer.Option(8080, "--port", help="Port to listen on."),
        api_key: str | None = typer.Option(None, "--api-key", envvar="ANOMALY_AGENT_SERVE_API_KEY",
                                           help="Bearer token every /v1 request must carry."),
        insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth",
                                              help="Allow a non-loopback --host without an api key."),
        data_dir: Path | None = typer.Option(None, "--data-dir", help="The server's runs and uploads "
                                             "(default: $ANOMALY_AGENT_HOME/serve)."),
        max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Larger request bodies get 413."),
        workers: int = typer.Option(2, "--workers", min=1, help="Detections running at once."),
        queue: int = typer.Option(32, "--queue", min=0, help="Requests that may wait; more get 503."),
        request_timeout: float = typer.Option(300.0, "--request-timeout", help="Seconds per request (then 504)."),
        cors_origin: list[str] | None = typer.Option(None, "--cors-origin", help="Allow this origin (repeatable); "
                                                     "no CORS headers without it."),
        allowed_host: list[str] | None = typer.Option(None, "--allowed-host", help="Accept this name in the Host "
                                                      "header (repeatable); without --api-key only loopback "
                                                      "names are accepted otherwise."),
        backend: str | None = typer.Option(None, "--backend"),
        base_url: str | None = typer.Option(None, "--base-url"),
        model: str | None = typer.Option(None, "--model"),
        memory: Path | None = typer.Option(None, "--memory", help="Memory store folder (feedback writes here)."),
        policy: str | None = PolicyOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Serve the agent over HTTP: REST API (/docs), OpenAI-compatible /v1/chat/completions, web page at /."""
        import uvicorn

        from agent.server import ServeSettings, create_app
        from agent.server.settings import describe

        cfg = config_from_cli(config, backend=backend, base_url=base_url, model=model, memory_path=memory,
                              policy=policy)
        fields = {"host": host, "port": port, "api_key": api_key, "insecure_no_auth": insecure_no_auth,
                  "max_upload_mb": max_upload_mb, "workers": workers, "queue": queue,
                  "request_timeout_s": request_timeout, "cors_origins": [o for o in cors_origin or [] if o],
                  "allowed_hosts": [h for h in allowed_host or [] if h]}
        if data_dir is not None:
            fields["data_dir"] = data_dir
        settings = ServeSettings(**fields)
        for line in settings.check():
            print(line, file=sys.stderr)
        print(describe(settings, cfg), file=sys.stderr)
        print(f"open http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ (API docs at /docs)",
              file=sys.stderr)
        uvicorn.run(create_app(settings, cfg), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)

