"""Data-parallel training throughput and memory: dnaflow's ranks against PyTorch DDP.

On the `llama` preset of train_bench.py (LLaMA 4 × 256, 8 heads, 2 key/value heads, SwiGLU
688, untied LM head; packed causal-LM rows of 256 tokens of real yeast DNA, one token per
base; global batch 16, 30 steps, AdamW lr 1e-3, clip 1.0), each pair measures, in one run:

- dnaflow, 1 rank × 1 thread (`model.pretrain`, `resources: { cpus: 1 }`);
- dnaflow, 2 ranks × 1 thread (`ranks: 2`, `zero: 2` by default, `resources: { cpus: 2 }`:
  the ranks are 2 threads of one process, each on 8 of the 16 rows of every batch; with
  `--ranks-as processes`, 2 processes meeting over TCP on loopback, as DDP's);
- PyTorch DDP, 2 processes × 1 thread (`python -m torch.distributed.run --nproc_per_node 2`,
  as `torchrun`; gloo backend; `torch.set_num_threads(1)` in each; transformers'
  `LlamaForCausalLM` with the same config, SDPA attention; each rank 8 rows of the same
  global batch of 16; AdamW lr 1e-3, clip 1.0);
- PyTorch, 1 process × 1 thread, the same model and batch without DDP (its own scaling
  reference; `--no-torch-single` leaves it out).

and prints, per pair and as medians with the range over pairs:

- dnaflow's scaling efficiency = tokens/s(2 ranks) / (2 × tokens/s(1 rank))  (target ≥ 90 %),
  and PyTorch DDP's the same way;
- the speed ratio dnaflow 2 ranks / PyTorch DDP 2 processes, tokens/s  (target ≥ 1.5×);
- memory: each PyTorch rank's peak RSS (its own `getrusage`), dnaflow's one process's peak RSS
  (both ranks; its rows are shared) and that halved, and the training state each rank holds
  (dnaflow's `rank_state`: parameters, gradients, AdamW moments in MiB; DDP keeps all three
  whole on every rank).

Tokens/s are steady state on both sides: global tokens (both ranks) over the steps after the
first (dnaflow's `steady_tokens_per_s`; PyTorch times from after `--warmup` steps, with a
barrier before the clock starts and stops).

    python3 benches/ddp_bench.py [--pairs 3] [--bin target/release/dnaflow] [--zero 2]
        [--ranks-as threads|processes]
        [--steps 30] [--batch 16] [--no-torch-single] [--avx2] [--wait-idle S] [--json FILE]

`--avx2` limits PyTorch to AVX2 (as train_bench.py) and wants a dnaflow built with
`cargo build --release --no-default-features`. The machine's vector ISA (avx512* flags of
/proc/cpuinfo) is printed first. Each run line says how many cores other processes kept busy
meanwhile (marked * above 0.1 core): only runs without * are worth quoting.

Needs torch and transformers. Not a test: numbers depend on the machine.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench as tb  # noqa: E402  (its data, presets, RSS and load helpers)

ROOT = tb.ROOT
PRESET = tb.PRESETS["llama"]


def isa():
    """The avx512* flags of this CPU, or what it has instead."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    if avx512:
        return "AVX-512 (" + ", ".join(avx512) + ")"
    return "AVX2" if "avx2" in flags else "no AVX2"


def torch_rank(args):
    """One PyTorch process: rank RANK of WORLD_SIZE (torchrun's environment), or alone."""
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    ddp = world > 1
    if ddp:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    tok = Tokenizer.from_file(str(tb.TOKENIZER))
    eos = tok.token_to_id("[SEP]")
    ids = []
    for line in tb.CORPUS.read_text().split():
        ids.extend(tok.encode(line, add_special_tokens=False).ids + [eos])
    t = args.seq_len
    data = torch.tensor([ids[i : i + t] for i in range(0, len(ids) - t, t)])
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=args.n_embd,
                      num_hidden_layers=args.n_layer, num_attention_heads=args.n_head,
                      num_key_value_heads=args.n_kv_head, intermediate_size=args.d_ff,
                      max_position_embeddings=t, tie_word_embeddings=False, rms_norm_eps=1e-6,
                      attention_dropout=0, bos_token_id=eos, eos_token_id=eos,
                      pad_token_id=tok.token_to_id("[PAD]"), use_cache=False,
                      attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    params = sum(p.numel() for p in model.parameters())
    step_fn = model
    if ddp:
        # DDP broadcasts rank 0's weights, then all-reduces (averages) gradients in buckets
        # during the backward.
        step_fn = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    per_rank = args.batch // world
    tokens, start = 0, None
    for step in range(args.steps + args.warmup):
        if step == args.warmup:
            if ddp:
                dist.barrier()
            start, tokens = time.perf_counter(), 0
        # Every rank draws the whole global batch and keeps its share of the rows.
        rows = data[torch.randint(len(data), (args.batch,), generator=g)]
        mine = rows[rank * per_rank : (rank + 1) * per_rank]
        loss = step_fn(input_ids=mine, labels=mine).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += rows.numel()  # global tokens
    if ddp:
        dist.barrier()
    secs = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # One file per rank: the ranks share stdout, where their lines can interleave.
    (Path(args.result_dir) / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": world, "tokens_per_s": tokens / secs, "peak_rss_mib": peak,
         "parameters": params, "loss": loss.item()}))
    if ddp:
        dist.destroy_process_group()


def child_args(args):
    return ["--child", "--steps", str(args.steps), "--batch", str(args.batch),
            "--warmup", str(args.warmup), "--seq-len", str(args.seq_len),
            "--n-embd", str(args.n_embd), "--n-layer", str(args.n_layer),
            "--n-head", str(args.n_head), "--n-kv-head", str(args.n_kv_head),
            "--d-ff", str(args.d_ff)]


def run_torch(args, world, env):
    """(tokens/s, [peak RSS MiB per rank], parameters, other cores busy)."""
    results = Path(tempfile.mkdtemp())
    try:
        me = [sys.executable, str(Path(__file__).resolve())] + child_args(args) + [
            "--result-dir", str(results)]
        if world > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={world}"] + me[1:]
        else:
            cmd = me
        env = dict(env, OMP_NUM_THREADS="1")
        out, _, others = tb.peak_rss_mb(cmd, env, args.wait_idle)
        ranks = [json.loads(f.read_text()) for f in sorted(results.glob("rank*.json"))]
    finally:
        shutil.rmtree(results, ignore_errors=True)
    if len(ranks) != world:
        sys.exit(f"PyTorch ({world} process(es)) wrote {len(ranks)} results:\n{out}")
    ranks.sort(key=lambda r: r["rank"])
    return (min(r["tokens_per_s"] for r in ranks), [r["peak_rss_mib"] for r in ranks],
            ranks[0]["parameters"], others)


def run_dnaflow(args, ranks, cpus):
    """(steady tokens/s, process peak RSS MiB, rank_state, other cores busy)."""
    work = Path(tempfile.mkdtemp())
    try:
        wf = work / "bench.yaml"
        parallel = (f"      ranks: {ranks}\n      zero: {args.zero}\n"
                    f"      ranks_as: {args.ranks_as}\n") if ranks > 1 else ""
        wf.write_text(f"""
name: ddp-bench
steps:
  model:
    uses: model.pretrain
    resources: {{ cpus: {cpus} }}
    with:
      arch: llama
      tokenizer: {tb.TOKENIZER}
      train: {tb.CORPUS}
      config: {{ hidden_size: {args.n_embd}, num_hidden_layers: {args.n_layer}, num_attention_heads: {args.n_head}, num_key_value_heads: {args.n_kv_head}, intermediate_size: {args.d_ff}, max_position_embeddings: {args.seq_len}, tie_word_embeddings: false, rms_norm_eps: 1.0e-6 }}
      seq_len: {args.seq_len}
      batch_size: {args.batch}
      steps: {args.steps}
      lr: 0.001
      save_every: 0
{parallel}""")
        env = dict(os.environ, DNAFLOW_CACHE=str(work / "cache"))
        _, rss, others = tb.peak_rss_mb(
            [args.bin, "run", str(wf), "-q", "--cpus", str(cpus), "--report",
             str(work / "report.json")], env, args.wait_idle)
        m = json.loads((work / "report.json").read_text())["steps"][0]["metrics"]
        if m.get("ranks", 1) != ranks:
            sys.exit(f"dnaflow trained on {m.get('ranks')} ranks, asked {ranks}: {m}")
        return m.get("steady_tokens_per_s", m["tokens_per_s"]), rss, m["rank_state"], others
    finally:
        shutil.rmtree(work, ignore_errors=True)


def flag(*loads):
    loads = [x for x in loads if x is not None]
    if not loads:
        return ""
    return f" | others {max(loads):.2f} cores{' *' if max(loads) > tb.OTHER_LOAD else ''}"


def spread(xs, fmt="{:.2f}"):
    med = statistics.median(xs)
    return f"{fmt.format(med)} (range {fmt.format(min(xs))}–{fmt.format(max(xs))})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(ROOT / "target/release/dnaflow"))
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=PRESET["steps"])
    ap.add_argument("--batch", type=int, default=PRESET["batch"], help="global batch (rows)")
    ap.add_argument("--warmup", type=int, default=1, help="PyTorch steps not timed")
    ap.add_argument("--zero", type=int, default=2, choices=[0, 1, 2],
                    help="dnaflow's ZeRO stage on 2 ranks (DDP is stage 0)")
    ap.add_argument("--seq-len", type=int, default=PRESET["seq_len"])
    ap.add_argument("--n-embd", type=int, default=PRESET["n_embd"])
    ap.add_argument("--n-layer", type=int, default=PRESET["n_layer"])
    ap.add_argument("--n-head", type=int, default=PRESET["n_head"])
    ap.add_argument("--n-kv-head", type=int, default=PRESET["n_kv_head"])
    ap.add_argument("--d-ff", type=int, default=PRESET["d_ff"])
    ap.add_argument("--ranks-as", default="threads", choices=["threads", "processes"],
                    help="dnaflow's 2 ranks as threads of one process, or one process each "
                         "meeting over TCP (as DDP's); with processes the RSS is the larger rank's")
    ap.add_argument("--no-torch-single", action="store_true",
                    help="skip PyTorch's 1-process run (its own scaling reference)")
    ap.add_argument("--avx2", action="store_true", help="PyTorch limited to AVX2 (see train_bench)")
    ap.add_argument("--wait-idle", type=int, default=0, metavar="S",
                    help="before each run, wait (up to 15 min) until the CPUs were idle S s")
    ap.add_argument("--json", help="write every pair and the summary here")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--result-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return torch_rank(args)
    if args.batch % 2:
        sys.exit("--batch must be even: 2 ranks take half of every batch each")
    if not Path(args.bin).exists():
        sys.exit(f"no dnaflow at {args.bin}: cargo build --release (or pass --bin)")
    env = dict(os.environ, **(tb.AVX2_ONLY if args.avx2 else {}))
    print(f"CPU: {isa()}{', PyTorch limited to AVX2' if args.avx2 else ''}; "
          f"{os.cpu_count()} cores; dnaflow {args.bin}")
    print(f"LLaMA {args.n_layer} × {args.n_embd}, {args.n_head} heads, {args.n_kv_head} "
          f"key/value heads, SwiGLU {args.d_ff}; seq {args.seq_len}, global batch {args.batch}, "
          f"{args.steps} steps; dnaflow 2 ranks ZeRO-{args.zero} as {args.ranks_as}, PyTorch DDP (gloo)")
    pairs = []
    for i in range(args.pairs):
        p = {}
        p["ours1"], p["ours1_rss"], _, o1 = run_dnaflow(args, 1, 1)
        p["ours2"], p["ours2_rss"], state, o2 = run_dnaflow(args, 2, 2)
        p["state"] = state
        p["torch2"], p["torch2_rss"], params, o3 = run_torch(args, 2, env)
        p["params"] = params
        o4 = None
        if not args.no_torch_single:
            p["torch1"], p["torch1_rss"], _, o4 = run_torch(args, 1, env)
        p["others"] = [o1, o2, o3, o4]
        p["eff_ours"] = p["ours2"] / (2 * p["ours1"])
        p["speed"] = p["ours2"] / p["torch2"]
        line = (f"pair {i + 1}: dnaflow 1 rank {p['ours1']:7.0f} tok/s{flag(o1)}\n"
                f"        dnaflow 2 ranks {p['ours2']:7.0f} tok/s, {p['ours2_rss']:.0f} MiB "
                f"({'one process' if args.ranks_as == 'threads' else 'the larger rank process'})"
                f"{flag(o2)}\n"
                f"        PyTorch DDP 2 processes {p['torch2']:7.0f} tok/s, "
                f"{' + '.join(f'{r:.0f}' for r in p['torch2_rss'])} MiB{flag(o3)}\n")
        if "torch1" in p:
            p["eff_torch"] = p["torch2"] / (2 * p["torch1"])
            line += (f"        PyTorch 1 process {p['torch1']:7.0f} tok/s, "
                     f"{p['torch1_rss'][0]:.0f} MiB{flag(o4)}\n")
        line += (f"        dnaflow efficiency {100 * p['eff_ours']:.1f} %"
                 + (f", PyTorch's {100 * p['eff_torch']:.1f} %" if "eff_torch" in p else "")
                 + f"; speed dnaflow / PyTorch DDP {p['speed']:.2f}x")
        print(line, flush=True)
        pairs.append(p)

    med = statistics.median
    print(f"\nmedians of {len(pairs)} pairs (range over pairs):")
    print(f"  dnaflow 1 rank × 1 thread:     {med([p['ours1'] for p in pairs]):8.0f} tokens/s")
    print(f"  dnaflow 2 ranks × 1 thread:    {med([p['ours2'] for p in pairs]):8.0f} tokens/s")
    print(f"  PyTorch DDP 2 × 1 thread:      {med([p['torch2'] for p in pairs]):8.0f} tokens/s")
    if not args.no_torch_single:
        print(f"  PyTorch 1 process × 1 thread:  {med([p['torch1'] for p in pairs]):8.0f} tokens/s")
    eff = [100 * p["eff_ours"] for p in pairs]
    speed = [p["speed"] for p in pairs]
    print(f"  dnaflow scaling efficiency:    {spread(eff, '{:.1f}')} %  "
          f"(target >= 90 %: {'met' if med(eff) >= 90 else 'NOT met'})")
    if not args.no_torch_single:
        print(f"  PyTorch DDP scaling efficiency: {spread([100 * p['eff_torch'] for p in pairs], '{:.1f}')} %")
    print(f"  speed dnaflow / PyTorch DDP:   {spread(speed)}x  "
          f"(target >= 1.5x: {'met' if med(speed) >= 1.5 else 'NOT met'})")
    ours_rss = med([p["ours2_rss"] for p in pairs])
    torch_rss = med([max(p["torch2_rss"]) for p in pairs])
    # wait4's peak RSS is the largest single process of the run: both thread ranks, or the
    # larger rank process.
    per_rank = ours_rss / 2 if args.ranks_as == "threads" else ours_rss
    where = ("for both ranks (one process" if args.ranks_as == "threads"
             else "for the larger rank process (one per rank")
    print(f"  peak RSS: dnaflow {ours_rss:.0f} MiB {where}; "
          f"{per_rank:.0f} per rank); PyTorch DDP {torch_rss:.0f} MiB per rank "
          f"(the larger of its 2 processes; {2 * torch_rss:.0f} both); "
          f"per rank PyTorch / dnaflow {torch_rss / per_rank:.2f}x")
    full = pairs[0]["params"] * 4 / 2**20
    print(f"  training state per rank (MiB): PyTorch DDP parameters {full:.2f}, gradients "
          f"{full:.2f}, moments {2 * full:.2f} (every rank all of it)")
    for r, s in enumerate(pairs[0]["state"]):
        print(f"    dnaflow ZeRO-{args.zero} rank {r}: parameters {s['parameters_mib']:.2f}, "
              f"gradients {s['gradients_mib']:.2f}, moments {s['moments_mib']:.2f}")
    loads = [o for p in pairs for o in p["others"] if o is not None]
    if loads:
        busy = sum(o > tb.OTHER_LOAD for o in loads)
        print(f"  runs beside other work (> {tb.OTHER_LOAD} core, * above): {busy} of "
              f"{len(loads)} (most: {max(loads):.2f} cores)")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(isa=isa(), pairs=pairs), indent=1))


if __name__ == "__main__":
    main()
