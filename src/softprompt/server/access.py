"""Who may talk to the server: an API key for /v1/* and /metrics, an admin token for loading prompts, and Host names.

A server that listens beyond loopback answers anyone who can reach the port, so the key is the
one gate; on loopback the Host check stops DNS rebinding (a web page whose name resolves to
127.0.0.1 would otherwise reach the server from the user's browser). Secrets come from flags,
the environment or a file (a flag shows in `ps`); each is compared in constant time. The checks
sit in one pure ASGI middleware, before FastAPI parses a body, so a refused request costs nothing.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from pathlib import Path

from ..errors import SoftpromptError
from .config import ServeConfig

API_KEY_ENV, ADMIN_TOKEN_ENV = "SOFTPROMPT_API_KEY", "SOFTPROMPT_ADMIN_TOKEN"
MIN_SECRET_CHARS = 8
# "testserver" is the Host that Starlette's TestClient sends, so in-process tests pass the loopback default.
LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "::1", "testserver"]
OPEN_PATHS = ("/healthz", "/readyz")  # probes: a load balancer or Kubernetes holds no key
ADMIN_OFF = "prompt loading and unloading are disabled; start the server with $SOFTPROMPT_ADMIN_TOKEN or --admin-token-file"
ADMIN_WRONG = "missing or wrong admin token (send 'Authorization: Bearer TOKEN')"


def resolve_secrets(config: ServeConfig) -> tuple[str | None, str | None]:
    """(api_key, admin_token): each from its flag, else its environment variable; the token else from its file.

    Refuses, with one line naming where it came from, a secret under 8 characters (an empty
    variable included: `SOFTPROMPT_API_KEY=$UNSET` must not silently open the server) and a
    token file that is missing, unreadable or empty.
    """
    api_key = _secret(config.api_key, "--api-key") or _secret(os.environ.get(API_KEY_ENV), f"${API_KEY_ENV}")
    admin_token = _secret(config.admin_token, "--admin-token") or _secret(os.environ.get(ADMIN_TOKEN_ENV), f"${ADMIN_TOKEN_ENV}")
    if admin_token is None and config.admin_token_file:
        admin_token = _secret(_first_line(Path(config.admin_token_file)), f"admin token file {config.admin_token_file}")
    return api_key, admin_token


def _secret(value: str | None, source: str) -> str | None:
    if value is None:
        return None
    value = value.strip()  # a bearer token cannot carry surrounding blanks; a trailing newline is a copy-paste slip
    if len(value) < MIN_SECRET_CHARS:
        raise SoftpromptError(f"{source}: the secret has {len(value)} characters; it needs at least {MIN_SECRET_CHARS}")
    return value


def _first_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise SoftpromptError(f"admin token file {path} (--admin-token-file) cannot be read: {reason}") from None
    if not lines or not lines[0].strip():
        raise SoftpromptError(f"admin token file {path} (--admin-token-file) is empty; its first line must be the token")
    return lines[0]


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(config: ServeConfig) -> list[str] | None:
    """The Host names to accept: the configured list, else loopback names on a loopback server, else None (any)."""
    hosts = [h.strip().lower() for h in config.allowed_hosts.split(",") if h.strip()]
    if hosts:
        return hosts
    return list(LOOPBACK_HOSTS) if is_loopback(config.host) else None


def listen_warning(config: ServeConfig, api_key: str | None) -> str | None:
    """One line to print when the server is reachable from other machines and open to all of them."""
    if is_loopback(config.host) or api_key:
        return None
    return (f"warning: listening on {config.host} without an API key: anyone who reaches port {config.port} can use "
            f"the model; set ${API_KEY_ENV}")


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header (the scheme is case-insensitive, RFC 9110), else None."""
    parts = (authorization or "").split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1].strip() or None


def same_secret(presented: str | None, secret: str) -> bool:
    """Constant-time equality; header text is Latin-1 decoded (ASGI), so its bytes are compared with the secret's UTF-8."""
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("latin-1", "replace"), secret.encode("utf-8"))


def admin_problem(authorization: str | None, admin_token: str | None) -> tuple[int, str] | None:
    """None when the request may load or unload prompts, else (status, message) for the route to answer."""
    if admin_token is None:
        return 403, ADMIN_OFF
    if not same_secret(bearer(authorization), admin_token):
        return 401, ADMIN_WRONG
    return None


def request_host(value: str) -> str:
    """The host of a Host header without its port: 'a.b:80' -> 'a.b', '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:  # more than one colon is a bare IPv6 address, which has no port
        return value.partition(":")[0]
    return value


def needs_key(path: str) -> bool:
    if path in OPEN_PATHS:
        return False
    return path in ("/v1", "/metrics") or path.startswith(("/v1/", "/metrics/"))


def is_admin(method: str, path: str) -> bool:
    return method in ("PUT", "DELETE") and path.startswith("/v1/prompts/")


class AccessGuard:
    """ASGI middleware: a 400 for a Host not in `hosts` (None: any), a 401 for /v1/* and /metrics without `api_key`.

    Admin requests (PUT/DELETE /v1/prompts/...) carry the admin token instead of the key; the
    route checks it (`admin_problem`). Given `admin_token`, the guard lets through only the key
    or that token, so a stranger's upload is refused before its body is read; without it, the
    guard leaves admin requests to the route. Pure ASGI rather than BaseHTTPMiddleware: no task
    per request, and streaming bodies pass untouched.
    """

    def __init__(self, app, api_key: str | None, hosts: list[str] | None, admin_token: str | None = None):
        self.app, self.api_key, self.admin_token = app, api_key, admin_token
        self.hosts = None if hosts is None else {h.lower() for h in hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            problem = self.problem(scope)
            if problem is not None:
                await _send_error(send, *problem)
                return
        await self.app(scope, receive, send)

    def problem(self, scope) -> tuple[int, str, str] | None:
        """(status, error type, message) of a request to refuse, else None."""
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", ())}
        if self.hosts is not None:
            host = request_host(headers.get("host", ""))
            if host not in self.hosts:
                return 400, "invalid_request_error", f"Host {host!r} is not allowed here (--allowed-hosts)"
        path = scope.get("path", "")
        if self.api_key is None or not needs_key(path):
            return None
        token = bearer(headers.get("authorization"))
        if same_secret(token, self.api_key):
            return None
        if is_admin(scope.get("method", ""), path) and (self.admin_token is None or same_secret(token, self.admin_token)):
            return None
        return 401, "authentication_error", "missing or wrong API key (send 'Authorization: Bearer KEY')"


async def _send_error(send, status: int, kind: str, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
