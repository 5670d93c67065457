"""The PEFT baseline server for benchmarks/serve_load.py: the same HTTP stack, PEFT's way of serving prompts.

FastAPI + uvicorn and the same `/v1/predict` request schema as `softprompt serve`; behind it one
`PeftModel` holding every prompt as an adapter (`load_adapter` per prompt at start,
`set_adapter` per request). PEFT keeps one active adapter per model, so requests are served one
at a time under a lock, each as one batch of its own inputs: this is how PEFT serves several
prompt-tuning adapters (it cannot mix them in a batch, PEFT issue #759).

Rank classification runs each (input, label) sequence through the PEFT model, with the virtual
tokens PEFT puts in front, and sums the label tokens' log-probabilities, computing logits only
for the label positions (like softprompt). PEFT ignores position ids for prompt learning, so
left-padded rows see shifted positions and PEFT's answers are not checked against `predict`:
this server is measured for speed only.

    python benchmarks/peft_server.py --model packaged:smollm2-135m --adapters DIR --port 8001
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from peft import PeftModel

from softprompt.backbones import BackboneSpec, label_nll, load_backbone
from softprompt.prompt_io import load_prompt
from softprompt.server.schemas import PredictRequest


def build_app(model_name: str, adapters: Path) -> FastAPI:
    backbone = load_backbone(BackboneSpec(model_name, "fp32", "cpu"))
    folders = sorted(p for p in adapters.iterdir() if (p / "adapter_config.json").is_file())
    peft_model = PeftModel.from_pretrained(backbone.model, folders[0], adapter_name=folders[0].name)
    for folder in folders[1:]:
        peft_model.load_adapter(folder, adapter_name=folder.name)
    peft_model.eval()
    labels = {f.name: load_prompt(f / "softprompt")[1].labels for f in folders}
    tokenizer, pad_id = backbone.tokenizer, backbone.tokenizer.pad_token_id
    lock = threading.Lock()
    app = FastAPI()

    def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])  # (b, n)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])  # (b, n)
        return ids, mask

    @torch.no_grad()
    def rank(inputs: list[list[int]], options: list[str]) -> list[str]:
        targets = [backbone.target_ids(o, 16) for o in options]
        rows = [i + t for i in inputs for t in targets]  # (input, label) pairs
        ids, mask = left_padded(rows)
        width = max(len(t) for t in targets)
        labels = torch.full((len(rows), width), -100)
        for r, (_, t) in enumerate((i, t) for i in inputs for t in targets):
            labels[r, width - len(t):] = torch.tensor(t)  # left padding: every label ends in the last column
        logits = peft_model(input_ids=ids, attention_mask=mask, logits_to_keep=width + 1).logits  # (c, width + 1, V)
        scores = (-label_nll(logits[:, :-1], labels)[0]).view(len(inputs), len(targets))  # (b, labels)
        return [options[int(row.argmax())] for row in scores]

    @torch.no_grad()
    def generate(inputs: list[list[int]], max_new_tokens: int) -> list[str]:
        ids, mask = left_padded(inputs)
        out = peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
        return [t.strip() for t in tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)]

    @app.post("/v1/predict")
    def predict(body: PredictRequest):  # a plain def: FastAPI runs it in its thread pool, the lock serialises
        inputs = [backbone.input_ids(text, 400) for text in body.inputs]
        with lock:
            peft_model.set_adapter(body.prompt)
            if body.method == "rank":
                return {"outputs": rank(inputs, labels[body.prompt])}
            return {"outputs": generate(inputs, body.max_new_tokens)}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "prompts": len(folders)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapters", required=True, type=Path, help="folder of PEFT adapter folders (each with softprompt/ inside)")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(build_app(args.model, args.adapters), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
