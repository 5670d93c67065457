"""The server's settings, as a typed dataclass from which `softprompt serve`'s flags are generated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import DType, at_least, check_fields, setting
from ..errors import SoftpromptError

ChatFormat = Literal["input", "backbone"]


@dataclass
class ServeConfig:
    """One frozen backbone, every prompt folder of a directory, answered over HTTP with dynamic batching."""

    prompts: str = setting("", "directory of prompt folders, one per prompt; the folder name is the prompt name", path=True)
    model: str | None = setting(None, "backbone (default: the one recorded in the first prompt folder, else the packaged default)")
    host: str = setting("127.0.0.1", "address to listen on; localhost by default, so nothing outside this machine reaches it")
    port: int = setting(8000, "TCP port")
    max_batch_size: int = setting(64, "most examples in one forward; requests are gathered up to this")
    max_batch_tokens: int = setting(1024, "most padded input tokens in one forward: gathered examples are split by length "
                                          "to fit (short forwards beat long padded ones on a CPU; raise it on a GPU)")
    max_wait_ms: float = setting(5.0, "how long the first request of a batch waits for others to join it")
    max_running: int = setting(64, "most sequences generating at once (continuous batching: new ones join between steps)")
    max_queued: int = setting(1024, "most examples waiting (a score request counts its candidates, generation its choices); "
                                    "past it requests get a 503 with Retry-After")
    request_timeout_s: float = setting(60.0, "a request not finished this long after it arrived is dropped with a 504")
    drain_seconds: float = setting(20.0, "on SIGTERM, how long in-flight requests may finish (under Kubernetes' 30 s grace)")
    limit_concurrency: int = setting(512, "most requests in flight at once (health probes exempt); a 503 with Retry-After past it")
    header_timeout_s: float = setting(10.0, "a connection that has not sent a whole request head this long is closed "
                                            "(slow clients), also between keep-alive requests")
    stuck_seconds: float = setting(120.0, "/healthz answers 503 when work waits and the model thread has not moved this long")
    default_temperature: float = setting(0.0, "temperature of a completion request that sets none (0: greedy, as predict)")
    chat_format: ChatFormat = setting("input", "how /v1/chat/completions turns messages into the input: 'input' joins the "
                                               "messages' texts (a prompt is trained on task inputs), 'backbone' applies "
                                               "the backbone's chat template")
    api_key: str | None = setting(None, "key /v1/* and /metrics require (Authorization: Bearer KEY); "
                                        "default: $SOFTPROMPT_API_KEY, else none")
    admin_token: str | None = setting(None, "enables PUT/DELETE /v1/prompts/NAME for this token; prefer "
                                            "$SOFTPROMPT_ADMIN_TOKEN or --admin-token-file (a flag shows in `ps`)")
    admin_token_file: str | None = setting(None, "file whose first line is the admin token", path=True)
    allowed_hosts: str = setting("", "comma-separated Host names accepted (default: localhost names when listening on "
                                     "loopback, any otherwise); others get a 400 (DNS rebinding)")
    docs: bool = setting(False, "serve /docs, /redoc and /openapi.json")
    prompts_writable: bool = setting(False, "PUT writes the prompt folder (atomically) and DELETE removes it, so replicas "
                                            "sharing the directory follow")
    watch_seconds: float = setting(0.0, "rescan the prompt directory this often, between batches (0: never)")
    trim_memory_s: float = setting(5.0, "after work, hand the memory freed by the model thread back to the OS at most this "
                                        "often (glibc's malloc_trim; without it resident memory grows under load; 0: never)")
    prompt_cache_mb: float = setting(256.0, "memory for decoder-only prompts' keys/values kept between batches (LRU)")
    max_inputs: int = setting(64, "most inputs (or candidates) in one request")
    max_input_chars: int = setting(8000, "most characters in one input")
    max_body_mb: float = setting(16.0, "largest request body (an uploaded prompt file included)")
    max_tokens_limit: int = setting(256, "most new tokens a request may ask for")
    max_choices: int = setting(16, "most choices (n) one completion request may ask for")
    allow_other_backbone: bool = setting(False, "load prompts trained on another backbone of the same kind and width")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1 ...")
    dtype: DType = setting("fp32", "storage dtype of the frozen backbone")

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.prompts:
            raise SoftpromptError("give --prompts DIR (a directory of prompt folders; it may start empty)")
        at_least(self, 1, "max_batch_size", "max_batch_tokens", "max_inputs", "max_input_chars", "max_tokens_limit",
                 "max_running", "max_queued", "limit_concurrency", "max_choices")
        at_least(self, 0, "max_wait_ms", "prompt_cache_mb", "watch_seconds", "default_temperature", "trim_memory_s")
        at_least(self, 0.001, "max_body_mb", "request_timeout_s", "drain_seconds", "header_timeout_s", "stuck_seconds")
        if not 0 <= self.port <= 65535:
            raise SoftpromptError(f"port={self.port} (--port) must be between 0 and 65535")
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise SoftpromptError("--admin-token must have at least 8 characters")
        if self.api_key is not None and len(self.api_key) < 8:
            raise SoftpromptError("--api-key must have at least 8 characters")
