"""The FastAPI app: the page, the photo API, health and metrics.

Routes:

* ``POST /v1/keypoints[?faces=N]`` -- a JPEG/PNG as the raw body or as a multipart file
  field -> the face box and the 15 named keypoints (photo pixels) of up to ``N`` faces
  (default 1: the largest), the model version and the time each step took.
* ``GET /`` -- the offline page; ``GET /healthz``; ``GET /metrics`` (Prometheus text).

Every refusal is JSON ``{"error": {"code", "message"}}`` with a 4xx status and a one-line
message; nothing about the server's files or code is ever in an answer. The CPU work of a
photo runs in worker threads, at most ``workers`` at a time, so the event loop keeps
answering health checks while photos are predicted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from fkp.serving.photos import decode_for_detection
from fkp.serving.picture import UndecodableImage
from fkp.serving.web import access_log
from fkp.serving.web.faces import face_keypoints, locate_faces
from fkp.serving.web.limits import Limits, RequestError, read_header, stalled, too_large
from fkp.serving.web.metrics import Metrics
from fkp.serving.web.model import ModelHolder, ServedModel
from fkp.serving.web.page import page_html

#: A body over the limit is read on (and dropped) up to this multiple of it, so the client
#: gets its 413 instead of a reset connection; beyond it the connection is simply closed.
_DRAIN_FACTOR = 4

_log = logging.getLogger(__name__)


def error_response(error: RequestError) -> JSONResponse:
    headers = {"Connection": "close"} if error.close else None
    return JSONResponse(
        {"error": {"code": error.code, "message": error.message}}, status_code=error.status, headers=headers
    )


# --------------------------------------------------------------------------- the request body


#: the status nginx logs for a client that closed the connection before its answer; never sent
CLIENT_CLOSED = 499


async def _chunks(request: Request, limits: Limits) -> AsyncIterator[bytes]:
    """The body's chunks; 408 when one does not come within ``limits.body_timeout_s``.

    This stands in for a body read timeout (nginx's ``client_body_timeout``), which uvicorn does
    not have: its ``timeout_keep_alive`` only covers idle connections between requests, so a
    client that stops half-way through an upload would hold its connection for ever. A client
    that disconnects is one log line (status 499), not Starlette's traceback.
    """
    stream = request.stream()
    while True:
        try:
            with anyio.fail_after(limits.body_timeout_s):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise stalled(limits) from None
        except ClientDisconnect:
            raise RequestError(
                CLIENT_CLOSED, "client_disconnected", "the client closed the connection during the upload"
            ) from None
        yield chunk


async def read_body(request: Request, limits: Limits) -> bytes:
    """The body, refused with 413 as soon as it passes ``limits.max_body_bytes``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _DRAIN_FACTOR * limits.max_body_bytes:
        raise too_large(limits)
    chunks, size = [], 0
    async for chunk in _chunks(request, limits):
        size += len(chunk)
        if size > limits.max_body_bytes:
            if size > _DRAIN_FACTOR * limits.max_body_bytes:
                raise too_large(limits)
            continue  # drop, keep reading: the client then gets its answer
        chunks.append(chunk)
    if size > limits.max_body_bytes:
        raise too_large(limits)
    return b"".join(chunks)


async def photo_bytes(request: Request, limits: Limits) -> bytes:
    """The photo of a request: the raw body, or the file field of a multipart form."""
    body = await read_body(request, limits)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def once() -> AsyncIterator[bytes]:
        yield body

    try:
        parser = MultiPartParser(Headers(scope=request.scope), once(), max_files=1, max_fields=20)
        form = await parser.parse()
    except MultiPartException as error:
        raise RequestError(
            400, "bad_multipart", f"the multipart form cannot be read: {error.message}"
        ) from None
    files = [value for value in form.values() if isinstance(value, UploadFile)]
    if not files:
        raise RequestError(
            400,
            "no_file",
            "the multipart form has no file: send the photo as a file field (e.g. photo=@face.jpg)",
        )
    try:
        return await files[0].read()
    finally:
        await form.close()


# --------------------------------------------------------------------------- one photo


def keypoints_answer(data: bytes, limits: Limits, served: ServedModel, max_faces: int) -> dict[str, Any]:
    """The JSON answer for one photo (CPU work: header check, decode, detect, predict)."""
    t0 = time.perf_counter()
    header = read_header(data, limits)
    try:
        decoded = decode_for_detection(data)
    except UndecodableImage:
        raise RequestError(
            400, "corrupt_image", f"the {header.format} image cannot be decoded (truncated or corrupt)"
        ) from None
    t1 = time.perf_counter()
    found = locate_faces(data, decoded, max_faces)
    t2 = time.perf_counter()
    if not found.faces:
        raise RequestError(
            422,
            "no_face_found",
            "no face found in the photo: send a photo with a face, or a 96x96 face crop",
        )
    # a 96x96 upload is a crop someone else framed: it gets the model's second look at its framing
    predict = functools.partial(served.predict, second_look=found.is_crop)
    faces = face_keypoints(found, predict)
    t3 = time.perf_counter()
    return {
        "model": served.describe(),
        "input": "crop" if found.is_crop else "photo",
        "image": {"format": header.format, "width": decoded.photo_size[0], "height": decoded.photo_size[1]},
        "faces_detected": found.detected,
        "faces": faces,
        "tta_flip": served.tta_flip,
        "timing_ms": {
            "decode": round((t1 - t0) * 1e3, 2),
            "detect": round((t2 - t1) * 1e3, 2),
            "predict": round((t3 - t2) * 1e3, 2),
        },
    }


# --------------------------------------------------------------------------- the app


def create_app(
    holder: ModelHolder, limits: Limits | None = None, *, workers: int = 2, poll_seconds: float = 0
) -> FastAPI:
    """The app serving ``holder``'s model; polls the registry every ``poll_seconds`` (0: never)."""
    limits = limits or Limits()
    metrics = Metrics()
    metrics.set_model(holder.current.describe()["ref"], holder.current.version)

    def swapped(old: ServedModel, new: ServedModel) -> None:
        metrics.set_model(new.describe()["ref"], new.version)
        metrics.reloads.inc()

    holder.on_swap = swapped

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.limiter = anyio.CapacityLimiter(workers)
        page_html()  # render the example faces now, not on the first visitor's time
        holder.start_polling(poll_seconds)
        try:
            yield
        finally:
            holder.stop_polling()

    app = FastAPI(title="fkp", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        request.state.log = {}
        response = await call_next(request)
        seconds = time.perf_counter() - start
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(seconds)
        client = request.client.host if request.client else None
        access_log.log_access(
            access_log.access_record(
                method=request.method,
                path=request.url.path,
                status=response.status_code,
                seconds=seconds,
                client=client,
                **request.state.log,
            )
        )
        return response

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        request.state.log["error"] = error.code
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        message = {404: "no such page: see / or POST /v1/keypoints"}.get(error.status_code, str(error.detail))
        return error_response(RequestError(error.status_code, code, message))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid value')}" if where else "invalid request"
        return error_response(RequestError(422, "invalid_parameter", message))

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html())

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": holder.current.describe()}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/v1/keypoints")
    async def keypoints(
        request: Request,
        faces: int = Query(
            1, ge=1, le=limits.max_faces, description="at most this many faces, largest first"
        ),
    ) -> JSONResponse:
        start = time.perf_counter()
        served = holder.current  # one model for the whole request, even if a swap happens meanwhile
        request.state.log["model_version"] = served.version
        data = await photo_bytes(request, limits)
        try:
            answer = await anyio.to_thread.run_sync(
                keypoints_answer, data, limits, served, faces, limiter=request.app.state.limiter
            )
        except RequestError:
            raise
        except Exception:  # logged here with its traceback; the client gets one line
            _log.exception("failed on a %d-byte photo", len(data))
            raise RequestError(
                500, "internal_error", "the server failed on this photo; its log has the details"
            ) from None
        answer["timing_ms"]["total"] = round((time.perf_counter() - start) * 1e3, 2)
        request.state.log["faces"] = len(answer["faces"])
        metrics.faces.inc(len(answer["faces"]))
        return JSONResponse(answer)

    return app
