"""`softprompt serve`: one frozen backbone, every prompt of a directory, mixed in each batch over HTTP.

FastAPI + uvicorn: the standard Python stack for an ASGI JSON API, with request validation
(pydantic) and graceful shutdown (SIGTERM: stop accepting, finish in-flight requests, then stop
the batcher) built in.
"""

from __future__ import annotations

import logging
import socket

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


def serve(config: ServeConfig) -> None:
    """Load the backbone and prompts, then answer until SIGINT/SIGTERM; raises SoftpromptError for a bad start."""
    import uvicorn

    from .app import create_app
    from .prompts import load_server_model

    check_port_free(config.host, config.port)
    model, directory = load_server_model(config)
    app = create_app(model, directory, config)
    logging.getLogger("softprompt.server").info("serving %d prompts on %s", len(model.bank), model.adapter.name)
    print(f"softprompt serve: {len(model.bank)} prompts on {model.adapter.name} at http://{config.host}:{config.port}", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=60)
