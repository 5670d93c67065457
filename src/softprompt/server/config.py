"""The server's settings, as a typed dataclass from which `softprompt serve`'s flags are generated."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DType, at_least, check_fields, setting
from ..errors import SoftpromptError


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
    admin_token: str | None = setting(None, "enables PUT/DELETE /v1/prompts/NAME for requests presenting this token")
    prompt_cache_mb: float = setting(256.0, "memory for decoder-only prompts' keys/values kept between batches (LRU)")
    max_inputs: int = setting(64, "most inputs (or candidates) in one request")
    max_input_chars: int = setting(8000, "most characters in one input")
    max_body_mb: float = setting(16.0, "largest request body (an uploaded prompt file included)")
    max_tokens_limit: int = setting(256, "most new tokens a request may ask for")
    allow_other_backbone: bool = setting(False, "load prompts trained on another backbone of the same kind and width")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1 ...")
    dtype: DType = setting("fp32", "storage dtype of the frozen backbone")

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.prompts:
            raise SoftpromptError("give --prompts DIR (a directory of prompt folders; it may start empty)")
        at_least(self, 1, "max_batch_size", "max_batch_tokens", "max_inputs", "max_input_chars", "max_tokens_limit")
        at_least(self, 0, "max_wait_ms", "prompt_cache_mb")
        at_least(self, 0.001, "max_body_mb")
        if not 0 <= self.port <= 65535:
            raise SoftpromptError(f"port={self.port} (--port) must be between 0 and 65535")
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise SoftpromptError("--admin-token must have at least 8 characters")
