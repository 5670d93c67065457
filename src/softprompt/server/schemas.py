"""Request bodies, validated by pydantic: a malformed request is refused naming its field.

`/v1/completions` follows OpenAI's completions API, so an OpenAI client works unchanged; the
options this server cannot honour (sampling, several choices, streaming, log-probabilities,
echo) are refused with a 400 naming the field rather than silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PredictRequest(Strict):
    prompt: str
    inputs: list[str] = Field(min_length=1)
    method: Literal["rank", "generate"] = "generate"
    max_new_tokens: int = Field(16, ge=1)


class ScoreRequest(Strict):
    prompt: str
    input: str
    candidates: list[str] = Field(min_length=1)


class PromptUpload(Strict):
    """Either a folder inside the prompt directory, or a prompt file's two parts (weights as base64)."""

    folder: str | None = None
    weights: str | None = None
    metadata: dict | None = None


class CompletionRequest(BaseModel):
    """OpenAI's fields; others an OpenAI client may send (user, penalties, seed ...) are accepted and have no effect."""

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = None
    n: int = 1
    best_of: int | None = None
    stream: bool = False
    echo: bool = False
    logprobs: int | None = None
    stop: str | list[str] | None = None
    suffix: str | None = None

    def unsupported(self) -> tuple[str, str] | None:
        """(field, why) for the first option set to something other than greedy single-choice completion."""
        checks = [
            ("temperature", self.temperature not in (None, 0), "only temperature 0 (greedy decoding) is supported"),
            ("top_p", self.top_p not in (None, 1), "only top_p 1 is supported (decoding is greedy)"),
            ("n", self.n != 1, "only n = 1 is supported"),
            ("best_of", self.best_of not in (None, 1), "only best_of 1 is supported"),
            ("stream", self.stream, "streaming is not supported"),
            ("echo", self.echo, "echo is not supported"),
            ("logprobs", self.logprobs is not None, "logprobs are not supported; use POST /v1/score"),
            ("suffix", self.suffix is not None, "suffix is not supported"),
        ]
        return next(((name, why) for name, bad, why in checks if bad), None)

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
