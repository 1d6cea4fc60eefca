"""Training throughput and peak memory: dnaflow (burn) against PyTorch + transformers.

Same GPT-2 config, batch, sequence length, optimizer (AdamW, clip 1.0) and data (real yeast
DNA, one token per base), same machine, same run. Prints tokens/s and peak RSS for both and
their ratios (dnaflow / PyTorch for speed, PyTorch / dnaflow for memory: > 1 favours dnaflow).

    python3 benches/train_bench.py [--bin target/release/dnaflow] [--steps 100] [--threads 2]
        [--n-embd 128] [--n-layer 2] [--seq-len 128] [--batch 16] [--device cpu|cuda] [--pairs 5]

The two run in turn, PyTorch then dnaflow, `--pairs` times; it prints each pair's figures,
the medians, and the median of the per-pair ratios (robust to the machine's speed drifting).

Needs torch and transformers. Not a test: numbers depend on the machine.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests/fixtures/tokenizers/corpus.txt"
TOKENIZER = ROOT / "tests/fixtures/tokenizers/char.json"


def torch_child(args):
    """Runs in a child process so its peak RSS is its own."""
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = Tokenizer.from_file(str(TOKENIZER))
    ids = []
    eos = tok.token_to_id("[SEP]")
    for line in CORPUS.read_text().split():
        ids.extend(tok.encode(line, add_special_tokens=False).ids + [eos])
    t = args.seq_len
    rows = [ids[i : i + t] for i in range(0, len(ids) - t, t)]
    data = torch.tensor(rows)
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=t, n_embd=args.n_embd,
                     n_layer=args.n_layer, n_head=args.n_head, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    device = "cuda" if args.device == "cuda" else "cpu"
    model = GPT2LMHeadModel(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    tokens, start = 0, None
    for step in range(args.steps + args.warmup):
        if step == args.warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start, tokens = time.perf_counter(), 0
        batch = data[torch.randint(len(data), (args.batch,), generator=g)].to(device)
        loss = model(batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += batch.numel()
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - start
    print(json.dumps({"tokens_per_s": tokens / secs, "loss": loss.item()}))


def peak_rss_mb(cmd, env=None):
    """Run `cmd`; its stdout and its own peak RSS (wait4's rusage of that child alone)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read()
        if child.returncode != 0:
            sys.exit(f"{cmd[0]} failed:\n{text}\n{err.read()}")
    return text, usage.ru_maxrss / 1024


def dnaflow(args):
    work = Path(tempfile.mkdtemp())
    wf = work / "bench.yaml"
    wf.write_text(f"""
name: train-bench
steps:
  gpt2:
    uses: model.pretrain
    resources: {{ cpus: {args.threads} }}
    with:
      arch: gpt2
      tokenizer: {TOKENIZER}
      train: {CORPUS}
      config: {{ n_embd: {args.n_embd}, n_layer: {args.n_layer}, n_head: {args.n_head}, resid_pdrop: 0, embd_pdrop: 0, attn_pdrop: 0 }}
      seq_len: {args.seq_len}
      batch_size: {args.batch}
      steps: {args.steps}
      lr: 0.001
      save_every: 0
      device: {args.device}
""")
    env = dict(os.environ, DNAFLOW_CACHE=str(work / "cache"))
    _, rss = peak_rss_mb([args.bin, "run", str(wf), "-q", "--cpus", str(args.threads),
                          "--report", str(work / "report.json")], env)
    report = json.loads((work / "report.json").read_text())
    return report["steps"][0]["metrics"]["tokens_per_s"], rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target/release/dnaflow"))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pairs", type=int, default=5, help="alternating runs of each")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        return torch_child(args)
    child = [sys.executable, __file__, "--child"] + [
        a for a in sys.argv[1:] if a != "--child"]
    print(f"config: GPT-2 n_embd {args.n_embd}, n_layer {args.n_layer}, seq {args.seq_len}, "
          f"batch {args.batch}, {args.steps} steps, {args.threads} threads, {args.device}")
    pairs = []
    for i in range(args.pairs):
        out, torch_rss = peak_rss_mb(child)
        torch_tps = json.loads(out.strip().splitlines()[-1])["tokens_per_s"]
        ours_tps, ours_rss = dnaflow(args)
        pairs.append((ours_tps, ours_rss, torch_tps, torch_rss))
        print(f"pair {i + 1}: dnaflow {ours_tps:8.0f} tokens/s {ours_rss:6.1f} MiB | "
              f"PyTorch {torch_tps:8.0f} tokens/s {torch_rss:6.1f} MiB | "
              f"speed {ours_tps / torch_tps:.2f}x")
    med = lambda xs: statistics.median(xs)
    ours_tps, ours_rss, torch_tps, torch_rss = (med([p[k] for p in pairs]) for k in range(4))
    print(f"dnaflow (burn):         {ours_tps:10.0f} tokens/s  peak RSS {ours_rss:7.1f} MiB  (medians)")
    print(f"PyTorch + transformers: {torch_tps:10.0f} tokens/s  peak RSS {torch_rss:7.1f} MiB")
    speed = [p[0] / p[2] for p in pairs]
    memory = [p[3] / p[1] for p in pairs]
    print(f"speed ratio (dnaflow / PyTorch): {med(speed):.2f}x median of pairs "
          f"(range {min(speed):.2f}-{max(speed):.2f})")
    print(f"memory ratio (PyTorch / dnaflow): {med(memory):.2f}x")


if __name__ == "__main__":
    main()
