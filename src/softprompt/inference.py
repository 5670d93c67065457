"""The library functions behind `softprompt eval` and `predict`: saved prompts scored or run by name.

`eval` scores each loaded prompt on its own task (a custom task's spec travels in the prompt
file), or on another task through a label map (zero-shot transfer); `predict` runs inputs that
each name their prompt, mixed in one batch.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import EvalConfig, PredictConfig
from .errors import SoftpromptError
from .evaluate import evaluate, predict
from .model import PromptedModel, load_prompted_model
from .tasks import Task, label_map_for, load_task, mapped_task, parse_label_map, require_examples, resolve_data_dir


def load_for(config: EvalConfig | PredictConfig) -> PromptedModel:
    model = load_prompted_model(list(config.prompt), config.model, config.allow_other_backbone, config.dtype, config.device)
    return model.eval()


def task_for_prompt(config: EvalConfig, model: PromptedModel, name: str) -> Task:
    """The task to score prompt `name` on: the one asked for (through a label map if its labels differ), else its own."""
    metadata = model.bank[name].metadata
    if config.task is None and config.task_spec is None:
        if metadata.task is None and metadata.task_spec is None:
            raise SoftpromptError(f"prompt {name!r} records no task; pass --task")
        return load_task(metadata.task or "custom", metadata.task_spec)
    task = load_task(config.task or "custom", config.task_spec)
    mapping = parse_label_map(config.label_map) if config.label_map else label_map_for(metadata.task, task)
    prompt_labels = metadata.labels or []
    if mapping is None and task.labels and prompt_labels and set(task.labels) != set(prompt_labels):
        raise SoftpromptError(f"task {task.name} has labels {', '.join(task.labels)} but prompt {name!r} has "
                              f"{', '.join(prompt_labels)}; pass --label-map TASK_LABEL=PROMPT_LABEL,...")
    return mapped_task(task, mapping, prompt_labels) if mapping else task


def eval_prompts(config: EvalConfig, progress: bool = False) -> list[dict]:
    """One result per loaded prompt: its name, the task and split scored, the example count and the metrics."""
    model = load_for(config)
    data_dir = resolve_data_dir(config.data_dir)
    results = []
    for name in model.bank.names:
        task = task_for_prompt(config, model, name)
        examples = require_examples(task, config.split, data_dir, task.load(config.split, data_dir)[: config.examples])
        metrics = evaluate(model, task, examples, name, config.method, config.batch_size, progress)
        results.append({"prompt": name, "task": task.name, "split": config.split, "examples": len(examples), **metrics})
    return results


def read_requests(path: str | Path, default_prompt: str) -> list[tuple[str, str]]:
    """(prompt name, input) pairs from a JSONL file of {"input": TEXT, "prompt": NAME}; raises SoftpromptError naming the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SoftpromptError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise SoftpromptError(f"{path}: not UTF-8 text") from None
    requests = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, prompt = row["input"], row.get("prompt", default_prompt)
        except (json.JSONDecodeError, AttributeError, TypeError):
            raise SoftpromptError(f"{path}, line {number}: not a JSON object") from None
        except KeyError:
            raise SoftpromptError(f"{path}, line {number}: missing field 'input'") from None
        if not isinstance(text, str) or not isinstance(prompt, str):
            raise SoftpromptError(f"{path}, line {number}: 'input' and 'prompt' must be strings")
        requests.append((prompt, text))
    return requests


def predict_inputs(config: PredictConfig) -> list[dict]:
    """{"prompt", "input", "output"} for each input, in order."""
    model = load_for(config)
    first = model.bank.names[0]
    requests = [(first, text) for text in config.input] if config.input else read_requests(config.input_file, first)
    outputs = predict(model, requests, config.method, config.batch_size, config.max_new_tokens)
    return [{"prompt": name, "input": text, "output": output} for (name, text), output in zip(requests, outputs)]
