"""Run the app under uvicorn: load the model first, then listen (127.0.0.1 by default).

The model is loaded before the port opens, so a wrong ``--model`` fails at once with one
line instead of a server that answers 500. The port is bound before "serving on" is logged,
so a port in use is one line (exit code 6) rather than uvicorn's startup failure. The MLflow
store is the project's (:func:`fkp.tracking.default_tracking_uri`: ``MLFLOW_TRACKING_URI`` or
``./mlflow.db``).
"""

from __future__ import annotations

import logging
import socket

from fkp.serving.web import access_log
from fkp.serving.web.limits import Limits
from fkp.tracking.registry import champion_uri

DEFAULT_MODEL = champion_uri()
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

_log = logging.getLogger(__name__)


def serve(
    model_ref: str = DEFAULT_MODEL,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    limits: Limits | None = None,
    poll_seconds: float = 30.0,
    tta_flip: bool = False,
    workers: int = 2,
) -> None:
    """Serve ``model_ref`` until interrupted (Ctrl-C / SIGTERM stop it cleanly)."""
    import mlflow
    import uvicorn

    from fkp.serving.heap import keep_freed_memory
    from fkp.serving.web.app import create_app
    from fkp.serving.web.model import ModelHolder, load
    from fkp.tracking import default_tracking_uri

    keep_freed_memory()  # before the model is loaded: each photo then reuses the last one's memory
    mlflow.set_tracking_uri(default_tracking_uri())
    served = load(model_ref, tta_flip=tta_flip)
    app = create_app(ModelHolder(served), limits, workers=workers, poll_seconds=poll_seconds)
    sock = listen(host, port)
    access_log.configure()
    logging.getLogger("fkp.serving.web").setLevel(logging.INFO)
    _log.info("serving %s (version %s) on http://%s:%d", model_ref, served.version, host, port)
    config = uvicorn.Config(
        app,
        http=headers_within((limits or Limits()).body_timeout_s),
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        timeout_keep_alive=5,  # idle connections between requests; a stalled upload: Limits.body_timeout_s
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock])


def headers_within(seconds: float) -> type:
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers take over ``seconds``.

    Stands in for a header read timeout (nginx's ``client_header_timeout``), which uvicorn lacks:
    its ``timeout_keep_alive`` is cancelled by the first byte of a request, so a client that sent
    half a request line held its connection for ever. A request being answered is never cut.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadersWithin(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_headers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_headers()

        def _await_headers(self) -> None:
            waiting_after = self.cycle  # None, or the request just answered

            def late() -> None:
                idle = self.cycle is None or self.cycle.response_complete
                if self.cycle is waiting_after and idle and not self.transport.is_closing():
                    self.transport.close()

            self.loop.call_later(seconds, late)

    return HeadersWithin


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, bound as uvicorn binds; an ``OSError`` names the address."""
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart over TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        raise OSError(error.errno, error.strerror, f"address {where}") from None
    sock.set_inheritable(True)
    return sock
