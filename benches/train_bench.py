"""Training throughput, efficiency and peak memory: dnaflow (burn) against PyTorch + transformers.

Same model config, batch, sequence length, optimizer (AdamW, clip 1.0) and data (real yeast
DNA, one token per base), same machine, same run. For each preset it prints tokens/s and peak
RSS for both, their ratios (dnaflow / PyTorch for speed, PyTorch / dnaflow for memory: > 1
favours dnaflow), the model FLOPs per token (forward + backward, attention included), the
FLOP/s each side achieves, and that as a fraction of the machine's peak: on CPU the fp32
matrix-product peak measured in the same run with the `gemm` crate burn-flex uses
(`cargo bench --bench gemm_peak`), on a GPU its dense peak (`--peak-tflops`, known for a few
GPUs).

    python3 benches/train_bench.py [--preset default|4x256|gpt2-small|bert|llama|llama-lora|all]
        [--pairs 3] [--bin target/release/dnaflow] [--threads 2] [--device cpu|cuda]
        [--precision f32|bf16] [--torch-compile] [--steps N] [--batch N]
        [--peak-gflops X | --no-peak] [--avx2] [--lora] [--init DIR] [--lora-r 8]
        [--lora-alpha 32] [--lora-dropout 0.05] [--wait-idle S]

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
    llama-lora  the `llama` preset's shapes, rows, lr, clipping, batch and steps, LoRA-fine-tuned
                (r 8, alpha 32, dropout 0.05 on q/k/v/o/gate/up/down_proj) and fully fine-tuned,
                both from the same base weights, on both sides, in the same run (`--lora` on the
                `llama` preset is the same)

LoRA (`llama-lora`, or `--lora` on a LLaMA preset): transformers writes one fresh base model
(`LlamaForCausalLM(config).save_pretrained`, safetensors, seed 0, the exact config the `llama`
side builds) into a temporary directory, or `--init DIR` names one. dnaflow trains
`model.pretrain` with `init:` that directory and `lora:`; PyTorch loads it with
`from_pretrained` and wraps it with `peft.get_peft_model(model, LoraConfig(r, lora_alpha,
lora_dropout, target_modules, task_type="CAUSAL_LM"))`, AdamW over the trainable parameters
only. Each pair then also fully fine-tunes the same base on both sides (`init:` without
`lora:`; `from_pretrained` without peft), so the output gives each side's LoRA peak RSS against
its full fine-tuning peak RSS. Each side's trainable parameter count is printed (dnaflow's
`trainable_parameters` metric). LoRA's FLOPs per token count the frozen base's forward and its
activation gradients (2 × forward: frozen weights get no gradient) plus the low-rank pairs'
forward + backward (3 × theirs).

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

Other work on the machine (a build beside the benchmark on a 2-core machine) skews either side,
PyTorch's OpenMP threads most: each pair line says how many cores other processes kept busy
during each side's run (/proc/stat less the run's own CPU time), marked * above 0.1, and
`--wait-idle S` starts each run only after the CPUs were idle for S seconds.

Needs torch and transformers (and peft for LoRA). Not a test: numbers depend on the machine.
"""

import argparse
import json
import os
import random
import shutil
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
    # The `llama` preset, LoRA-fine-tuned (and fully fine-tuned) from one base written once.
    "llama-lora": dict(arch="llama", n_embd=256, n_layer=4, n_head=8, n_kv_head=2, d_ff=688,
                       seq_len=256, batch=16, steps=30, lora=True),
}

# LoRA as chapter 4 sets it (PEFT's names): both sides get exactly these.
LORA = dict(r=8, alpha=32, dropout=0.05,
            targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

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


def flops_per_token(args, vocab, lora=False):
    """Model FLOPs per (real) token, forward + backward (LoRA: see the module's docstring)."""
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
        forward = layers * layer + 2 * d * vocab
        if not lora:
            return 3 * forward
        # A frozen base: its forward and the activation gradients through it (2 × forward),
        # no weight gradients; each pair x·A·B costs r·(in + out) multiply-adds, trained fully.
        sides = {"q_proj": (d, h * dh), "k_proj": (d, kv * dh), "v_proj": (d, kv * dh),
                 "o_proj": (h * dh, d), "gate_proj": (d, args.d_ff), "up_proj": (d, args.d_ff),
                 "down_proj": (args.d_ff, d)}
        pairs = layers * 2 * LORA["r"] * sum(sum(sides[m]) for m in LORA["targets"])
        return 2 * forward + 3 * pairs
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
            if args.write_base:
                # The base both sides fine-tune: this exact config, fresh weights, safetensors.
                LlamaForCausalLM(cfg).save_pretrained(args.write_base)
                return
            if args.init:
                model = LlamaForCausalLM.from_pretrained(args.init, dtype=torch.float32,
                                                         attn_implementation="sdpa")
                model.config.use_cache = False
                model.train()  # from_pretrained returns eval mode; LoRA's dropout trains
            else:
                model = LlamaForCausalLM(cfg)
            if args.lora:
                from peft import LoraConfig, get_peft_model

                model = get_peft_model(model, LoraConfig(
                    r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                    target_modules=LORA["targets"], task_type="CAUSAL_LM"))
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
    # Only what trains (all of it, or LoRA's pairs) gets AdamW moments and clipping.
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3, eps=1e-8, weight_decay=0.01)
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
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += real
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - start
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0
    print(json.dumps({"tokens_per_s": tokens / secs, "loss": loss.item(), "gpu_mib": peak_gpu,
                      "trainable": sum(p.numel() for p in trainable),
                      "parameters": sum(p.numel() for p in model.parameters())}))


AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"}


def cpu_busy_s():
    """CPU seconds every process on the machine has used so far (/proc/stat), None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_idle(seconds, limit=900):
    """Wait until the CPUs have been idle (< 0.15 core busy) for `seconds` in a row, at most
    `limit` seconds: on a shared machine a build beside the benchmark skews either side."""
    if not seconds or cpu_busy_s() is None:
        return
    start, quiet, before = time.time(), 0, cpu_busy_s()
    while quiet < seconds and time.time() - start < limit:
        time.sleep(1)
        now = cpu_busy_s()
        quiet, before = (quiet + 1 if now - before < 0.15 else 0), now
    if quiet < seconds:
        print(f"(not idle for {seconds} s within {limit} s; measuring anyway)", flush=True)


OTHER_LOAD = 0.1  # cores: a run beside more other work than this is flagged


def peak_rss_mb(cmd, env=None, idle=0):
    """Run `cmd` (after `wait_idle(idle)`); its stdout, its own peak RSS (wait4's rusage of that
    child and its descendants alone) and the cores other processes used meanwhile (all CPU
    time in /proc/stat less the child's own, over the wall time; None off Linux)."""
    wait_idle(idle)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        busy, start = cpu_busy_s(), time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall, after = time.perf_counter() - start, cpu_busy_s()
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text = out.read()
        if child.returncode != 0:
            sys.exit(f"{cmd[0]} failed:\n{text}\n{err.read()}")
    others = None
    if busy is not None:
        others = max(0.0, (after - busy - usage.ru_utime - usage.ru_stime) / wall)
    return text, usage.ru_maxrss / 1024, others


def dnaflow(args):
    """(steady tokens/s, peak RSS MiB, trainable parameters or None, other cores busy) of one
    dnaflow run."""
    work = Path(tempfile.mkdtemp())
    try:
        return dnaflow_in(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def dnaflow_in(args, work):
    wf = work / "bench.yaml"
    if args.arch == "bert":
        train = work / "mixed.txt"
        train.write_text("\n".join(mixed_rows(args.seq_len)) + "\n")
        config = (f"{{ hidden_size: {args.n_embd}, num_hidden_layers: {args.n_layer}, "
                  f"num_attention_heads: {args.n_head}, intermediate_size: {4 * args.n_embd}, "
                  "hidden_dropout_prob: 0, attention_probs_dropout_prob: 0 }")
    elif args.arch == "llama" and args.init:
        train = CORPUS
        config = None  # init's config.json
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
    extra = f"      config: {config}\n" if config else ""
    if args.init:
        extra += f"      init: {args.init}\n"
    if args.lora:
        extra += (f"      lora: {{ r: {LORA['r']}, alpha: {LORA['alpha']:g}, "
                  f"dropout: {LORA['dropout']}, target_modules: [{', '.join(LORA['targets'])}], "
                  "modules_to_save: [] }\n")
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
{extra}      seq_len: {args.seq_len}
      batch_size: {args.batch}
      steps: {args.steps}
      lr: 0.001
      save_every: 0
      device: {args.device}
      precision: {args.precision}
""")
    env = dict(os.environ, DNAFLOW_CACHE=str(work / "cache"))
    _, rss, others = peak_rss_mb([args.bin, "run", str(wf), "-q", "--cpus", str(args.threads),
                                  "--report", str(work / "report.json")], env, args.wait_idle)
    metrics = json.loads((work / "report.json").read_text())["steps"][0]["metrics"]
    return (metrics.get("steady_tokens_per_s", metrics["tokens_per_s"]), rss,
            metrics.get("trainable_parameters"), others)


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


def child_cmd(name, args):
    """The PyTorch child for this preset and mode (`args.lora`, `args.init`, `args.write_base`)."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a in ("--init", "--write-base"):
            skip = True
        elif a not in ("--child", "--lora") and not a.startswith(("--init=", "--write-base=")):
            argv.append(a)
    return [sys.executable, __file__, "--child"] + argv + [
        "--arch", args.arch, "--n-embd", str(args.n_embd), "--n-layer", str(args.n_layer),
        "--n-head", str(args.n_head), "--seq-len", str(args.seq_len), "--batch", str(args.batch),
        "--steps", str(args.steps), "--preset", name] + [
        a for key in ("n_kv_head", "d_ff", "init", "write_base") if getattr(args, key)
        for a in (f"--{key.replace('_', '-')}", str(getattr(args, key)))] + (
        ["--lora"] if args.lora else [])


def summarise(label, pairs, fpt, peak, unit):
    """Print the medians and ratios of `pairs` (ours_tps, ours_rss, torch_tps, torch_rss,
    ours_trainable, torch_trainable, ours_others, torch_others); returns them."""
    med = statistics.median
    ours_tps, ours_rss, torch_tps, torch_rss = (med([p[k] for p in pairs]) for k in range(4))
    print(f"{label}:")
    for who, tps, rss, trainable in (
            ("  dnaflow (burn):        ", ours_tps, ours_rss, pairs[0][4]),
            ("  PyTorch + transformers:", torch_tps, torch_rss, pairs[0][5])):
        gflops = fpt * tps / 1e9
        frac = f", {100 * gflops / peak:.1f} % {unit}" if peak else ""
        count = f"  trainable {trainable:,}" if trainable is not None else "  trainable ?"
        print(f"{who} {tps:10.0f} tokens/s  peak RSS {rss:7.1f} MiB  "
              f"{gflops:7.1f} GFLOP/s{frac}{count}  (medians)")
    speed = [p[0] / p[2] for p in pairs]
    memory = [p[3] / p[1] for p in pairs]
    print(f"  speed ratio (dnaflow / PyTorch): {med(speed):.2f}x median of pairs "
          f"(range {min(speed):.2f}-{max(speed):.2f})")
    print(f"  memory ratio (PyTorch / dnaflow): {med(memory):.2f}x")
    loads = [o for p in pairs for o in p[6:8] if o is not None]
    if loads:
        busy = sum(o > OTHER_LOAD for o in loads)
        print(f"  runs beside other work (> {OTHER_LOAD} core on average, * above): "
              f"{busy} of {len(loads)} (most: {max(loads):.2f} cores)")
    return dict(ours=ours_tps, torch=torch_tps, speed=med(speed), lo=min(speed), hi=max(speed),
                memory=med(memory), ours_rss=ours_rss, torch_rss=torch_rss,
                ours_trainable=pairs[0][4], torch_trainable=pairs[0][5],
                ours_gflops=fpt * ours_tps / 1e9, torch_gflops=fpt * torch_tps / 1e9)


def run_preset(name, args, peak):
    """One preset: its pairs and summary. With `args.lora`, LoRA and full fine-tuning of one
    base, alternating within each pair; one result per mode."""
    vocab = len(json.loads(TOKENIZER.read_text())["model"]["vocab"])
    shape = (f", {args.n_kv_head or args.n_head} key/value heads, SwiGLU {args.d_ff}"
             if args.arch == "llama" else "")
    print(f"\n== preset {name}: {args.arch.upper()} {args.n_layer} × {args.n_embd}, "
          f"{args.n_head} heads{shape}, seq {args.seq_len}, batch {args.batch}, "
          f"{args.steps} steps, {args.threads} threads, {args.device} {args.precision}"
          f"{', AVX2 only' if args.avx2 else ''}"
          f"{', torch.compile' if args.torch_compile else ''}")
    env = dict(os.environ, **(AVX2_ONLY if args.avx2 else {}))
    base = None
    if args.lora:
        if args.arch != "llama":
            sys.exit("--lora: LLaMA presets only (PEFT target names q/k/v/o/gate/up/down_proj)")
        if not args.init:
            base = Path(tempfile.mkdtemp()) / "base"
            write = argparse.Namespace(**dict(vars(args), lora=False, write_base=str(base)))
            peak_rss_mb(child_cmd(name, write), env)  # not timed
            args = argparse.Namespace(**dict(vars(args), init=str(base)))
        print(f"LoRA r {LORA['r']}, alpha {LORA['alpha']:g}, dropout {LORA['dropout']} on "
              f"{', '.join(LORA['targets'])}; both sides fine-tune the base in {args.init}"
              f"{' (written once by transformers, seed 0)' if base else ''}, "
              "LoRA and full alternating in each pair")
        modes = [("LoRA", argparse.Namespace(**dict(vars(args), lora=True))),
                 ("full", argparse.Namespace(**dict(vars(args), lora=False)))]
    else:
        modes = [(None, args)]
    fpts = {}
    for mode, margs in modes:
        fpts[mode] = flops_per_token(margs, vocab, lora=bool(margs.lora))
        print(f"model FLOPs per token{f' ({mode})' if mode else ''} (forward + backward): "
              f"{fpts[mode] / 1e6:.2f} MFLOP")
    pairs = {mode: [] for mode, _ in modes}
    try:
        for i in range(args.pairs):
            line = []
            for mode, margs in modes:
                out, torch_rss, torch_others = peak_rss_mb(child_cmd(name, margs), env,
                                                           args.wait_idle)
                got = json.loads(out.strip().splitlines()[-1])
                ours_tps, ours_rss, ours_trainable, ours_others = dnaflow(margs)
                pairs[mode].append((ours_tps, ours_rss, got["tokens_per_s"], torch_rss,
                                    ours_trainable, got.get("trainable"), ours_others,
                                    torch_others))
                load = ""
                if ours_others is not None:
                    flag = " *" if max(ours_others, torch_others) > OTHER_LOAD else ""
                    load = f" | others {ours_others:.2f} / {torch_others:.2f} cores{flag}"
                line.append(f"{f'{mode}: ' if mode else ''}dnaflow {ours_tps:8.0f} tokens/s "
                            f"{ours_rss:6.1f} MiB | PyTorch {got['tokens_per_s']:8.0f} tokens/s "
                            f"{torch_rss:6.1f} MiB | speed {ours_tps / got['tokens_per_s']:.2f}x"
                            f"{load}")
            print(f"pair {i + 1}: " + "\n        ".join(line), flush=True)
    finally:
        if base:
            shutil.rmtree(base.parent, ignore_errors=True)
    unit = "of the GPU's dense bf16 peak" if args.device == "cuda" else "of the all-core gemm peak"
    results = []
    for mode, _ in modes:
        label = {None: "medians", "LoRA": "LoRA fine-tuning",
                 "full": "full fine-tuning of the same base"}[mode]
        r = summarise(label, pairs[mode], fpts[mode], peak, unit)
        results.append(dict(r, preset=name if mode != "full" else f"{name} (full)"))
    if args.lora:
        lora, full = results
        print(f"LoRA peak RSS / full peak RSS: dnaflow {lora['ours_rss']:.1f} / "
              f"{full['ours_rss']:.1f} MiB = {lora['ours_rss'] / full['ours_rss']:.2f}; "
              f"PyTorch {lora['torch_rss']:.1f} / {full['torch_rss']:.1f} MiB = "
              f"{lora['torch_rss'] / full['torch_rss']:.2f}")
        print(f"LoRA speed target (dnaflow / PyTorch + peft >= 1.5x): "
              f"{'met' if lora['speed'] >= 1.5 else 'NOT met'} ({lora['speed']:.2f}x)")
    return results


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
    ap.add_argument("--lora", action="store_true", default=None,
                    help="LoRA and full fine-tuning of one base (LLaMA; as --preset llama-lora)")
    ap.add_argument("--init", help="LoRA: the base model directory (default: write a fresh one)")
    ap.add_argument("--lora-r", type=int, default=LORA["r"], help="LoRA rank (both sides)")
    ap.add_argument("--lora-alpha", type=float, default=LORA["alpha"])
    ap.add_argument("--lora-dropout", type=float, default=LORA["dropout"])
    ap.add_argument("--write-base", help=argparse.SUPPRESS)
    ap.add_argument("--wait-idle", type=int, default=0, metavar="S",
                    help="before each run, wait (up to 15 min) until the CPUs were idle S s")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    LORA.update(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout)
    if args.child:
        return torch_child(args)
    peak_1, peak = machine_peak(args)
    if peak and args.device != "cuda":
        one = f"{peak_1:.1f} GFLOP/s on 1 thread, " if peak_1 else ""
        print(f"machine peak (gemm f32): {one}{peak:.1f} GFLOP/s on {args.threads}")
    results = []
    for name in PRESETS if args.preset == "all" else [args.preset]:
        run = argparse.Namespace(**vars(args))
        for key, value in PRESETS[name].items():
            if getattr(args, key, None) is None:
                setattr(run, key, value)
        if run.arch == "llama":
            run.n_kv_head = run.n_kv_head or run.n_head
            run.d_ff = run.d_ff or -(-8 * run.n_embd // 48) * 16  # 8/3·d up to a multiple of 16
        run.lora = bool(run.lora)
        results.extend(run_preset(name, run, peak))
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
