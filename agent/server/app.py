"""The FastAPI app of `anomaly-agent serve`: health, the REST API, the OpenAI-compatible endpoint, the web page.

    app = create_app(ServeSettings(port=8080), load_config(backend="none"))
    uvicorn.run(app, host="127.0.0.1", port=8080)

One warm `AnomalyAgent` per process, built and warmed up in a background thread at start (GET /healthz
answers at once; GET /readyz once the weights are loaded).
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles

from agent.config import AgentConfig, load_config
from agent.server import errors
from agent.server.guard import RequestGuard, bearer_ok, missing_key
from agent.server.settings import ServeSettings
from agent.server.state import ServerState, server_state
from agent.server.uploads import BodyLimit

STATIC = Path(__file__).parent / "static"
_bearer = HTTPBearer(auto_error=False, description="the server's --api-key, when it has one")


def _auth(settings: ServeSettings):
    async def require_key(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if not settings.api_key:
            return
        given = credentials.credentials if credentials else ""
        if not bearer_ok(f"Bearer {given}", settings.api_key):  # RequestGuard checked it already; kept for /docs
            raise missing_key()

    return require_key


def create_app(settings: ServeSettings | None = None, config: AgentConfig | None = None, agent=None,
               warm_up: bool = True) -> FastAPI:
    """Build the app. `agent`: an `AnomalyAgent` to serve (default: built from `config` at start)."""
    settings = settings or ServeSettings()
    config = config or (agent.config if agent is not None else load_config())
    state = ServerState(settings, config, agent)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if warm_up:
            threading.Thread(target=state.warm_up, name="anomaly-agent-warm-up", daemon=True).start()
        else:
            state.ready = agent is not None
        yield

    app = FastAPI(title="anomaly-agent", version="0.1.0", lifespan=lifespan,
                  description="Training-free anomaly detection: judge images, chat about them, teach the memory. "
                              "Errors are JSON: {\"error\": {\"type\", \"message\", \"fix\", \"status\"}}.")
    app.state.server = state
    errors.install(app)
    # the last added runs first: CORS (preflights), then Host/Origin/key checks, then the body limit
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    app.add_middleware(RequestGuard, settings=settings)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Accept"])

    @app.get("/healthz", tags=["health"], summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Weights loaded; the model endpoint reachable or tools-only stated")
    async def readyz(request: Request, st: ServerState = Depends(server_state)):
        ready = st.ready and not st.problem
        if settings.api_key and not bearer_ok(request.headers.get("authorization"), settings.api_key):
            body = {"ready": ready}  # the details (endpoint, the warm-up error) need the key
        else:
            endpoint = await st.endpoint_status() if st.agent is not None else {}
            body = {"ready": ready, "problem": st.problem, **endpoint, "workers": settings.workers,
                    "queue": settings.queue, "running": st.admission.running, "waiting": st.admission.waiting}
        if not ready:
            return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
        return body

    from agent.server import openai_compat, routes_detect, routes_memory, routes_sessions

    guard = [Depends(_auth(settings))]
    for module in (routes_detect, routes_sessions, routes_memory, openai_compat):
        app.include_router(module.router, dependencies=guard)

    @app.get("/v1/info", tags=["health"], dependencies=guard, summary="Backend, limits and defaults (for the web page)")
    async def info(st: ServerState = Depends(server_state)):
        return {"backend": st.agent.backend.name if st.agent else None,
                "backend_note": st.agent.backend_note if st.agent else None,
                "threshold": st.config.threshold, "max_upload_mb": settings.max_upload_mb,
                "max_images": settings.max_images, "auth": bool(settings.api_key)}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index(_request: Request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app
