"""`anomaly-agent serve`: the HTTP API, an OpenAI-compatible chat endpoint and a web page, over one warm
`AnomalyAgent` per process. `create_app(settings)` builds the FastAPI app (see `agent/server/app.py`)."""

from agent.server.app import create_app
from agent.server.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
