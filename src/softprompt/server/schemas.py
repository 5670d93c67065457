"""Request bodies, validated by pydantic: a malformed request is refused naming its field.

`/v1/completions` and `/v1/chat/completions` take OpenAI's fields, nullable where OpenAI's are
(`"stream": null` is "not set"). Fields this server does not implement are refused by name when
they would change the output (`logit_bias`, penalties, `suffix`, tools ...) instead of being
ignored; fields that only describe the caller (`user`) are accepted. Fields OpenAI does not
have are ignored, as vLLM does.
"""

from __future__ import annotations

from typing import Any, Literal

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


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool | None = None


class OpenAIRequest(BaseModel):
    """The fields completions and chat share."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's extra sampling fields: refused when set, since they would change the output
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None

    def refused(self) -> tuple[str, str] | None:
        """(field, why) for the first field set to something this server would otherwise have to ignore."""
        checks = [
            ("logit_bias", bool(self.logit_bias), "logit_bias is not supported"),
            ("presence_penalty", self.presence_penalty not in (None, 0), "presence_penalty is not supported"),
            ("frequency_penalty", self.frequency_penalty not in (None, 0), "frequency_penalty is not supported"),
            ("top_k", self.top_k not in (None, 0, -1), "top_k is not supported (use top_p)"),
            ("min_p", self.min_p not in (None, 0), "min_p is not supported"),
            ("repetition_penalty", self.repetition_penalty not in (None, 1), "repetition_penalty is not supported"),
            ("min_tokens", self.min_tokens not in (None, 0), "min_tokens is not supported"),
        ]
        return next(((name, why) for name, bad, why in checks if bad), None)

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def refused(self) -> tuple[str, str] | None:
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported"
        if self.best_of not in (None, 1) and self.best_of != (self.n or 1):
            return "best_of", "best_of other than n is not supported"
        return super().refused()


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def refused(self) -> tuple[str, str] | None:
        if self.tools:
            return "tools", "tools (function calling) are not supported"
        if self.tool_choice not in (None, "none", "auto"):
            return "tool_choice", "tool_choice is not supported"
        if self.response_format and self.response_format.get("type") != "text":
            return "response_format", "only response_format {'type': 'text'} is supported"
        if self.top_logprobs and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs: true"
        return super().refused()
