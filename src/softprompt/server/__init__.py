"""`softprompt serve`: one frozen backbone, every prompt of a directory, mixed in each batch over HTTP.

FastAPI + uvicorn: the standard Python stack for an ASGI JSON API. uvicorn is run with the
limits a server facing real traffic needs (the bound on requests in flight, `--limit-concurrency`,
is the app's own: uvicorn's would count idle connections and shut out /healthz): a deadline for each request head (`--header-timeout-s`,
so slow-loris connections are closed; uvicorn's own keep-alive timer restarts on every byte), and
a drain deadline on SIGTERM (`--drain-seconds`, under an orchestrator's 30 s grace period).
"""

from __future__ import annotations

import logging
import socket
import sys

from ..errors import SoftpromptError
from .config import ServeConfig

__all__ = ["ServeConfig", "serve"]  # the app itself: server.app.create_app (imported on use: FastAPI is not light)


def check_port_free(host: str, port: int) -> None:
    """Fail before the (slow) model load when the address cannot be bound."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise SoftpromptError(f"cannot listen on {host}:{port} (--host/--port): {err.strerror or err}") from None


def head_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol with a deadline for each request head that trickled bytes do not reset."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutH11(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(seconds, self._head_expired)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete and self._head_timer is not None:
                self._head_timer.cancel()  # a whole head arrived: the request timeout takes over
                self._head_timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._head_timer is None:  # the next request on this connection gets its own deadline
                self._head_timer = self.loop.call_later(seconds, self._head_expired)

        def connection_lost(self, exc) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _head_expired(self) -> None:
            self._head_timer = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return HeadTimeoutH11


def serve(config: ServeConfig) -> None:
    """Load the backbone and prompts, then answer until SIGINT/SIGTERM; raises SoftpromptError for a bad start."""
    import uvicorn

    from .access import listen_warning, resolve_secrets
    from .app import create_app
    from .prompts import load_server_model

    resolve_secrets(config)  # a missing token file fails before the model loads
    check_port_free(config.host, config.port)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    model, directory = load_server_model(config)
    app = create_app(model, directory, config)
    warning = listen_warning(config, resolve_secrets(config)[0])
    if warning:
        print(f"softprompt serve: warning: {warning}", file=sys.stderr, flush=True)
    print(f"softprompt serve: {len(model.bank)} prompts on {model.adapter.name} at http://{config.host}:{config.port}", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", http=head_timeout_protocol(config.header_timeout_s),
                timeout_keep_alive=max(1, int(config.header_timeout_s)),
                timeout_graceful_shutdown=max(1, int(config.drain_seconds)))
