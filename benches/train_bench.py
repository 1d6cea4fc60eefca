"""Training throughput, efficiency and peak memory: dnaflow (burn) against PyTorch + transformers.

Same model config, batch, sequence length, optimizer (AdamW, clip 1.0) and data (real yeast
DNA, one token per base), same machine, same run. For each preset it prints tokens/s and peak
RSS for both, their ratios (dnaflow / PyTorch for speed, PyTorch / dnaflow for memory: > 1
favours dnaflow), the model FLOPs per token (forward + backward, attention included), the
FLOP/s each side achieves, and that as a fraction of the machine's peak: on CPU the fp32
matrix-product peak measured in the same run with the `gemm` crate burn-flex uses
(`cargo bench --bench gemm_peak`), on a GPU its dense peak (`--peak-tflops`, known for a few
GPUs).

    python3 benches/train_bench.py [--preset default|4x256|gpt2-small|bert|llama|all] [--pairs 3]
        [--bin target/release/dnaflow] [--threads 2] [--device cpu|cuda] [--precision f32|bf16]
        [--torch-compile] [--steps N] [--batch N] [--peak-gflops X | --no-peak] [--avx2]

Presets (`--n-embd`, `--n-layer`, `--n-head`, `--n-kv-head`, `--d-ff`, `--seq-len`, `--batch`,
`--steps` override):

    default     GPT-2 2 × 128, 4 heads, seq 128, batch 16, 100 steps (packed causal-LM rows)
    4x256       GPT-2 4 × 256, 4 heads, seq 256, batch 16, 30 steps
    gpt2-small  GPT-2 12 × 768, 12 heads (GPT-2 small's shapes), seq 256, batch 4, 6 steps
    bert        BERT 4 × 256, 4 heads, FFN 1024, up to 256 tokens, batch 16, 30 steps: masked LM
                (15 %, 80/10/10) on rows of mixed lengths (32-254 bases, cut from the same DNA),
                each batch padded to its longest row, as the chapters' BERTs train
    llama       LLaMA 4 × 256, 8 heads, 2 key/value heads (grouped-query), SwiGLU 688, untied
                LM head, seq 256, batch 16, 30 steps (the GPT-2 presets' packed causal-LM rows)

Each pair runs PyTorch, then dnaflow; each side's tokens/s skips its first optimizer step
(PyTorch: `--warmup` steps, default 1; dnaflow: its `steady_tokens_per_s` metric), so both are
steady-state figures. It prints each pair, the medians, and the median of the per-pair ratios
(robust to the machine's speed drifting). BERT counts real (non-padding) tokens on both sides.

FLOPs per token: forward = layers × (8·d² + 4·d·d_ff + 4·d·T) + head, backward twice that
(the usual 6 × parameters + attention). LLaMA: layers × (4·d·H·dh (q, o) + 4·d·Hkv·dh (k, v,
grouped-query) + 6·d·d_ff (gate, up, down) + 4·H·dh·T) + 2·d·vocab (its own LM head); norms,
rotary and activations are not counted, as GPT-2's are not. T is the row length, and
attention is counted as the full T×T square for causal models too (PaLM's convention): a
causal kernel that skips the masked half does less work than counted, on both sides alike.
For BERT, T² is averaged over the rows (Σn²/Σn), and padding is not counted as useful work.

`--avx2` measures what an AVX2-only machine runs, on an AVX-512 one: PyTorch limited to AVX2
(ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA), the gemm peak built with
`--no-default-features`, and `--bin` must be a dnaflow built the same way
(`cargo build --release --no-default-features`: no `avx512` feature, so gemm and flex keep
their AVX2 kernels).

Needs torch and transformers. Not a test: numbers depend on the machine.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests/fixtures/tokenizers/corpus.txt"
TOKENIZER = ROOT / "tests/fixtures/tokenizers/char.json"

PRESETS = {
    "default": dict(arch="gpt2", n_embd=128, n_layer=2, n_head=4, seq_len=128, batch=16, steps=100),
    "4x256": dict(arch="gpt2", n_embd=256, n_layer=4, n_head=4, seq_len=256, batch=16, steps=30),
    "gpt2-small": dict(arch="gpt2", n_embd=768, n_layer=12, n_head=12, seq_len=256, batch=4, steps=6),
    "bert": dict(arch="bert", n_embd=256, n_layer=4, n_head=4, seq_len=256, batch=16, steps=30),
    # d_ff 688 = 8/3 · 256 rounded up to a multiple of 16 (SwiGLU keeps ~GPT-2's 8·d² MLP).
    "llama": dict(arch="llama", n_embd=256, n_layer=4, n_head=8, n_kv_head=2, d_ff=688,
                  seq_len=256, batch=16, steps=30),
}

# Dense bf16 peaks (TFLOP/s, without sparsity) of GPUs a run may meet, by name fragment.
GPU_BF16_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}


def mixed_rows(seq_len, seed=0):
    """Real DNA cut into documents of mixed lengths (32 to seq_len - 2 bases), one per line."""
    dna = "".join(CORPUS.read_text().split())
    rng = random.Random(seed)
    docs, at = [], 0
    while at < len(dna):
        n = rng.randint(32, seq_len - 2)
        docs.append(dna[at : at + n])
        at += n
    return [d for d in docs if len(d) >= 16]


def flops_per_token(args, vocab):
    """Model FLOPs per (real) token, forward + backward."""
    d, layers = args.n_embd, args.n_layer
    d_ff = 4 * d
    if args.arch == "llama":
        # Multiply-adds per token and layer: q and o d·H·dh each, k and v d·Hkv·dh each (GQA),
        # gate / up / down d·d_ff each, scores and context T·H·dh each (the full square, as
        # for GPT-2); × 2 FLOPs each. The LM head is untied: d·vocab.
        h = args.n_head
        dh = d // h
        kv = args.n_kv_head or h
        t = args.seq_len
        layer = 2 * (2 * d * h * dh + 2 * d * kv * dh + 3 * d * args.d_ff + 2 * t * h * dh)
        return 3 * (layers * layer + 2 * d * vocab)
    if args.arch == "bert":
        lens = [len(doc) + 2 for doc in mixed_rows(args.seq_len)]
        t = sum(n * n for n in lens) / sum(lens)
        head = 2 * d * d + 2 * d * vocab  # MLM transform + decoder
    else:
        t = args.seq_len
        head = 2 * d * vocab
    forward = layers * (8 * d * d + 4 * d * d_ff + 4 * d * t) + head
    return 3 * forward


def torch_child(args):
    """Runs in a child process so its peak RSS is its own."""
    import torch
    from tokenizers import Tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = Tokenizer.from_file(str(TOKENIZER))
    device = "cuda" if args.device == "cuda" else "cpu"
    g = torch.Generator().manual_seed(0)
    if args.arch == "bert":
        from transformers import BertConfig, BertForMaskedLM

        cls, sep, pad, mask = (tok.token_to_id(s) for s in ("[CLS]", "[SEP]", "[PAD]", "[MASK]"))
        rows = [[cls] + tok.encode(doc, add_special_tokens=False).ids + [sep]
                for doc in mixed_rows(args.seq_len)]
        cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=args.n_embd,
                         num_hidden_layers=args.n_layer, num_attention_heads=args.n_head,
                         intermediate_size=4 * args.n_embd, max_position_embeddings=args.seq_len,
                         hidden_dropout_prob=0, attention_probs_dropout_prob=0, pad_token_id=pad)
        model = BertForMaskedLM(cfg)
        special = torch.tensor([cls, sep, pad, mask])

        def batch():
            pick = torch.randint(len(rows), (args.batch,), generator=g).tolist()
            t = max(len(rows[i]) for i in pick)
            ids = torch.full((args.batch, t), pad)
            for r, i in enumerate(pick):
                ids[r, : len(rows[i])] = torch.tensor(rows[i])
            attention = (ids != pad).long()
            chosen = (torch.rand(ids.shape, generator=g) < 0.15) & ~torch.isin(ids, special)
            labels = torch.where(chosen, ids, torch.full_like(ids, -100))
            roll = torch.rand(ids.shape, generator=g)
            inputs = torch.where(chosen & (roll < 0.8), torch.full_like(ids, mask), ids)
            random_ids = torch.randint(5, tok.get_vocab_size(), ids.shape, generator=g)
            inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
            return dict(input_ids=inputs, attention_mask=attention, labels=labels), int(attention.sum())
    else:
        ids = []
        eos = tok.token_to_id("[SEP]")
        for line in CORPUS.read_text().split():
            ids.extend(tok.encode(line, add_special_tokens=False).ids + [eos])
        t = args.seq_len
        data = torch.tensor([ids[i : i + t] for i in range(0, len(ids) - t, t)])
        if args.arch == "llama":
            from transformers import LlamaConfig, LlamaForCausalLM

            # SDPA attention (transformers' default; "eager" is its composed matmul-softmax
            # path). use_cache off: training never reads the key/value cache.
            cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=args.n_embd,
                              num_hidden_layers=args.n_layer, num_attention_heads=args.n_head,
                              num_key_value_heads=args.n_kv_head or args.n_head,
                              intermediate_size=args.d_ff, max_position_embeddings=t,
                              tie_word_embeddings=False, rms_norm_eps=1e-6, attention_dropout=0,
                              bos_token_id=eos, eos_token_id=eos,
                              pad_token_id=tok.token_to_id("[PAD]"), use_cache=False,
                              attn_implementation="sdpa")
            model = LlamaForCausalLM(cfg)
        else:
            from transformers import GPT2Config, GPT2LMHeadModel

            cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=t, n_embd=args.n_embd,
                             n_layer=args.n_layer, n_head=args.n_head, resid_pdrop=0,
                             embd_pdrop=0, attn_pdrop=0)
            model = GPT2LMHeadModel(cfg)

        def batch():
            rows = data[torch.randint(len(data), (args.batch,), generator=g)]
            return dict(input_ids=rows, labels=rows), rows.numel()

    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.01)
    step_fn = model
    if args.torch_compile:
        step_fn = torch.compile(model)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16,
                              enabled=args.precision == "bf16")
    tokens, start = 0, None
    for step in range(args.steps + args.warmup):
        if step == args.warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start, tokens = time.perf_counter(), 0
        inputs, real = batch()
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with autocast:
            loss = step_fn(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += real
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - start
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0
    print(json.dumps({"tokens_per_s": tokens / secs, "loss": loss.item(), "gpu_mib": peak_gpu}))


AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"}


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
    if args.arch == "bert":
        train = work / "mixed.txt"
        train.write_text("\n".join(mixed_rows(args.seq_len)) + "\n")
        config = (f"{{ hidden_size: {args.n_embd}, num_hidden_layers: {args.n_layer}, "
                  f"num_attention_heads: {args.n_head}, intermediate_size: {4 * args.n_embd}, "
                  "hidden_dropout_prob: 0, attention_probs_dropout_prob: 0 }")
    elif args.arch == "llama":
        train = CORPUS
        config = (f"{{ hidden_size: {args.n_embd}, num_hidden_layers: {args.n_layer}, "
                  f"num_attention_heads: {args.n_head}, "
                  f"num_key_value_heads: {args.n_kv_head or args.n_head}, "
                  f"intermediate_size: {args.d_ff}, max_position_embeddings: {args.seq_len}, "
                  "tie_word_embeddings: false, rms_norm_eps: 1.0e-6 }")
    else:
        train = CORPUS
        config = (f"{{ n_embd: {args.n_embd}, n_layer: {args.n_layer}, n_head: {args.n_head}, "
                  "resid_pdrop: 0, embd_pdrop: 0, attn_pdrop: 0 }")
    wf.write_text(f"""
name: train-bench
steps:
  model:
    uses: model.pretrain
    resources: {{ cpus: {args.threads} }}
    with:
      arch: {args.arch}
      tokenizer: {TOKENIZER}
      train: {train}
      config: {config}
      seq_len: {args.seq_len}
      batch_size: {args.batch}
      steps: {args.steps}
      lr: 0.001
      save_every: 0
      device: {args.device}
      precision: {args.precision}
""")
    env = dict(os.environ, DNAFLOW_CACHE=str(work / "cache"))
    _, rss = peak_rss_mb([args.bin, "run", str(wf), "-q", "--cpus", str(args.threads),
                          "--report", str(work / "report.json")], env)
    metrics = json.loads((work / "report.json").read_text())["steps"][0]["metrics"]
    return metrics.get("steady_tokens_per_s", metrics["tokens_per_s"]), rss


def machine_peak(args):
    """(single-thread, all-thread) fp32 GFLOP/s, or None where not measured."""
    if args.peak_gflops:
        return None, args.peak_gflops
    if args.device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
        for key, tflops in GPU_BF16_PEAK_TFLOPS.items():
            if key in name:
                return None, tflops * 1000
        print(f"no dense bf16 peak known for {name}; pass --peak-gflops")
        return None, None
    if args.no_peak:
        return None, None
    cmd = ["cargo", "bench", "--quiet", *(["--no-default-features"] if args.avx2 else []),
           "--bench", "gemm_peak", "--",
           "--json", "--threads", f"1,{args.threads}", "--sizes", "1024,2048"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"gemm peak not measured ({' '.join(cmd)} failed):\n{out.stderr[-2000:]}")
        return None, None
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    best = lambda t: max(r["gflops"] for r in rows if r["threads"] == t)
    for r in rows:
        print(f"gemm f32 {r['n']}³, {r['threads']} thread(s): {r['gflops']:.1f} GFLOP/s")
    return best(1), best(args.threads)


def run_preset(name, args, peak):
    vocab = len(json.loads(TOKENIZER.read_text())["model"]["vocab"])
    fpt = flops_per_token(args, vocab)
    shape = (f", {args.n_kv_head or args.n_head} key/value heads, SwiGLU {args.d_ff}"
             if args.arch == "llama" else "")
    print(f"\n== preset {name}: {args.arch.upper()} {args.n_layer} × {args.n_embd}, "
          f"{args.n_head} heads{shape}, seq {args.seq_len}, batch {args.batch}, "
          f"{args.steps} steps, {args.threads} threads, {args.device} {args.precision}"
          f"{', AVX2 only' if args.avx2 else ''}"
          f"{', torch.compile' if args.torch_compile else ''}")
    print(f"model FLOPs per token (forward + backward): {fpt / 1e6:.2f} MFLOP")
    child = [sys.executable, __file__, "--child"] + [
        a for a in sys.argv[1:] if a != "--child"] + [
        "--arch", args.arch, "--n-embd", str(args.n_embd), "--n-layer", str(args.n_layer),
        "--n-head", str(args.n_head), "--seq-len", str(args.seq_len), "--batch", str(args.batch),
        "--steps", str(args.steps), "--preset", name] + [
        a for key in ("n_kv_head", "d_ff") if getattr(args, key) is not None
        for a in (f"--{key.replace('_', '-')}", str(getattr(args, key)))]
    pairs = []
    for i in range(args.pairs):
        out, torch_rss = peak_rss_mb(child, dict(os.environ, **(AVX2_ONLY if args.avx2 else {})))
        torch_tps = json.loads(out.strip().splitlines()[-1])["tokens_per_s"]
        ours_tps, ours_rss = dnaflow(args)
        pairs.append((ours_tps, ours_rss, torch_tps, torch_rss))
        print(f"pair {i + 1}: dnaflow {ours_tps:8.0f} tokens/s {ours_rss:6.1f} MiB | "
              f"PyTorch {torch_tps:8.0f} tokens/s {torch_rss:6.1f} MiB | "
              f"speed {ours_tps / torch_tps:.2f}x", flush=True)
    med = statistics.median
    ours_tps, ours_rss, torch_tps, torch_rss = (med([p[k] for p in pairs]) for k in range(4))
    unit = "of the GPU's dense bf16 peak" if args.device == "cuda" else "of the all-core gemm peak"
    for who, tps, rss in (("dnaflow (burn):        ", ours_tps, ours_rss),
                          ("PyTorch + transformers:", torch_tps, torch_rss)):
        gflops = fpt * tps / 1e9
        frac = f", {100 * gflops / peak:.1f} % {unit}" if peak else ""
        print(f"{who} {tps:10.0f} tokens/s  peak RSS {rss:7.1f} MiB  "
              f"{gflops:7.1f} GFLOP/s{frac}  (medians)")
    speed = [p[0] / p[2] for p in pairs]
    memory = [p[3] / p[1] for p in pairs]
    print(f"speed ratio (dnaflow / PyTorch): {med(speed):.2f}x median of pairs "
          f"(range {min(speed):.2f}-{max(speed):.2f})")
    print(f"memory ratio (PyTorch / dnaflow): {med(memory):.2f}x")
    return dict(preset=name, ours=ours_tps, torch=torch_tps, speed=med(speed),
                lo=min(speed), hi=max(speed), memory=med(memory),
                ours_gflops=fpt * ours_tps / 1e9, torch_gflops=fpt * torch_tps / 1e9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default", choices=[*PRESETS, "all"])
    ap.add_argument("--bin", default=str(ROOT / "target/release/dnaflow"))
    ap.add_argument("--steps", type=int)
    ap.add_argument("--warmup", type=int, default=1, help="PyTorch steps not timed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", choices=["gpt2", "bert", "llama"])
    ap.add_argument("--n-embd", type=int)
    ap.add_argument("--n-layer", type=int)
    ap.add_argument("--n-head", type=int)
    ap.add_argument("--n-kv-head", type=int, help="LLaMA: key/value heads (grouped-query)")
    ap.add_argument("--d-ff", type=int, help="LLaMA: SwiGLU intermediate_size")
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--torch-compile", action="store_true", help="PyTorch side: torch.compile")
    ap.add_argument("--pairs", type=int, default=3, help="alternating runs of each")
    ap.add_argument("--peak-gflops", type=float, help="the peak to compare with (skips measuring)")
    ap.add_argument("--no-peak", action="store_true", help="skip the gemm peak microbenchmark")
    ap.add_argument("--avx2", action="store_true", help="both sides as on an AVX2-only machine")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        return torch_child(args)
    peak_1, peak = machine_peak(args)
    if peak and args.device != "cuda":
        print(f"machine peak (gemm f32): {peak_1:.1f} GFLOP/s on 1 thread, "
              f"{peak:.1f} GFLOP/s on {args.threads}")
    results = []
    for name in PRESETS if args.preset == "all" else [args.preset]:
        run = argparse.Namespace(**vars(args))
        for key, value in PRESETS[name].items():
            if getattr(args, key, None) is None:
                setattr(run, key, value)
        if run.arch == "llama":
            run.n_kv_head = run.n_kv_head or run.n_head
            run.d_ff = run.d_ff or -(-8 * run.n_embd // 48) * 16  # 8/3·d up to a multiple of 16
        results.append(run_preset(name, run, peak))
    if len(results) > 1:
        print("\n| preset | dnaflow tokens/s | PyTorch tokens/s | speed (range) | "
              "memory | dnaflow GFLOP/s | PyTorch GFLOP/s |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['preset']} | {r['ours']:,.0f} | {r['torch']:,.0f} | "
                  f"{r['speed']:.2f}× ({r['lo']:.2f}–{r['hi']:.2f}) | {r['memory']:.1f}× | "
                  f"{r['ours_gflops']:.1f} | {r['torch_gflops']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(peak_1=peak_1, peak=peak, results=results), indent=1))


if __name__ == "__main__":
    main()
