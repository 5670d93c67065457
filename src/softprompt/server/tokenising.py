"""Requests' items as token ids, on the model thread (the Rust tokenizers keep truncation state: not thread-safe).

Whatever a tokenizer raises for an item (a lone UTF-16 surrogate: a TypeError or UnicodeEncodeError)
is that item's fault: `InvalidInput` naming its field, never an exception in the engine. An input
that does not fit beside its prompt and the new tokens is `ContextTooLong`; OpenAI routes ask for
that (`strict`) instead of the cut `softprompt predict` makes.
"""

from __future__ import annotations

from dataclasses import replace

from ..data import Features, encode, target_ids
from ..errors import SoftpromptError
from ..model import PromptedModel
from ..tasks.base import Example
from .errors import ContextTooLong, InvalidInput, UnknownPrompt
from .work import Job


class Tokeniser:
    def __init__(self, model: PromptedModel):
        self.model, self.adapter = model, model.adapter
        self._token_text: dict[int, str] = {}

    def features(self, job: Job) -> list[Features]:
        """Each item tokenised with its prompt's settings; raises the typed error naming the item at fault."""
        adapter, out = self.adapter, []
        new_tokens = job.sampling.max_tokens if job.kind == "generate" else 0
        for item in job.items:
            if item.prompt not in self.model.bank:  # unloaded since the request was checked
                raise UnknownPrompt(f"unknown prompt {item.prompt!r}", "model" if job.strict else "prompt")
            record = self.model.bank[item.prompt]
            if item.ids is not None:
                ids = list(item.ids)
                if any(not 0 <= i < len(adapter.tokenizer) for i in ids):
                    raise InvalidInput(f"field {item.param!r} holds a token id outside the vocabulary (0..{len(adapter.tokenizer) - 1})",
                                       item.param)
            elif job.strict:
                ids = self._tokenise(item.text, item.param, adapter.max_positions + 1)
            else:
                try:  # cut to the prompt's input length, as `softprompt predict` does
                    ids = encode(adapter, item.prompt, record, Example(item.text, ""), with_target=False).input_ids
                except SoftpromptError as err:
                    raise InvalidInput(f"field {item.param!r}: {err}", item.param) from None
                except Exception as err:  # noqa: BLE001 - whatever the tokenizer raises, the input is at fault
                    raise InvalidInput(f"field {item.param!r} cannot be tokenised: {type(err).__name__}: {str(err)[:200]}",
                                       item.param) from None
            if not ids:
                raise InvalidInput(f"field {item.param!r} is empty", item.param)
            room = adapter.max_positions - adapter.sequence_positions(record.length, len(ids), 0)
            if job.fit_max_tokens and 1 <= room < new_tokens:  # no max_tokens asked for: what the context leaves
                new_tokens = room
                job.sampling = replace(job.sampling, max_tokens=room)
            needed = adapter.sequence_positions(record.length, len(ids), new_tokens)
            if needed > adapter.max_positions:
                raise ContextTooLong(
                    f"this model's maximum context length is {adapter.max_positions} tokens; the request needs {needed} "
                    f"(prompt {record.length}, input {len(ids)}, max_tokens {new_tokens}): shorten the input or max_tokens",
                    item.param)
            out.append(Features(ids, [], item.prompt))
        for row, candidates in enumerate(job.candidates or []):
            record = self.model.bank[job.items[row].prompt]
            for k, candidate in enumerate(candidates):
                try:  # tokenised again in the forward (cached there); here a bad one fails its own job
                    target_ids(adapter, record, candidate)
                except Exception as err:  # noqa: BLE001 - whatever the tokenizer raises, the candidate is at fault
                    where = f"candidates.{k}"
                    raise InvalidInput(f"field {where!r} cannot be tokenised: {type(err).__name__}: {str(err)[:200]}", where) from None
        return out

    def _tokenise(self, text: str | None, param: str, limit: int) -> list[int]:
        try:
            return self.adapter.input_ids(text or "", limit)
        except Exception as err:  # noqa: BLE001 - e.g. a lone UTF-16 surrogate: UnicodeEncodeError in the Rust tokenizer
            raise InvalidInput(f"field {param!r} cannot be tokenised: {type(err).__name__}: {str(err)[:200]}", param) from None

    def token_text(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.adapter.tokenizer.decode([token])
        return text

