"""Uploaded and saved prompts are checked like training configs: floating dtypes, finite in fp32, sane sizes and fields.

No model is needed: every refusal comes before a backbone is involved, with one line naming
where the prompt came from and what is wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save

from softprompt.errors import SoftpromptError
from softprompt.prompt_io import METADATA_NAME, WEIGHTS_NAME, PromptMetadata, load_prompt, prompt_from_bytes, save_prompt

LENGTH, WIDTH = 4, 32


def metadata(**fields) -> dict:
    return asdict(PromptMetadata(LENGTH, WIDTH, "random-uniform", labels=["negative", "positive"])) | fields


def weights(tensor: torch.Tensor) -> bytes:
    return save({"prompt": tensor.contiguous()})


def refused(tensor: torch.Tensor, *words: str, **fields) -> str:
    with pytest.raises(SoftpromptError) as caught:
        prompt_from_bytes(weights(tensor), metadata(**fields), "uploaded prompt")
    message = str(caught.value)
    assert message.startswith("uploaded prompt") and "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def test_a_good_f16_upload_loads_as_fp32():
    tensor = torch.randn(LENGTH, WIDTH).half()
    weight, parsed = prompt_from_bytes(weights(tensor), metadata(), "uploaded prompt")
    assert weight.dtype == torch.float32 and torch.equal(weight, tensor.float())
    assert parsed.labels == ["negative", "positive"]
    for dtype in (torch.bfloat16, torch.float64):
        assert prompt_from_bytes(weights(torch.randn(LENGTH, WIDTH, dtype=dtype)), metadata(), "x")[0].dtype == torch.float32


def test_an_f64_that_overflows_fp32_is_refused():
    tensor = torch.zeros(LENGTH, WIDTH, dtype=torch.float64)
    tensor[1, 2] = 1e300  # finite in F64, infinite once cast to the bank's fp32
    refused(tensor, "weights", "infinite")


@pytest.mark.parametrize("dtype,name", [(torch.bool, "BOOL"), (torch.int32, "I32"), (torch.int64, "I64"),
                                        (torch.float8_e4m3fn, "F8_E4M3"), (torch.float8_e5m2, "F8_E5M2")])
def test_non_floating_and_fp8_dtypes_are_refused(dtype, name):
    refused(torch.zeros(LENGTH, WIDTH).to(dtype), "weights", f"dtype {name}", "F16, BF16, F32, F64")


def test_a_prompt_of_huge_norm_is_refused():
    tensor = torch.randn(LENGTH, WIDTH)
    tensor[2] = 2e3  # finite, but a row norm of about 11,000
    refused(tensor, "row 2", "L2 norm 1.13e+04", "over 10,000")


@pytest.mark.parametrize("fields,named", [
    ({"max_input_length": -1}, "max_input_length=-1"),
    ({"max_target_length": 0}, "max_target_length=0"),
    ({"length": 0}, "length=0"),
    ({"length": 100_001}, "length=100001"),
    ({"width": 0}, "width=0"),
    ({"labels": ["positive", "negative", "positive"]}, "'positive' twice"),
    ({"labels": []}, "labels has 0 entries"),
    ({"labels": ["positive", " "]}, "labels[1] is empty"),
    ({"labels": [str(i) for i in range(10_001)]}, "labels has 10001 entries"),
])
def test_metadata_out_of_range_is_refused_naming_the_field(fields, named):
    message = refused(torch.randn(LENGTH, WIDTH), "uploaded prompt metadata", named, **fields)
    assert "field" in message


def test_folders_get_the_same_checks_naming_the_file(tmp_path):
    tensor = torch.zeros(LENGTH, WIDTH, dtype=torch.float64)
    tensor[0, 0] = 1e300
    (tmp_path / WEIGHTS_NAME).write_bytes(weights(tensor))
    (tmp_path / METADATA_NAME).write_text(json.dumps(metadata()))
    with pytest.raises(SoftpromptError, match=re.escape(str(tmp_path / WEIGHTS_NAME)) + ".*infinite"):
        load_prompt(tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(weights(torch.zeros(LENGTH, WIDTH, dtype=torch.int32)))
    with pytest.raises(SoftpromptError, match=re.escape(str(tmp_path / WEIGHTS_NAME)) + ".*dtype I32"):
        load_prompt(tmp_path)
    (tmp_path / METADATA_NAME).write_text(json.dumps(metadata(labels=["a", "a"])))
    with pytest.raises(SoftpromptError, match=re.escape(str(tmp_path / METADATA_NAME)) + ".*labels holds 'a' twice"):
        load_prompt(tmp_path)


def test_a_saved_empty_prompt_of_model_tuning_still_loads(tmp_path):
    """Model tuning saves a length-0 prompt beside its tuned backbone; folders keep accepting it, uploads do not."""
    save_prompt(tmp_path, torch.zeros(0, WIDTH), PromptMetadata(0, WIDTH, "none"))
    weight, parsed = load_prompt(tmp_path)
    assert weight.shape == (0, WIDTH) and parsed.length == 0
