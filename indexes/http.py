"""`ragcli serve`: warm engines behind FastAPI. Every named index is opened once at start-up; queries go
through a `MicroBatcher` per index, so concurrent requests share encoder passes. Filters arrive
structured (field, op, value) and become parameterised DuckDB queries: no request string reaches SQL.

Endpoints: GET / (search page), GET /health, GET /indexes, GET /indexes/{name},
POST /indexes/{name}/query (JSON), POST /indexes/{name}/query/image (upload), GET /metrics (Prometheus).
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
import json
import os
import secrets
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from indexes.batching import MicroBatcher
from indexes.engine import Engine, Query
from indexes.errors import UserError

MAX_UPLOAD_BYTES = 32 << 20


class QueryIn(BaseModel):
    """One query: a text (statutes), a history of item ids (recsys), or an image path (images)."""

    model_config = ConfigDict(extra="forbid")
    qid: str | None = None
    text: str | None = None
    history: list[str | int] | None = None
    image: str | None = None
    condition: str | None = None


class QueryRequestIn(BaseModel):
    """`query` for one, `queries` for many; `where` is a structured filter; `exclude` one id list per query."""

    model_config = ConfigDict(extra="forbid")
    query: QueryIn | None = None
    queries: list[QueryIn] | None = Field(default=None, max_length=10_000)
    k: int = Field(default=10, ge=1, le=10_000)
    where: Any = None
    exclude: list[list[str | int]] | None = None
    skip_unknown: bool = False


def create_app(engines: dict[str, Engine], api_key: str | None = None, window: float = 0.0,
               max_batch: int = 64, image_root: str | os.PathLike | None = None) -> FastAPI:
    """The HTTP face of `engines` (name -> warm engine); with `api_key`, every endpoint but /health and
    the page needs `Authorization: Bearer <key>`. Image queries by server-side path are refused unless
    the path lies under `image_root` (otherwise a client could probe any file the server can read)."""
    root = Path(image_root).resolve() if image_root is not None else None

    def image_path(path: str) -> str:
        resolved = Path(path).resolve()
        if root is None or (resolved != root and root not in resolved.parents):
            raise HTTPException(400, "image paths are accepted only under the server's --image-root; "
                                     "upload the image to /indexes/{name}/query/image instead")
        return str(resolved)

    batchers = {name: MicroBatcher(engine, window, max_batch) for name, engine in engines.items()}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for batcher in batchers.values():
            batcher.close()

    app = FastAPI(title="ragcli", summary="Statutes, items and images served from warm FAISS engines.", lifespan=lifespan)
    registry = CollectorRegistry()
    requests = Counter("ragcli_requests", "Requests by index and status.", ["index", "status"], registry=registry)
    latency = Histogram("ragcli_request_seconds", "Query latency by index.", ["index"], registry=registry,
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    app.state.batchers = batchers

    async def authorised(authorization: Annotated[str | None, Header()] = None, key: str | None = None) -> None:
        """The bearer token, or `?key=` (for <img> tags, which cannot send headers)."""
        given = authorization or (f"Bearer {key}" if key else "")
        if api_key is not None and not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise HTTPException(401, "missing or wrong API key (send 'Authorization: Bearer <key>')")

    def batcher_of(name: str) -> MicroBatcher:
        if name not in batchers:
            raise HTTPException(404, f"no index named {name!r}")
        return batchers[name]

    @app.exception_handler(RequestValidationError)
    async def one_line_validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"detail": f"{where}: {first['msg']}" if where else first["msg"]}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return files("indexes").joinpath("static/search.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "indexes": len(engines)}

    @app.get("/indexes", dependencies=[Depends(authorised)])
    async def list_served() -> list[dict[str, Any]]:
        return [{"name": name, "family": e.family, "field": e.field, "rows": e.index.ntotal,
                 "condition": e.index.encoder.get("condition")} for name, e in engines.items()]

    @app.get("/indexes/{name}", dependencies=[Depends(authorised)])
    async def manifest(name: str) -> dict[str, Any]:
        return batcher_of(name).engine.info()

    async def answer(name: str, queries: list[Any], body: QueryRequestIn) -> dict[str, Any]:
        batcher = batcher_of(name)
        started = time.perf_counter()
        options = {"skip_unknown": True} if body.skip_unknown else {}
        try:
            prepared = [batcher.engine.as_query(q) for q in queries]
            hits = await batcher.query(prepared, body.k, body.where, body.exclude, **options)
        except UserError as err:
            requests.labels(name, "400").inc()
            raise HTTPException(400, str(err)) from None
        requests.labels(name, "200").inc()
        latency.labels(name).observe(time.perf_counter() - started)
        return {"index": name, "results": [{"qid": q.qid or str(n), "hits": [h.to_dict() for h in ranked]}
                                           for n, (q, ranked) in enumerate(zip(prepared, hits), 1)]}

    @app.post("/indexes/{name}/query", dependencies=[Depends(authorised)])
    async def query(name: str, body: QueryRequestIn) -> dict[str, Any]:
        if (body.query is None) == (body.queries is None):
            raise HTTPException(422, "give exactly one of 'query' or 'queries'")
        items = [q.model_dump(exclude_none=True) for q in ([body.query] if body.query is not None else body.queries)]
        for item in items:
            if "image" in item:
                item["image"] = image_path(item["image"])
        return await answer(name, items, body)

    @app.post("/indexes/{name}/query/image", dependencies=[Depends(authorised)])
    async def query_image(name: str, image: Annotated[UploadFile, File()], k: Annotated[int, Form(ge=1, le=10_000)] = 10,
                          condition: Annotated[str | None, Form()] = None) -> dict[str, Any]:
        data = await image.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"images are limited to {MAX_UPLOAD_BYTES >> 20} MiB")
        upload = Query(qid=image.filename or "1", image=io.BytesIO(data), condition=condition or None)
        return await answer(name, [upload], QueryRequestIn(k=k))

    @app.get("/indexes/{name}/items/{item_id}/image", dependencies=[Depends(authorised)])
    def item_image(name: str, item_id: str) -> Response:
        engine = batcher_of(name).engine
        if not hasattr(engine, "item_image"):
            raise HTTPException(404, f"index {name!r} holds no images")
        try:
            image = engine.item_image(int(item_id) if engine.index.manifest["id_type"] == "int" else item_id)
        except (UserError, ValueError) as err:
            raise HTTPException(404, str(err)) from None
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @app.post("/indexes/{name}/explain", dependencies=[Depends(authorised)])
    def explain(name: str, image: Annotated[UploadFile, File()], id: Annotated[str, Form(min_length=1)]) -> Response:
        """A PNG of the uploaded query and the indexed image `id`, each under the heat map of what makes
        it similar to the other (image indexes)."""
        engine = batcher_of(name).engine
        if not hasattr(engine, "explanation"):
            raise HTTPException(404, f"index {name!r} holds no images")
        data = image.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"images are limited to {MAX_UPLOAD_BYTES >> 20} MiB")
        try:
            item = int(id) if engine.index.manifest["id_type"] == "int" else id
            picture = engine.explanation(Query(qid=image.filename or "1", image=io.BytesIO(data)), item)
        except (UserError, ValueError) as err:
            raise HTTPException(400, str(err)) from None
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @app.get("/metrics", dependencies=[Depends(authorised)])
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def open_engines(names: list[str], device: str = "auto") -> dict[str, Engine]:
    """The listed indexes, or every named index under $RAGCLI_HOME, opened once (models loaded)."""
    from indexes.registry import open_index
    from indexes.store import list_indexes

    if not names:
        names = [row["name"] for row in list_indexes() if "error" not in row]
    if not names:
        raise UserError("no indexes to serve: build one first (ragcli index build ...) or name some")
    served = [Path(str(name)).name for name in names]
    if len(set(served)) != len(served):
        raise UserError(f"two indexes would be served under one name: {', '.join(map(str, names))}")
    return {label: open_index(name, device=device) for label, name in zip(served, names)}


def app_from_environment() -> FastAPI:
    """The app for each uvicorn worker process (`--workers N`), configured through RAGCLI_SERVE_CONFIG."""
    config = json.loads(os.environ["RAGCLI_SERVE_CONFIG"])
    return create_app(open_engines(config["names"], config["device"]), os.environ.get("RAGCLI_API_KEY") or None,
                      config["window"], config["max_batch"], config["image_root"])


def serve(names: list[str], host: str = "127.0.0.1", port: int = 8000, workers: int = 1, api_key: str | None = None,
          device: str = "auto", window: float = 0.0, max_batch: int = 64, image_root: str | None = None) -> None:
    """Run the HTTP server until interrupted (each worker process holds its own warm engines)."""
    import uvicorn

    from indexes.runtime import set_progress

    set_progress(False)  # a bar per request would flood the server's stderr
    sys.setswitchinterval(0.0005)  # the event loop and each engine's thread hand the GIL over per request
    engines = open_engines(names, device)  # fail fast, in this process, on a bad name
    if workers == 1:
        uvicorn.run(create_app(engines, api_key, window, max_batch, image_root), host=host, port=port,
                    log_level="warning")
        return
    os.environ["RAGCLI_SERVE_CONFIG"] = json.dumps({"names": names, "device": device, "window": window,
                                                    "max_batch": max_batch, "image_root": image_root})
    if api_key:
        os.environ["RAGCLI_API_KEY"] = api_key
    uvicorn.run("indexes.http:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="warning")
