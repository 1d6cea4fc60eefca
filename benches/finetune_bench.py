"""Fine-tuning and embedding throughput and peak memory: dnaflow (burn) against PyTorch +
transformers on the same model, batch and sequences, in one run.

Both sides start from the same random GPT-2 directory (written here by transformers, with the
char tokenizer beside it) and read the StatLog splice rows (60 nt, one token per base):
- finetune: GPT2ForSequenceClassification (3 classes), AdamW, clip 1.0, `--steps` steps of
  `--batch` rows; tokens/s over the steps after a warm-up.
- embed: mean-pooled last hidden states of every splice row, batches of `--batch`, no
  gradients; sequences/s.

    python3 benches/finetune_bench.py [--bin target/release/dnaflow] [--mode finetune|embed]
        [--steps 60] [--batch 32] [--threads 2] [--n-embd 128] [--n-layer 2] [--pairs 3]

The two run in turn, PyTorch then dnaflow, `--pairs` times; it prints each pair, the medians,
and the median and range of the per-pair ratios (dnaflow / PyTorch for speed; PyTorch /
dnaflow for memory: > 1 favours dnaflow).

Needs torch and transformers. Not a test: numbers depend on the machine.
"""

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPLICE = ROOT / "data/splice/splice.csv"
TOKENIZER = ROOT / "tests/fixtures/tokenizers/char.json"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import peak_rss_mb  # noqa: E402


def rows():
    with open(SPLICE) as f:
        return list(csv.DictReader(f))


def make_model(args, out):
    """A random GPT-2 model directory both sides load."""
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = Tokenizer.from_file(str(TOKENIZER))
    pad = tok.token_to_id("[PAD]")
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=128, n_embd=args.n_embd,
                     n_layer=args.n_layer, n_head=args.n_head, resid_pdrop=0, embd_pdrop=0,
                     attn_pdrop=0, pad_token_id=pad, bos_token_id=pad, eos_token_id=pad)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    (out / "generation_config.json").unlink(missing_ok=True)
    shutil.copy(TOKENIZER, out / "tokenizer.json")


def torch_child(args):
    """Runs in a child process so its peak RSS is its own."""
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2ForSequenceClassification, GPT2Model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = Tokenizer.from_file(str(TOKENIZER))
    data = rows()
    classes = sorted({r["label"] for r in data})
    ids = torch.tensor([tok.encode(r["sequence"], add_special_tokens=False).ids for r in data])
    labels = torch.tensor([classes.index(r["label"]) for r in data])
    if args.mode == "embed":
        model = GPT2Model.from_pretrained(args.model_dir).eval()
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(ids), args.batch):
                h = model(ids[i : i + args.batch]).last_hidden_state
                h.mean(dim=1).numpy()
        secs = time.perf_counter() - start
        print(json.dumps({"rate": len(ids) / secs}))
        return
    model = GPT2ForSequenceClassification.from_pretrained(args.model_dir, num_labels=len(classes))
    model.config.classifier_dropout = 0.0
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    tokens, start = 0, None
    for step in range(args.steps + args.warmup):
        if step == args.warmup:
            start, tokens = time.perf_counter(), 0
        pick = torch.randint(len(ids), (args.batch,), generator=g)
        loss = model(ids[pick], labels=labels[pick]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += ids[pick].numel()
    print(json.dumps({"rate": tokens / (time.perf_counter() - start)}))


def dnaflow(args):
    work = Path(tempfile.mkdtemp())
    wf = work / "bench.yaml"
    if args.mode == "embed":
        step = f"""
  embed:
    uses: model.embed
    resources: {{ cpus: {args.threads} }}
    with: {{ model: {args.model_dir}, data: {SPLICE}, batch_size: {args.batch} }}
"""
        key = "sequences_per_s"
    else:
        # A small validation table: the loop's time includes its evaluation at the last step.
        small = work / "valid.csv"
        small.write_text("".join(SPLICE.read_text().splitlines(keepends=True)[:33]))
        step = f"""
  finetune:
    uses: model.finetune
    resources: {{ cpus: {args.threads} }}
    with:
      task: seq-cls
      init: {args.model_dir}
      train: {SPLICE}
      valid: {small}
      test: {small}
      steps: {args.steps}
      batch_size: {args.batch}
      lr: 0.001
      eval_every: 1000000
      save_every: 0
"""
        key = "tokens_per_s"
    wf.write_text(f"name: finetune-bench\nsteps:{step}")
    env = dict(os.environ, DNAFLOW_CACHE=str(work / "cache"))
    _, rss = peak_rss_mb([args.bin, "run", str(wf), "-q", "--cpus", str(args.threads),
                          "--report", str(work / "report.json")], env)
    report = json.loads((work / "report.json").read_text())
    return report["steps"][0]["metrics"][key], rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/dnaflow"))
    ap.add_argument("--mode", choices=["finetune", "embed"], default="finetune")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=3, help="alternating runs of each")
    ap.add_argument("--model-dir")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--make-model", action="store_true")
    args = ap.parse_args()
    if args.child:
        return torch_child(args)
    if args.make_model:
        return make_model(args, Path(args.model_dir))
    if not args.model_dir:
        # Written by a child: a parent that imported torch would pass its own RSS on to the
        # children it forks, and their peak RSS would include it.
        args.model_dir = str(Path(tempfile.mkdtemp()) / "gpt2")
        subprocess.run([sys.executable, __file__, "--make-model", "--model-dir", args.model_dir]
                       + sys.argv[1:], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    child = [sys.executable, __file__, "--child", "--model-dir", args.model_dir] + [
        a for a in sys.argv[1:] if a != "--child"]
    unit = "sequences/s" if args.mode == "embed" else "tokens/s"
    print(f"{args.mode}: GPT-2 n_embd {args.n_embd}, n_layer {args.n_layer}, splice rows "
          f"(60 tokens), batch {args.batch}, {args.threads} threads")
    pairs = []
    for i in range(args.pairs):
        out, torch_rss = peak_rss_mb(child)
        torch_rate = json.loads(out.strip().splitlines()[-1])["rate"]
        ours, ours_rss = dnaflow(args)
        pairs.append((ours, ours_rss, torch_rate, torch_rss))
        print(f"pair {i + 1}: dnaflow {ours:8.0f} {unit} {ours_rss:6.1f} MiB | PyTorch "
              f"{torch_rate:8.0f} {unit} {torch_rss:6.1f} MiB | speed {ours / torch_rate:.2f}x")
    med = statistics.median
    speed = [p[0] / p[2] for p in pairs]
    memory = [p[3] / p[1] for p in pairs]
    print(f"dnaflow (burn):         {med([p[0] for p in pairs]):10.0f} {unit}  "
          f"peak RSS {med([p[1] for p in pairs]):7.1f} MiB  (medians)")
    print(f"PyTorch + transformers: {med([p[2] for p in pairs]):10.0f} {unit}  "
          f"peak RSS {med([p[3] for p in pairs]):7.1f} MiB")
    print(f"speed ratio (dnaflow / PyTorch): {med(speed):.2f}x median of pairs "
          f"(range {min(speed):.2f}-{max(speed):.2f})")
    print(f"memory ratio (PyTorch / dnaflow): {med(memory):.2f}x "
          f"(range {min(memory):.2f}-{max(memory):.2f})")


if __name__ == "__main__":
    main()
