"""Embedding throughput and peak memory: dnaflow's `model.embed` against PyTorch at the same
shapes, batch and sequences, in the same run, pair by pair (issue 26, point 5).

    python3 benches/embed_bench.py [--preset dnabert2|esm2|all] [--pairs 3] [--small]
    python3 benches/embed_bench.py --long [--layers 2] [--length 10000]

Presets (random weights: what is timed is the arithmetic, not what the weights know):
  dnabert2  DNABERT-2-117M's shape: 12 layers, hidden 768, 12 heads, GEGLU 3072, ALiBi, a
            4,096-piece BPE trained here on the shipped E. coli genome; 64 windows of 500 bases
            (about 120 tokens each), batch 16. PyTorch side: DNABERT-2's published PyTorch
            path (no Triton) as tests/fixtures/models/make_dnabert2.py implements it.
  esm2      ESM-2 t12_35M's shape: 12 layers, hidden 480, 20 heads, 1,920 wide MLP, rotary,
            ESM-2's 33-token vocabulary; 64 C. trachomatis proteins cut to 254 residues,
            batch 16. PyTorch side: transformers' EsmModel.
`--small` divides the layers by 6 (a quick check that everything runs).
`--long`  peak memory of one long sequence instead: a random LucaOne of LucaOne-default's
          width (hidden 2560, 40 heads, FFN 4 x hidden; `--layers` of its 20, default 2,
          since activations, not weights, are what grows with length) embeds one E. coli
          stretch of `--length` bases (default 10,000: 10,002 tokens with [CLS] and [SEP]),
          against the `lucaone` package's LucaGPLMModel (its SDPA attention) on the same
          tokens. The model directory (about 0.7 GB at 2 layers) is written to a temporary
          directory and removed. `$DNAFLOW_BIN_BEFORE`, when set, runs a second binary on
          the same model (an older build, to compare).

Both sides embed the same sequences: the last hidden state, mean-pooled over each row's real
tokens. dnaflow's time is the `model.embed` step's own (load, tokenize, forward, pool, write
the table) from its run record; PyTorch's is the same work inside its process (model load to
pooled vectors), torch's import excluded. Peak memory is each process's own peak RSS
(GNU time's `%M`; `apt-get install time` where it is missing). Threads: both use every core
(the step is granted `resources: { cpus: <all> }`; a step without it gets one CPU). The binary is `$DNAFLOW_BIN`, else
target/release/dnaflow, else target/debug/dnaflow. Prints sequences/s, the speed ratio
(dnaflow over PyTorch) per pair and its range, and the memory ratio (PyTorch over dnaflow).
"""

import argparse
import csv
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "models"

PRESETS = {
    "dnabert2": dict(layers=12, hidden=768, heads=12, inner=3072, n=64, batch=16, length=500),
    "esm2": dict(layers=12, hidden=480, heads=20, inner=1920, n=64, batch=16, length=254),
}


def binary():
    if os.environ.get("DNAFLOW_BIN"):
        return os.environ["DNAFLOW_BIN"]
    for p in ("target/release/dnaflow", "target/debug/dnaflow"):
        if (ROOT / p).exists():
            return str(ROOT / p)
    sys.exit("no dnaflow binary: cargo build --release")


def isa():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else platform.machine())


def genome_windows(n, length):
    seq = []
    with gzip.open(ROOT / "data/genomes/ecoli_k12_mg1655.fa.gz", "rt") as f:
        for line in f:
            if not line.startswith(">"):
                seq.append(line.strip().upper())
            if sum(map(len, seq)) > (n + 1) * length * 3:
                break
    s = "".join(seq)
    return [s[i * length * 3 : i * length * 3 + length] for i in range(n)]


def proteins(n, length):
    with gzip.open(ROOT / "data/chlamydia/cds.csv.gz", "rt") as f:
        rows = [r["protein"] for r in csv.DictReader(f)]
    return [p[:length] for p in rows if len(p) >= 50][:n]


def write_dnabert2(d, p, seqs):
    """A random DNABERT-2 at the preset's shape, with a BPE trained on genome windows."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    sys.path.insert(0, str(FIXTURES))
    import make_dnabert2 as ref

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=ref.SPECIALS, show_progress=False)
    tok.train_from_iterator(genome_windows(400, 1000), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    tok.save(str(d / "tokenizer.json"))
    config = dict(ref.CONFIG, vocab_size=tok.get_vocab_size(), hidden_size=p["hidden"],
                  num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
                  intermediate_size=p["inner"], max_position_embeddings=512,
                  pad_token_id=ref.PAD)
    torch.manual_seed(0)
    model = ref.BertForMaskedLM(ref.Config(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if k != "cls.predictions.decoder.weight"}
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(config, indent=2))


def write_esm2(d, p, seqs):
    import torch
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer
    from transformers.models.esm.configuration_esm import get_default_vocab_list

    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(get_default_vocab_list()) + "\n")
    tok = EsmTokenizer(str(vocab))
    config = EsmConfig(vocab_size=33, hidden_size=p["hidden"], num_hidden_layers=p["layers"],
                       num_attention_heads=p["heads"], intermediate_size=p["inner"],
                       max_position_embeddings=1026, position_embedding_type="rotary",
                       token_dropout=True, mask_token_id=32, pad_token_id=1,
                       emb_layer_norm_before=False, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    EsmForMaskedLM(config).save_pretrained(d)
    tok.save_pretrained(d)


LONG = dict(hidden=2560, heads=40, layers=2, length=10000)


def write_lucaone(d, p):
    """A random LucaOne (LucaGPLMForMaskedLM, the package's own class) at `p`'s shape."""
    import torch
    from lucaone import LucaGPLMConfig

    sys.path.insert(0, str(FIXTURES))
    import make_lucaone as ref

    config = LucaGPLMConfig(vocab_size=39, hidden_size=p["hidden"], num_hidden_layers=p["layers"],
                            num_attention_heads=p["heads"], ffn_dim=4 * p["hidden"],
                            max_position_embeddings=p["length"] + 2)
    torch.manual_seed(0)
    ref.LucaGPLMForMaskedLM(config).save_pretrained(d)
    (d / "generation_config.json").unlink(missing_ok=True)


def lucaone_child(args):
    """The lucaone package's side of `--long`: one sequence's mean-pooled last hidden state."""
    import torch
    from lucaone import LucaGPLMModel, LucaGPLMTokenizer

    torch.set_num_threads(os.cpu_count())
    d = Path(args.child_dir)
    seq = [r["sequence"] for r in csv.DictReader(open(d / "seqs.csv"))][0]
    start = time.perf_counter()
    model = LucaGPLMModel.from_pretrained(d / "model")
    model.eval()
    enc = LucaGPLMTokenizer()(seq, seq_type="gene")
    with torch.inference_mode():
        h = model(input_ids=torch.tensor([enc["input_ids"]]),
                  token_type_ids=torch.tensor([enc["token_type_ids"]])).last_hidden_state
        h.mean(1)
    print(json.dumps({"seconds": time.perf_counter() - start, "tokens": h.shape[1]}))


def long_case(p):
    """`--long`: peak RSS of embedding one long sequence, dnaflow against the lucaone package."""
    work = Path(tempfile.mkdtemp(prefix="embed-bench-long-"))
    try:
        (work / "model").mkdir()
        write_lucaone(work / "model", p)
        seq = genome_windows(1, p["length"])[0]
        (work / "seqs.csv").write_text(f"id,sequence\nlong,{seq}\n")
        (work / "wf.yaml").write_text(
            "name: embed-bench-long\nsteps:\n  embed:\n    uses: model.embed\n"
            "    with: { model: model, data: seqs.csv, pool: mean, batch_size: 1 }\n"
            f"    resources: {{ cpus: {os.cpu_count()} }}\n")
        rows = []
        sides = [("dnaflow", binary())]
        if os.environ.get("DNAFLOW_BIN_BEFORE"):
            sides.append(("dnaflow (before)", os.environ["DNAFLOW_BIN_BEFORE"]))
        for name, exe in sides:
            cache = work / "cache"
            subprocess.run(["rm", "-rf", str(cache)])
            os.environ["DNAFLOW_CACHE"] = str(cache)
            report = work / "report.json"
            _, peak = peak_of([exe, "run", str(work / "wf.yaml"), "-q", "--report", str(report)])
            step = json.loads(report.read_text())["steps"][0]
            rows.append((name, step.get("seconds") or step.get("time"), peak))
            print(f"  {name}: {rows[-1][1]:.1f} s, peak {peak:.0f} MiB", flush=True)
        out, peak = peak_of([sys.executable, __file__, "--child", "lucaone", "--child-dir",
                             str(work)])
        rows.append(("lucaone package (PyTorch SDPA)", json.loads(out.strip().splitlines()[-1])["seconds"], peak))
        print(f"  {rows[-1][0]}: {rows[-1][1]:.1f} s, peak {peak:.0f} MiB", flush=True)
    finally:
        subprocess.run(["rm", "-rf", str(work)])
    t = p["length"] + 2
    print(f"\n| side | seconds | peak MiB |\n|---|---|---|")
    for name, secs, peak in rows:
        print(f"| {name} | {secs:.1f} | {peak:.0f} |")
    print(f"\nOne head's T x T scores at T = {t}: {t * t * 4 / 2**20:.0f} MiB; "
          f"[1, {p['heads']}, T, T]: {p['heads'] * t * t * 4 / 2**30:.1f} GiB")


def torch_child(args):
    """The PyTorch side in its own process: prints its own seconds as JSON."""
    import torch

    torch.set_num_threads(os.cpu_count())
    d = Path(args.child_dir)
    seqs = [r["sequence"] for r in csv.DictReader(open(d / "seqs.csv"))]
    start = time.perf_counter()
    if args.child == "dnabert2":
        sys.path.insert(0, str(FIXTURES))
        import make_dnabert2 as ref
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        config = json.loads((d / "model" / "config.json").read_text())
        model = ref.BertForMaskedLM(ref.Config(dict(ref.CONFIG, **config)))
        model.load_state_dict(load_file(d / "model" / "model.safetensors"), strict=False)
        tok = Tokenizer.from_file(str(d / "model" / "tokenizer.json"))
        pad = ref.PAD

        def encode(batch):
            enc = [e.ids for e in tok.encode_batch(batch)]
            t = max(map(len, enc))
            ids = torch.tensor([e + [pad] * (t - len(e)) for e in enc])
            mask = torch.tensor([[1] * len(e) + [0] * (t - len(e)) for e in enc])
            return ids, mask

        def last(ids, mask):
            emb = model.bert.embeddings(ids, torch.zeros_like(ids))
            return model.bert.encoder(emb, mask)[-1]
    else:
        from transformers import EsmModel, EsmTokenizer

        model = EsmModel.from_pretrained(d / "model", add_pooling_layer=False)
        tok = EsmTokenizer.from_pretrained(d / "model")

        def encode(batch):
            enc = tok(batch, padding=True, return_tensors="pt")
            return enc["input_ids"], enc["attention_mask"]

        def last(ids, mask):
            return model(input_ids=ids, attention_mask=mask).last_hidden_state
    model.eval()
    pooled = []
    with torch.inference_mode():
        for i in range(0, len(seqs), args.child_batch):
            ids, mask = encode(seqs[i : i + args.child_batch])
            h = last(ids, mask)
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled.append((h * m).sum(1) / m.sum(1))
    torch.cat(pooled)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def peak_of(cmd):
    """Run `cmd`; its stdout and its peak RSS in MiB, as GNU time reports it. (Not `os.wait4`
    here: a child forked from this process, which holds torch, keeps this process's RSS as its
    high-water mark across exec.)"""
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M", *map(str, cmd)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    kb = [l for l in proc.stderr.splitlines() if l.startswith("MAXRSS_KB ")][-1].split()[1]
    return proc.stdout, int(kb) / 1024


def preset(name, p, pairs):
    work = Path(tempfile.mkdtemp(prefix=f"embed-bench-{name}-"))
    seqs = genome_windows(p["n"], p["length"]) if name == "dnabert2" else proteins(p["n"], p["length"])
    (work / "model").mkdir()
    (write_dnabert2 if name == "dnabert2" else write_esm2)(work / "model", p, seqs)
    with open(work / "seqs.csv", "w") as f:
        f.write("id,sequence\n")
        for i, s in enumerate(seqs):
            f.write(f"s{i},{s}\n")
    (work / "wf.yaml").write_text(
        "name: embed-bench\nsteps:\n  embed:\n    uses: model.embed\n"
        f"    with: {{ model: model, data: seqs.csv, pool: mean, batch_size: {p['batch']} }}\n"
        f"    resources: {{ cpus: {os.cpu_count()} }}\n")
    env_cache = work / "cache"
    rows = []
    for k in range(pairs):
        order = ["dnaflow", "torch"] if k % 2 == 0 else ["torch", "dnaflow"]
        got = {}
        for side in order:
            if side == "dnaflow":
                subprocess.run(["rm", "-rf", str(env_cache)])
                report = work / "report.json"
                os.environ["DNAFLOW_CACHE"] = str(env_cache)
                _, peak = peak_of([binary(), "run", str(work / "wf.yaml"), "-q", "--report", str(report)])
                step = json.loads(report.read_text())["steps"][0]
                secs = step.get("seconds") or step.get("time")
                got["dnaflow"] = (secs, peak)
            else:
                out, peak = peak_of([sys.executable, __file__, "--child", name, "--child-dir",
                                     str(work), "--child-batch", str(p["batch"])])
                got["torch"] = (json.loads(out.strip().splitlines()[-1])["seconds"], peak)
        (ours, our_peak), (theirs, their_peak) = got["dnaflow"], got["torch"]
        rows.append((len(seqs) / ours, len(seqs) / theirs, our_peak, their_peak))
        print(f"  pair {k + 1}: dnaflow {len(seqs) / ours:7.2f} seq/s, {our_peak:6.0f} MiB | "
              f"PyTorch {len(seqs) / theirs:7.2f} seq/s, {their_peak:6.0f} MiB | "
              f"speed {theirs / ours:.2f}x", flush=True)
    speed = [a / b for a, b, _, _ in rows]
    memory = [tp / op for _, _, op, tp in rows]
    return dict(preset=name, ours=sum(r[0] for r in rows) / len(rows),
                torch=sum(r[1] for r in rows) / len(rows), speed=(min(speed), max(speed)),
                memory=(min(memory), max(memory)), ours_mib=max(r[2] for r in rows),
                torch_mib=max(r[3] for r in rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="all", choices=[*PRESETS, "all"])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--long", action="store_true")
    ap.add_argument("--layers", type=int, default=LONG["layers"])
    ap.add_argument("--length", type=int, default=LONG["length"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-dir", help=argparse.SUPPRESS)
    ap.add_argument("--child-batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "lucaone":
        return lucaone_child(args)
    if args.child:
        return torch_child(args)
    print(f"machine: {os.cpu_count()} cores, {isa()}; binary {binary()}")
    if args.long:
        p = dict(LONG, layers=args.layers, length=args.length)
        print(f"\n== long: LucaOne {p['layers']} layers x {p['hidden']}, {p['heads']} heads, "
              f"one sequence of {p['length']} bases", flush=True)
        return long_case(p)
    results = []
    for name in PRESETS if args.preset == "all" else [args.preset]:
        p = dict(PRESETS[name])
        if args.small:
            p["layers"] = max(1, p["layers"] // 6)
        print(f"\n== {name}: {p['layers']} layers x {p['hidden']}, {p['heads']} heads, "
              f"{p['n']} sequences, batch {p['batch']}", flush=True)
        results.append(preset(name, p, args.pairs))
    print("\n| preset | dnaflow seq/s | PyTorch seq/s | speed (range) | peak MiB dnaflow / PyTorch | memory (range) | target 1.5x |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        lo, hi = r["speed"]
        print(f"| {r['preset']} | {r['ours']:.2f} | {r['torch']:.2f} | {lo:.2f}-{hi:.2f}x | "
              f"{r['ours_mib']:.0f} / {r['torch_mib']:.0f} | {r['memory'][0]:.2f}-{r['memory'][1]:.2f}x | "
              f"{'PASS' if lo >= 1.5 else 'MISS'} |")


if __name__ == "__main__":
    main()
