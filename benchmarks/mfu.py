"""Model FLOP utilisation of a prompt-tuning step: how much of the device's peak the frozen backbone's work reaches.

Why: prompt tuning trains a few hundred KB but still runs the whole backbone forward and backward
(to the input, not to frozen weights), so its speed is bound by the backbone. MFU says how far a
step is from what the device could do, independent of the backbone's size.

FLOPs counted per step (the usual dense estimate, attention's sequence-squared terms left out):
- forward: 2 x non-embedding parameters x tokens through them;
- backward: 2 x the same again (gradients to the activations only: frozen weights get no gradient);
- encoder-decoder: the encoder's parameters x encoder positions (prompt + input), the decoder's
  parameters (and the output head) x target positions; decoder-only: all of them x all positions.
"Model" FLOPs count real (unpadded) tokens; "hardware" FLOPs count the padded positions computed.
The step is the real one (`train.Loop` on the one trainer: collation, the prompt splice, backward,
Adafactor), timed after warm-up with device synchronisation.

    python benchmarks/mfu.py --device cuda --backbone t5-base-like --batch-size 128 --precision bf16
    python benchmarks/mfu.py --device cuda --model packaged:smollm2-135m --batch-size 64 --precision bf16
    python benchmarks/mfu.py --quick                        # CPU smoke run
Writes results/mfu-<device>[-suffix].json. `--peak-tflops` gives the device's dense peak for the
precision (default: bf16 989 for H100/H200 SXM; none on the CPU, where only FLOP/s is reported).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from backbones import PRESETS, build_backbone, data_dir
from measurement import environment, synchronize, write_json

from softprompt.config import PromptConfig, TrainConfig
from softprompt.train import Loop

HERE = Path(__file__).resolve().parent
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def split_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(encoder-side, decoder-side) non-embedding parameters; a decoder-only model has everything on one side."""
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    encoder = getattr(model, "encoder", None)
    enc = sum(p.numel() for p in encoder.parameters() if id(p) not in embeddings) if encoder is not None else 0
    total = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    return enc, total - enc


def step_flops(items, adapter, prompt_length: int, enc_params: int, dec_params: int) -> dict[str, float]:
    inputs = [len(f.input_ids) for f in items]
    targets = [len(f.target_ids) for f in items]
    batch = adapter.collate([f.input_ids for f in items], [f.target_ids for f in items])
    if enc_params:  # encoder-decoder: prompt + input through the encoder, targets through the decoder
        real = enc_params * (sum(inputs) + prompt_length * len(items)) + dec_params * sum(targets)
        hw = enc_params * (batch["input_ids"].numel() + prompt_length * len(items)) + dec_params * batch["labels"].numel()
    else:
        real = dec_params * (sum(inputs) + sum(targets) + prompt_length * len(items))
        hw = dec_params * (batch["input_ids"].numel() + prompt_length * len(items))
    return {"model": 4.0 * real, "hardware": 4.0 * hw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", choices=sorted(PRESETS), default="t5-base-like")
    parser.add_argument("--model", help="a local checkpoint or packaged:NAME instead of a preset")
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="storage dtype of the frozen backbone")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prompt-length", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak for --precision (TFLOP/s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: t5-small-like, batch 4, p 20, 1 + 2 steps")
    parser.add_argument("--suffix")
    args = parser.parse_args()
    if args.quick:
        args.backbone, args.batch_size, args.prompt_length, args.warmup, args.steps = "t5-small-like", 4, 20, 1, 2
        args.suffix = args.suffix or "quick"

    with tempfile.TemporaryDirectory() as work:
        model_path = args.model
        if model_path is None:
            model, tokenizer, _ = build_backbone(args.backbone, None, 0, data_dir(args.data_dir))
            model.save_pretrained(Path(work) / "backbone")
            tokenizer.save_pretrained(Path(work) / "backbone")
            model_path = str(Path(work) / "backbone")
        config = TrainConfig(task="sst2", model=model_path, data_dir=str(data_dir(args.data_dir)), output=str(Path(work) / "run"),
                             prompt=PromptConfig(length=args.prompt_length), batch_size=args.batch_size, device=args.device,
                             dtype=args.dtype, precision=args.precision, max_steps=args.warmup + args.steps)
        loop = Loop(config, resume=False, progress=False)
        loop.start()
        loop.model.train()
        device = loop.model.device
        enc, dec = split_parameters(loop.model.base_model)
        flops = {"model": 0.0, "hardware": 0.0}
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                synchronize(device)
                started = time.perf_counter()
            items = loop.stream.next()
            if step >= args.warmup:
                for k, v in step_flops(items, loop.model.adapter, args.prompt_length, enc, dec).items():
                    flops[k] += v
            loop.trainer.step(loop, items)
        synchronize(device)
        seconds = time.perf_counter() - started

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None) if args.precision == "bf16" else args.peak_tflops
    achieved = {k: v / seconds / 1e12 for k, v in flops.items()}  # TFLOP/s
    result = {
        "benchmark": "mfu", "environment": environment(device), "settings": vars(args),
        "parameters": {"encoder_non_embedding": enc, "decoder_non_embedding": dec},
        "step_seconds": round(seconds / args.steps, 4), "examples_per_s": round(args.batch_size * args.steps / seconds, 2),
        "achieved_tflops": {k: round(v, 3) for k, v in achieved.items()}, "peak_tflops": peak,
        "mfu": round(achieved["model"] / peak, 4) if peak else None,
        "hfu": round(achieved["hardware"] / peak, 4) if peak else None,
        "method": __doc__,
    }
    suffix = f"-{args.suffix}" if args.suffix else ""
    path = HERE / "results" / f"mfu-{device.type}{suffix}.json"
    write_json(path, result)
    print(f"{args.backbone if args.model is None else args.model}: {result['step_seconds']} s/step, "
          f"{result['achieved_tflops']} TFLOP/s, MFU {result['mfu']}, HFU {result['hfu']} -> {path}")


if __name__ == "__main__":
    main()
