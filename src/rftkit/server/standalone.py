"""`rft serve MODEL`: OpenAI's chat completions for one model, without the fine-tuning service around it."""

from __future__ import annotations

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from rftkit.server.app import ApiError, _closing, error_body
from rftkit.server.serving import Batcher, ModelPool, add_chat_routes


def create_serve_app(name: str, path: str, api_key: str | None = None, max_model_memory_mb: float = 4096.0) -> FastAPI:
    """`name` is what requests say in `model` (and what /v1/models lists); `path` the folder loaded on first use."""
    batcher = Batcher(ModelPool(int(max_model_memory_mb * 2**20)))
    app = FastAPI(title=f"rft serve {name}", docs_url=None, redoc_url=None, openapi_url=None, lifespan=_closing(batcher))
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.message, exc.kind, exc.code, exc.param), status_code=exc.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    def caller(authorization: str | None = Header(None)) -> str:
        if api_key is not None and authorization != f"Bearer {api_key}":
            raise ApiError(401, "incorrect or missing API key (rft serve --api-key)", "invalid_api_key",
                           kind="authentication_error")
        return "user"

    def lookup(model: str, who: str) -> tuple[str, str]:
        if model not in (name, "default"):
            raise ApiError(404, f"no such model: {model}; this server serves {name}", "model_not_found", "model")
        return name, path

    add_chat_routes(app, batcher, lookup, lambda who: [{"id": name, "object": "model", "created": 0,
                                                         "owned_by": "rftkit"}], caller, ApiError)
    return app
