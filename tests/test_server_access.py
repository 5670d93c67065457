"""Access to the server: Host names, the API key, the admin token, and where the secrets come from.

AccessGuard wraps a small FastAPI app with the server's shapes of routes (probes, /v1/*, /metrics
and the admin PUT/DELETE, which check the admin token themselves) and is driven through
Starlette's TestClient, a real ASGI stack.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.testclient import TestClient

from softprompt.errors import SoftpromptError
from softprompt.server.access import (
    LOOPBACK_HOSTS,
    AccessGuard,
    admin_problem,
    allowed_hosts,
    bearer,
    listen_warning,
    resolve_secrets,
)
from softprompt.server.config import ServeConfig

KEY, ADMIN = "api-key-0123456789", "admin-token-9876543210"


def small_app() -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        return {"status": "ready"}

    @app.post("/v1/predict")
    async def predict():
        return {"outputs": ["positive"]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse("softprompt_requests_total 1\n")

    @app.api_route("/v1/prompts/{name}", methods=["PUT", "DELETE"])
    async def admin(name: str, request: Request):
        problem = admin_problem(request.headers.get("authorization"), ADMIN)
        if problem is not None:
            status, message = problem
            return JSONResponse({"error": {"message": message, "code": status}}, status_code=status)
        return {"done": name}

    return app


def client(api_key: str | None = KEY, hosts: list[str] | None = LOOPBACK_HOSTS, base_url: str = "http://testserver",
           **guard) -> TestClient:
    return TestClient(AccessGuard(small_app(), api_key, hosts, **guard), base_url=base_url)


def auth(value: str) -> dict:
    return {"Authorization": value}


def error(response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()["error"]
    assert body["code"] == status and body["type"] == kind and body["param"] is None and body["message"]
    return body["message"]


# ---- Host -----------------------------------------------------------------------------------------
def test_a_foreign_host_is_refused_on_loopback():
    with client(api_key=None, base_url="http://evil.example") as c:
        assert "evil.example" in error(c.get("/healthz"), 400, "invalid_request_error")
    with client(api_key=None) as c:
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST", "testserver"):
            assert c.get("/healthz", headers={"host": host}).status_code == 200, host
        error(c.get("/healthz", headers={"host": "localhost.evil.example:8000"}), 400, "invalid_request_error")


def test_any_host_is_accepted_when_hosts_is_none():
    with client(api_key=None, hosts=None, base_url="http://prompts.internal:8000") as c:
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/predict").status_code == 200


def test_configured_hosts_are_parsed():
    assert allowed_hosts(ServeConfig(prompts="p", host="0.0.0.0", allowed_hosts=" A.example, b.example ,")) == ["a.example", "b.example"]
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert allowed_hosts(ServeConfig(prompts="p", host=host)) == ["localhost", "127.0.0.1", "::1", "testserver"], host
    assert allowed_hosts(ServeConfig(prompts="p", host="0.0.0.0")) is None
    assert allowed_hosts(ServeConfig(prompts="p", host="10.1.2.3")) is None


def test_listen_warning_only_when_open_to_the_network():
    open_config = ServeConfig(prompts="p", host="0.0.0.0")
    warning = listen_warning(open_config, None)
    assert warning and "0.0.0.0" in warning and "SOFTPROMPT_API_KEY" in warning and "\n" not in warning
    assert listen_warning(open_config, KEY) is None
    assert listen_warning(ServeConfig(prompts="p"), None) is None


# ---- the API key ----------------------------------------------------------------------------------
def test_the_key_is_required_on_v1_and_metrics_not_on_probes():
    with client() as c:
        for response in (c.post("/v1/predict"), c.get("/metrics"), c.post("/v1/predict", headers=auth(f"Bearer {KEY}x")),
                         c.post("/v1/predict", headers=auth(f"Basic {KEY}")), c.get("/v1/models")):
            error(response, 401, "authentication_error")
            assert response.headers["www-authenticate"] == "Bearer"
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"status": "ready"}
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert c.post("/v1/predict", headers=auth(f"{scheme} {KEY}")).json() == {"outputs": ["positive"]}, scheme
        assert c.get("/metrics", headers=auth(f"Bearer {KEY}")).text.startswith("softprompt_requests_total")


def test_no_key_means_open():
    with client(api_key=None) as c:
        assert c.post("/v1/predict").status_code == 200 and c.get("/metrics").status_code == 200


def test_the_guard_mounts_as_middleware():
    app = small_app()
    app.add_middleware(AccessGuard, api_key=KEY, hosts=LOOPBACK_HOSTS)
    with TestClient(app) as c:
        error(c.post("/v1/predict"), 401, "authentication_error")
        assert c.post("/v1/predict", headers=auth(f"Bearer {KEY}")).status_code == 200


# ---- the admin token ----------------------------------------------------------------------------------
def test_admin_requests_present_the_admin_token_instead_of_the_key():
    with client() as c:  # the guard does not know the admin token: the route checks it
        assert c.put("/v1/prompts/rte", headers=auth(f"bearer {ADMIN}")).json() == {"done": "rte"}
        assert c.delete("/v1/prompts/rte", headers=auth(f"Bearer {ADMIN}")).json() == {"done": "rte"}
        assert c.put("/v1/prompts/rte", headers=auth("Bearer wrong-token")).status_code == 401
        assert c.put("/v1/prompts/rte", headers=auth(f"Bearer {KEY}")).status_code == 401, "the API key is not the admin token"
        error(c.post("/v1/prompts/rte", headers=auth(f"Bearer {ADMIN}")), 401, "authentication_error")  # only PUT and DELETE
    with client(admin_token=ADMIN) as c:  # the guard knows it: a stranger is refused before the body is read
        error(c.put("/v1/prompts/rte", headers=auth("Bearer wrong-token")), 401, "authentication_error")
        assert c.put("/v1/prompts/rte", headers=auth(f"BEARER {ADMIN}")).json() == {"done": "rte"}


def test_admin_problem():
    status, message = admin_problem(f"Bearer {ADMIN}", None)
    assert status == 403 and "SOFTPROMPT_ADMIN_TOKEN" in message and "--admin-token-file" in message
    assert admin_problem(None, ADMIN)[0] == 401
    assert admin_problem("Bearer nope", ADMIN) == (401, "missing or wrong admin token (send 'Authorization: Bearer TOKEN')")
    assert admin_problem(ADMIN, ADMIN)[0] == 401, "no scheme"
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert admin_problem(f"{scheme} {ADMIN}", ADMIN) is None


def test_bearer():
    assert bearer("Bearer abc") == bearer("bearer abc") == bearer("BEARER  abc ") == "abc"
    assert bearer(None) is None and bearer("") is None and bearer("Bearer") is None and bearer("Bearer  ") is None
    assert bearer("Basic abc") is None and bearer("abc") is None


# ---- where the secrets come from -----------------------------------------------------------------------
@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("SOFTPROMPT_API_KEY", raising=False)
    monkeypatch.delenv("SOFTPROMPT_ADMIN_TOKEN", raising=False)
    return monkeypatch


def test_secrets_from_flags_then_env_then_file(env, tmp_path):
    assert resolve_secrets(ServeConfig(prompts="p")) == (None, None)
    env.setenv("SOFTPROMPT_API_KEY", KEY)
    env.setenv("SOFTPROMPT_ADMIN_TOKEN", ADMIN)
    assert resolve_secrets(ServeConfig(prompts="p")) == (KEY, ADMIN)
    assert resolve_secrets(ServeConfig(prompts="p", api_key="flag-key-123", admin_token="flag-token-123")) == (
        "flag-key-123", "flag-token-123")
    env.delenv("SOFTPROMPT_ADMIN_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(f"  {ADMIN}  \nsecond line is ignored\n")
    assert resolve_secrets(ServeConfig(prompts="p", admin_token_file=str(token_file))) == (KEY, ADMIN)


def test_secret_refusals_name_their_source(env, tmp_path):
    missing = tmp_path / "no-such-token"
    with pytest.raises(SoftpromptError, match=f"admin token file {missing}.*cannot be read"):
        resolve_secrets(ServeConfig(prompts="p", admin_token_file=str(missing)))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SoftpromptError, match=f"admin token file {empty}.*empty"):
        resolve_secrets(ServeConfig(prompts="p", admin_token_file=str(empty)))
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(SoftpromptError, match=f"admin token file {short}.*3 characters.*at least 8"):
        resolve_secrets(ServeConfig(prompts="p", admin_token_file=str(short)))
    env.setenv("SOFTPROMPT_ADMIN_TOKEN", "short")
    with pytest.raises(SoftpromptError, match=r"\$SOFTPROMPT_ADMIN_TOKEN.*5 characters"):
        resolve_secrets(ServeConfig(prompts="p"))
    env.delenv("SOFTPROMPT_ADMIN_TOKEN")
    env.setenv("SOFTPROMPT_API_KEY", "")  # an unset variable expanded into it must not open the server
    with pytest.raises(SoftpromptError, match=r"\$SOFTPROMPT_API_KEY.*0 characters"):
        resolve_secrets(ServeConfig(prompts="p"))
