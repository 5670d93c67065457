"""The `softprompt` command line: argument parsing only; each subcommand calls one library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from .config import EVAL_METHODS, INITS, TARGET_FORMATS, TUNE_MODES, PromptConfig, TrainConfig
from .errors import SoftpromptError


def add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="task name (sst2, mrpc, qqp, boolq, cb, copa, multirc, rte, wic, wsc, record, squad) or 'custom'")
    p.add_argument("--data-dir", help="GLUE/SuperGLUE file layout; default $SOFTPROMPT_DATA_DIR, else the Hugging Face hub")
    p.add_argument("--train-file", help="custom task: training rows (.jsonl, .csv or .tsv)")
    p.add_argument("--dev-file", help="custom task: validation rows")
    p.add_argument("--input-template", help="custom task: input text over the row's fields, e.g. 'review: {text}'")
    p.add_argument("--target-field", help="custom task: the field holding the target text")
    p.add_argument("--labels", help="custom task: comma-separated legal labels")


def custom_spec(args: argparse.Namespace) -> dict | None:
    """The custom task's fields when --task custom, else None."""
    if args.task != "custom":
        return None
    missing = [flag for flag, value in (("--train-file", args.train_file), ("--input-template", args.input_template), ("--target-field", args.target_field)) if not value]
    if missing:
        raise SoftpromptError(f"--task custom needs {', '.join(missing)}")
    return {
        "train_file": args.train_file, "validation_file": args.dev_file, "input_template": args.input_template,
        "target_field": args.target_field, "labels": tuple(args.labels.split(",")) if args.labels else None,
    }


def cmd_train(args: argparse.Namespace) -> None:
    from .train import train

    defaults = TrainConfig()
    prompt = PromptConfig(
        length=args.prompt_length, init=args.init, init_range=args.init_range,
        vocab_sample_size=args.vocab_sample_size, init_text=args.init_text, init_file=args.init_file,
    )
    config = TrainConfig(
        task=args.task or defaults.task, model=args.model, output=args.output, data_dir=args.data_dir, prompt=prompt,
        max_steps=args.max_steps, max_minutes=args.max_minutes, batch_size=args.batch_size,
        group_by_length=args.group_by_length, lr=args.lr,
        train_examples=args.train_examples, eval_every=args.eval_every, eval_examples=args.eval_examples, eval_method=args.eval_method,
        max_input_length=args.max_input_length, max_target_length=args.max_target_length,
        checkpoint_every=args.checkpoint_every, seed=args.seed, target_format=args.target_format,
        device=args.device, compile=args.compile, ema_decay=args.ema_decay, task_spec=custom_spec(args), tune=args.tune,
    )
    result = train(config, resume=args.resume, progress=not args.quiet)
    print(json.dumps({"output": str(result.output), "steps": result.steps, "best_step": result.best_step, "best": result.best_metrics}))


def cmd_eval(args: argparse.Namespace) -> None:
    from .data import Encoder
    from .evaluate import evaluate
    from .model import load_prompted_model
    from .tasks import resolve_data_dir
    from .train import load_task

    model, metadata = load_prompted_model(args.prompt, args.model, args.allow_other_backbone)
    args.task = args.task or metadata.task
    task = load_task(TrainConfig(task=args.task, task_spec=custom_spec(args)))
    examples = task.load(args.split, resolve_data_dir(args.data_dir))[: args.examples]
    encoder = Encoder(model.tokenizer, model.is_encoder_decoder, target_format=metadata.target_format)
    metrics = evaluate(model, task, examples, encoder, 0, args.method, args.batch_size, progress=not args.quiet)
    print(json.dumps({"task": task.name, "split": args.split, "examples": len(examples), **metrics}))


def read_requests(args: argparse.Namespace, default_prompt: str) -> list[tuple[str, str]]:
    """(prompt name, input) pairs from --input arguments or a JSONL file of {"input", "prompt"}."""
    if args.input:
        return [(default_prompt, text) for text in args.input]
    if not args.input_file:
        raise SoftpromptError("predict needs --input TEXT or --input-file FILE.jsonl")
    requests = []
    path = Path(args.input_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SoftpromptError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise SoftpromptError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            requests.append((row.get("prompt", default_prompt), row["input"]))
        except (json.JSONDecodeError, AttributeError):
            raise SoftpromptError(f"{path}, line {number}: not a JSON object") from None
        except KeyError:
            raise SoftpromptError(f"{path}, line {number}: missing field 'input'") from None
    return requests


def cmd_predict(args: argparse.Namespace) -> None:
    from .data import Encoder
    from .evaluate import predict
    from .model import load_prompted_model

    model, metadata = load_prompted_model(args.prompt, args.model, args.allow_other_backbone)
    requests = read_requests(args, model.prompt_names[0])
    encoder = Encoder(model.tokenizer, model.is_encoder_decoder, target_format=metadata.target_format)
    outputs = predict(model, requests, encoder, args.method, args.batch_size, args.max_new_tokens)
    for (name, text), output in zip(requests, outputs):
        print(json.dumps({"prompt": name, "input": text, "output": output}))


def cmd_export(args: argparse.Namespace) -> None:
    from .interop import export_prompt

    print(export_prompt(args.prompt, args.output, args.format))


def cmd_import(args: argparse.Namespace) -> None:
    from .interop import import_prompt

    model = None
    if args.model:
        from .model import PromptedModel, load_backbone

        model = PromptedModel(*load_backbone(args.model), args.model)
    labels = tuple(args.labels.split(",")) if args.labels else None
    print(import_prompt(args.input, args.output, args.format, model=model, task=args.task, labels=labels))


def cmd_inspect(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from .prompt_io import load_prompt

    weight, metadata = load_prompt(args.prompt)
    stats = {"norm_mean": round(float(weight.norm(dim=1).mean()), 4)}
    print(json.dumps({**asdict(metadata), **stats}, indent=2))


def pretrain_configs(args: argparse.Namespace):
    """The two training stages' configs from the pretrain flags (shared by all pretrain commands)."""
    from .pretrain import PretrainConfig

    common = dict(batch_size=args.batch_size, inputs_length=args.inputs_length, seed=args.seed, device=args.device,
                  compile=args.compile, max_minutes=args.max_minutes, progress=not args.quiet)
    span = PretrainConfig(objective="span-corruption", model=args.size, steps=args.span_steps, lr=args.lr,
                          warmup_steps=args.warmup_steps, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, **common)
    lm = PretrainConfig(objective="lm-adapt", model=args.size, steps=args.lm_steps, lr=args.lm_lr, targets_length=args.inputs_length,
                        warmup_steps=min(args.warmup_steps, max(1, args.lm_steps // 10)), eval_every=args.eval_every,
                        checkpoint_every=args.checkpoint_every, **common)
    return span, lm


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .pretrain import (BackboneConfig, TokenizerConfig, build_backbone, build_corpus_cache, package_checkpoint,
                           pretrain, read_cache_meta, write_lineage_card)
    from .pretrain.corpus import task_inputs

    span, lm = pretrain_configs(args)
    command = "softprompt " + " ".join(sys.argv[1:])
    if args.stage == "backbone":
        if not args.corpus:
            raise SoftpromptError("pretrain backbone needs at least one --corpus")
        config = BackboneConfig(tokenizer=TokenizerConfig(vocab_size=args.vocab_size), span_corruption=span, lm_adapt=lm)
        result = build_backbone(args.output, args.corpus, config, task_inputs(args.task_inputs, args.data_dir), command)
    elif args.stage == "cache":
        if not args.tokenizer:
            raise SoftpromptError("pretrain cache needs --tokenizer (a tokenizer or checkpoint folder)")
        meta = build_corpus_cache(args.corpus, args.tokenizer, args.output, extra_texts=task_inputs(args.task_inputs, args.data_dir))
        result = {"cache": args.output, "tokens": meta["tokens"], "documents": meta["documents"]}
    elif args.stage == "package":
        if not args.init_from:
            raise SoftpromptError("pretrain package needs --init-from CHECKPOINT")
        result = {"packaged": str(package_checkpoint(args.init_from, args.output))}
    else:
        if args.stage == "span-corruption":
            result = pretrain(span, args.cache, args.output, tokenizer_dir=args.tokenizer, init_from=args.init_from,
                              command=command)
        elif not args.init_from:
            raise SoftpromptError("pretrain lm-adapt needs --init-from CHECKPOINT")
        else:
            result = pretrain(lm, args.cache, args.output, init_from=args.init_from, command=command)
        if result["complete"]:
            write_lineage_card(args.output, read_cache_meta(args.cache))
    print(json.dumps(result, default=str))


def add_pretrain_args(p: argparse.ArgumentParser) -> None:
    from .pretrain import PRESETS, PretrainConfig, TokenizerConfig

    d = PretrainConfig()
    p.add_argument("stage", choices=("backbone", "cache", "span-corruption", "lm-adapt", "package"),
                   help="backbone: every stage (tokenizer, cache, span corruption, LM adaptation), skipping complete ones; "
                        "cache: tokenise a corpus with an existing --tokenizer (e.g. a task's inputs for further LM adaptation); "
                        "package: copy a checkpoint in float16 for shipping")
    p.add_argument("--output", required=True, help="output folder (backbone: holds one subfolder per stage)")
    p.add_argument("--corpus", action="append", default=[], help="text, WikiExtractor or JSONL file/folder; repeatable")
    p.add_argument("--task-inputs", action="append", default=[], help="add the unlabeled inputs of this task's train split; repeatable")
    p.add_argument("--data-dir", help="task data (default $SOFTPROMPT_DATA_DIR)")
    p.add_argument("--cache", help="span-corruption / lm-adapt: a corpus cache folder")
    p.add_argument("--tokenizer", help="span-corruption, cache: a tokenizer (or checkpoint) folder")
    p.add_argument("--init-from", help="lm-adapt (required), span-corruption (optional, e.g. further pretraining on a task's inputs): "
                        "the checkpoint to continue; package: the checkpoint to copy")
    p.add_argument("--size", choices=sorted(PRESETS), default=d.model, help="model size preset (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=TokenizerConfig().vocab_size, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    p.add_argument("--inputs-length", type=int, default=d.inputs_length, help="encoder tokens per sequence (default: %(default)s)")
    p.add_argument("--span-steps", type=int, default=d.steps, help="span-corruption steps (default: %(default)s)")
    p.add_argument("--lm-steps", type=int, default=2000, help="LM-adaptation steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="span-corruption peak rate (default: %(default)s)")
    p.add_argument("--lm-lr", type=float, default=1e-2, help="LM-adaptation peak rate (default: %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="(default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="(default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="(default: %(default)s)")
    p.add_argument("--max-minutes", type=float, help="wall-clock limit per stage for this call; rerun to resume")
    p.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    p.add_argument("--device", default=d.device, help="(default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")


def build_parser() -> argparse.ArgumentParser:
    defaults, prompt_defaults = TrainConfig(), PromptConfig()
    parser = argparse.ArgumentParser(prog="softprompt", description="Prompt tuning of frozen Hugging Face models (Lester et al., 2021).")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        return p

    t = command("train", cmd_train, "Prompt-tune a frozen backbone on a task; the best prompt by dev metric is kept.")
    add_task_args(t)
    t.add_argument("--model", help="hub name or local path (default: the packaged backbone)")
    t.add_argument("--output", default=defaults.output, help="run directory (default: %(default)s)")
    t.add_argument("--prompt-length", type=int, default=prompt_defaults.length, help="p (default: %(default)s)")
    t.add_argument("--init", choices=INITS, default=prompt_defaults.init, help="prompt initialisation (default: %(default)s)")
    t.add_argument("--init-range", type=float, default=prompt_defaults.init_range, help="random-uniform range ±r (default: %(default)s)")
    t.add_argument("--vocab-sample-size", type=int, default=prompt_defaults.vocab_sample_size, help="sampled-vocab draws from this many most common tokens (default: %(default)s)")
    t.add_argument("--init-text", help="init text: embed this string's first p tokens")
    t.add_argument("--init-file", help="init file: a saved prompt directory of the same shape")
    t.add_argument("--max-steps", type=int, default=defaults.max_steps, help="(default: %(default)s)")
    t.add_argument("--max-minutes", type=float, help="stop cleanly after this much wall-clock time")
    t.add_argument("--batch-size", type=int, default=defaults.batch_size, help="(default: %(default)s)")
    t.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=defaults.group_by_length,
                   help="batches of similar input length, for less padding; --no-group-by-length: random batches (default: %(default)s)")
    t.add_argument("--lr", type=float, default=defaults.lr, help="Adafactor learning rate (default: %(default)s)")
    t.add_argument("--train-examples", type=int, help="train on the first N training examples only")
    t.add_argument("--eval-every", type=int, default=defaults.eval_every, help="steps between dev evaluations (default: %(default)s)")
    t.add_argument("--eval-examples", type=int, help="evaluate on the first N dev examples only")
    t.add_argument("--eval-method", choices=EVAL_METHODS, default=defaults.eval_method, help="(default: %(default)s)")
    t.add_argument("--max-input-length", type=int, default=defaults.max_input_length, help="(default: %(default)s)")
    t.add_argument("--max-target-length", type=int, default=defaults.max_target_length, help="(default: %(default)s)")
    t.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, help="(default: %(default)s)")
    t.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    t.add_argument("--target-format", choices=TARGET_FORMATS, default=defaults.target_format, help="'sentinel' puts <extra_id_0> before targets (default: %(default)s)")
    t.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
    t.add_argument("--compile", action="store_true", help="torch.compile the backbone: faster steps after a minute or two of compiling")
    t.add_argument("--ema-decay", type=float, help="not in the paper: evaluate and keep a moving average of the trained weights, e.g. 0.99 (default: the last step's)")
    t.add_argument("--tune", choices=TUNE_MODES, default=defaults.tune,
                   help="prompt: prompt tuning; model: the model-tuning baseline, all weights train (default: %(default)s)")
    t.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")

    def prompt_args(p: argparse.ArgumentParser, many: bool) -> None:
        p.add_argument("--prompt", required=True, action="append" if many else None,
                       help="prompt directory" + ("; repeat for several, optionally NAME=DIR" if many else ""))
        p.add_argument("--model", help="backbone (default: the one recorded in the prompt file)")
        p.add_argument("--allow-other-backbone", action="store_true", help="load a prompt trained on another backbone")
        p.add_argument("--batch-size", type=int, default=defaults.eval_batch_size, help="(default: %(default)s)")

    e = command("eval", cmd_eval, "Score a saved prompt on a task split by rank classification and/or generation.")
    prompt_args(e, many=True)
    add_task_args(e)
    e.add_argument("--split", default="validation", choices=("train", "validation", "test"), help="(default: %(default)s)")
    e.add_argument("--method", choices=EVAL_METHODS, default="both", help="(default: %(default)s)")
    e.add_argument("--examples", type=int, help="only the first N examples")

    pr = command("predict", cmd_predict, "Run prompts on inputs; each input may name its prompt, so tasks mix in one batch.")
    prompt_args(pr, many=True)
    pr.add_argument("--input", action="append", help="an input text for the first prompt; repeatable")
    pr.add_argument("--input-file", help='JSONL of {"input": TEXT, "prompt": NAME}')
    pr.add_argument("--method", choices=("generate", "rank"), default="generate", help="(default: %(default)s)")
    pr.add_argument("--max-new-tokens", type=int, default=16, help="(default: %(default)s)")

    x = command("export", cmd_export, "Write a prompt in another library's format.")
    x.add_argument("--prompt", required=True, help="prompt directory")
    x.add_argument("--format", choices=("peft", "npy"), required=True)
    x.add_argument("--output", required=True, help="adapter directory (peft) or .npy file")

    i = command("import", cmd_import, "Turn a PEFT adapter or reference .npy into a softprompt prompt directory.")
    i.add_argument("--input", required=True, help="adapter directory (peft) or .npy file")
    i.add_argument("--format", choices=("peft", "npy"), required=True)
    i.add_argument("--output", required=True, help="prompt directory to write")
    i.add_argument("--model", help="backbone the prompt belongs to (records its fingerprint, checks the width)")
    i.add_argument("--task", help="task name to record")
    i.add_argument("--labels", help="comma-separated labels to record")

    n = command("inspect", cmd_inspect, "Print a prompt file's metadata.")
    n.add_argument("--prompt", required=True, help="prompt directory")

    add_pretrain_args(command("pretrain", cmd_pretrain, "Build T5-style backbones: tokenizer, span corruption, LM adaptation."))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SoftpromptError as err:
        print(f"softprompt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("softprompt: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
