"""Peak memory of loading a 1B-parameter-shaped checkpoint (issue 24, point 3).

Writes a random LLaMA checkpoint shaped like TinyLlama-1.1B (hidden 2048, 22 layers, 32 heads,
4 key/value heads, SwiGLU 5632, vocab 32000: 1.1 B parameters) into a scratch directory (not the
repository) in the layouts a hub repository ships it: one f32 `model.safetensors`, f32 shards
with `model.safetensors.index.json`, and one bf16 `model.safetensors`. Then, for each,
`dnaflow model DIR --load --json` builds the model on the CPU in a fresh process and reports its
peak resident memory (VmHWM) against the checkpoint's size on disk.

    python3 benches/load_rss.py [--bin target/debug/dnaflow] [--dir /tmp/llama-1b] [--layers 22]

Needs torch and transformers (to write the checkpoint). The target: an f32 checkpoint loads
below 1.3× its file size. A bf16 checkpoint becomes f32 parameters on the CPU, so its floor is
2× its file size; that row is printed for the record.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write(directory, layers, dtype, shard):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "config.json").exists():
        return
    config = LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model = model.to(dtype)
    model.save_pretrained(directory, max_shard_size=shard)
    (directory / "generation_config.json").unlink(missing_ok=True)


def measure(binary, directory):
    out = subprocess.run([binary, "model", str(directory), "--load", "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / "target/debug/dnaflow"))
    ap.add_argument("--dir", default="/tmp/dnaflow-llama-1b")
    ap.add_argument("--layers", type=int, default=22)
    args = ap.parse_args()
    import torch

    base = Path(args.dir)
    cases = [
        ("f32, one file", torch.float32, "100GB"),
        ("f32, 2 GB shards", torch.float32, "2GB"),
        ("bf16, one file", torch.bfloat16, "100GB"),
    ]
    print(f"{'checkpoint':<20} {'files':>5} {'GiB':>6} {'params':>14} {'load s':>7} {'peak GiB':>9} {'peak/file':>9}")
    for name, dtype, shard in cases:
        directory = base / name.replace(" ", "").replace(",", "-")
        write(directory, args.layers, dtype, shard)
        r = measure(args.bin, directory)
        load = r["load"]
        print(f"{name:<20} {len(r['files']):>5} {r['file_bytes'] / 2**30:>6.2f} {load['parameters']:>14,} "
              f"{load['seconds']:>7.1f} {load['peak_rss_bytes'] / 2**30:>9.2f} {load['peak_rss_over_file_bytes']:>9.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
