#!/usr/bin/env python3
"""Compare training runs of one model on different numbers of ranks (chapter 4.2).

    python3 scripts/ranks_compare.py --out DIR --run "1 rank=STEP_OUT" --run "2 ranks=STEP_OUT"
        [--memory "4 ranks=STEP_OUT"]... [--tol 1e-5] [--block 1]

Each STEP_OUT is a `model.pretrain` (or `model.finetune`) output folder: its `history.csv`
(step, loss, …) and `metrics.json` (`rank_state`: per rank, the parameters, gradients and
AdamW moments it held, in MiB). The first `--run` is the reference; every other `--run` trained
the same model with the same global batch and seed, and its loss curve is compared with the
reference's step by step (with `--block N`, the means of consecutive blocks of N steps: over
thousands of bf16 steps two runs that differ only by rounding drift apart step by step, and
agree on average). A `--memory` run only adds its row to the memory table (a few steps
on more ranks).

Writes into DIR:

- `curves.svg`: every `--run`'s loss curve in one plot (the reference solid, the others
  dashed over it), and below it the relative difference to the reference at each step, on a
  log scale (a difference of exactly 0 is drawn at the bottom edge, 1e-12).
- `memory.md`: one Markdown table, a row per rank of every run: parameters, gradients,
  moments (MiB), and the moments as a share of the reference's.
- `metrics.json`:
  - `final_loss`, `final_loss_rel_diff` (the largest over the compared runs of
    |last loss − reference's last loss| / reference's), `max_loss_rel_diff` (the same, the
    largest over every step, or block), `loss_diff_over_tol` (that / `--tol`: at most 1 when
    the curves agree as asked), `compared_steps`;
  - `loss_drop`: the reference's first loss less the mean of its last 5 (it learned);
  - under each compared or memory run's label made a name (`4 ranks, ZeRO-2` →
    `4_ranks_zero_2`), the ZeRO figures that hold for any number of ranks N:
    `moments_total` (all ranks' moments together / the reference's: 1 when no rank keeps
    another's, N when every rank keeps all), `moments_balance` (the largest rank's moments /
    (the reference's / N): 1 is an exact 1/N split; whole tensors make it a little more), and
    the same two for gradients; and at the top level the worst of each over the compared
    (`--run`) runs;
  - `table`: the rows of `memory.md`.

Only the Python standard library: the chapter runs wherever dnaflow's CI runs.
"""

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from xml.sax.saxutils import escape

COLOURS = ["#1f5fa8", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c"]
FLOOR = 1e-12  # where an exact 0 difference is drawn on the log axis


def fail(message):
    sys.exit(f"ranks_compare: {message}")


def labelled(spec):
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        fail(f"`{spec}` is not LABEL=DIR")
    return label, Path(path)


def read_history(folder):
    """[(step, loss)] from a training step's history.csv."""
    path = folder / "history.csv"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        fail(f"{path}: {e}")
    if not rows or "step" not in rows[0] or "loss" not in rows[0]:
        fail(f"{path}: no `step,loss` rows")
    return [(int(r["step"]), float(r["loss"])) for r in rows]


def read_state(folder):
    """[(parameters, gradients, moments) MiB per rank] from metrics.json's `rank_state`."""
    path = folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")
    state = metrics.get("rank_state")
    if not state:
        fail(f"{path}: no `rank_state` (a training step of this dnaflow writes one)")
    return [(r["parameters_mib"], r["gradients_mib"], r["moments_mib"]) for r in state]


def slug(label):
    """A metric name for a run's label: `4 ranks, ZeRO-2` → `4_ranks_zero_2`."""
    return "_".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def nice_ticks(lo, hi, n=5):
    """About n round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def fmt(v):
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.0e}"


def draw(path, runs, diffs):
    """runs: [(label, [(step, loss)])]; diffs: [(label, [(step, rel diff)])]."""
    w, h = 800, 560
    left, right = 72, 24
    top_box = (48, 330)  # loss panel: y from, y to
    low_box = (392, 500)  # difference panel
    steps = [s for _, pts in runs for s, _ in pts]
    x0, x1 = min(steps), max(steps)
    if x1 == x0:
        x1 = x0 + 1
    losses = [v for _, pts in runs for _, v in pts]
    pad = (max(losses) - min(losses)) * 0.05 or 0.05
    y0, y1 = min(losses) - pad, max(losses) + pad

    def sx(s):
        return left + (s - x0) / (x1 - x0) * (w - left - right)

    def sy(v, box, lo, hi):
        return box[1] - (v - lo) / (hi - lo) * (box[1] - box[0])

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="24" text-anchor="middle" font-size="17">'
           'Training loss: the same model and batches on 1 and on more ranks</text>']

    def axes(box, yticks, ylabel, ypos, log=False):
        out.append(f'<rect x="{left}" y="{box[0]}" width="{w - left - right}" '
                   f'height="{box[1] - box[0]}" fill="none" stroke="#444"/>')
        for t in yticks:
            y = ypos(t)
            out.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" '
                       'stroke="#e5e5e5"/>')
            label = f"1e{int(t)}" if log else fmt(t)
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        for t in nice_ticks(x0, x1, 8):
            if x0 <= t <= x1:
                x = sx(t)
                out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{box[0]}" y2="{box[1]}" '
                           'stroke="#eee"/>')
                out.append(f'<text x="{x:.1f}" y="{box[1] + 16}" text-anchor="middle">'
                           f'{fmt(t)}</text>')
        mid = (box[0] + box[1]) / 2
        out.append(f'<text x="16" y="{mid}" text-anchor="middle" '
                   f'transform="rotate(-90 16 {mid})">{escape(ylabel)}</text>')

    axes(top_box, [t for t in nice_ticks(y0, y1) if y0 <= t <= y1], "loss",
         lambda v: sy(v, top_box, y0, y1))
    for i, (label, pts) in enumerate(runs):
        colour = COLOURS[i % len(COLOURS)]
        dash = "" if i == 0 else ' stroke-dasharray="7 5"'
        width = 3.5 if i == 0 else 1.8
        line = " ".join(f"{sx(s):.1f},{sy(v, top_box, y0, y1):.1f}" for s, v in pts)
        out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" '
                   f'stroke-width="{width}"{dash}/>')
        ly = top_box[0] + 18 + 18 * i
        lx = w - right - 200
        out.append(f'<line x1="{lx}" x2="{lx + 28}" y1="{ly - 4}" y2="{ly - 4}" '
                   f'stroke="{colour}" stroke-width="{width}"{dash}/>')
        out.append(f'<text x="{lx + 34}" y="{ly}">{escape(label)}</text>')

    # The difference panel: log10 of the relative difference at each step.
    logs = [math.log10(max(d, FLOOR)) for _, pts in diffs for _, d in pts] or [-12.0]
    lo = math.floor(min(logs + [-9.0]))
    hi = math.ceil(max(logs + [-5.0]))
    axes(low_box, list(range(lo, hi + 1, max(1, (hi - lo) // 4))),
         "rel. difference", lambda v: sy(v, low_box, lo, hi), log=True)
    for i, (label, pts) in enumerate(diffs):
        colour = COLOURS[(i + 1) % len(COLOURS)]
        line = " ".join(f"{sx(s):.1f},{sy(math.log10(max(d, FLOOR)), low_box, lo, hi):.1f}"
                        for s, d in pts)
        out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    out.append(f'<text x="{left}" y="{low_box[0] - 8}">|loss − 1 rank\'s loss| / 1 rank\'s '
               'loss, per step (log scale; exactly equal: on the bottom edge)</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 24}" text-anchor="middle">'
               'optimizer step</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def zero_figures(ref_state, state):
    """(moments_total, moments_balance, gradients_total, gradients_balance) of a run of N
    ranks against the reference's one rank (its totals are the whole model's)."""
    n = len(state)
    ref_g = sum(r[1] for r in ref_state)
    ref_m = sum(r[2] for r in ref_state)
    grads = [r[1] for r in state]
    moments = [r[2] for r in state]
    return (sum(moments) / ref_m, max(moments) / (ref_m / n),
            sum(grads) / ref_g, max(grads) / (ref_g / n))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--run", action="append", default=[], metavar="LABEL=DIR")
    ap.add_argument("--memory", action="append", default=[], metavar="LABEL=DIR")
    ap.add_argument("--tol", type=float, default=1e-5,
                    help="relative difference the curves may have (loss_diff_over_tol = 1)")
    ap.add_argument("--block", type=int, default=1,
                    help="compare the means of blocks of this many steps (1: every step)")
    args = ap.parse_args()
    if len(args.run) < 2:
        fail("give the reference and at least one run to compare: two --run")
    runs = [labelled(s) for s in args.run]
    memory = [labelled(s) for s in args.memory]
    histories = [(label, read_history(d)) for label, d in runs]
    states = {label: read_state(d) for label, d in runs + memory}
    ref_label, ref = histories[0]
    if len(states[ref_label]) != 1:
        fail(f"the reference `{ref_label}` ran on {len(states[ref_label])} ranks; give the "
             "one-rank run first")
    ref_by_step = dict(ref)

    metrics = {"final_loss": {}, "compared_steps": len(ref)}
    diffs, final_worst, step_worst = [], 0.0, 0.0
    for label, pts in histories:
        metrics["final_loss"][label] = pts[-1][1]
        if label == ref_label:
            continue
        steps = [s for s, _ in pts]
        if steps != [s for s, _ in ref]:
            fail(f"`{label}` logged steps {steps[0]}…{steps[-1]} ({len(steps)}), the reference "
                 f"{ref[0][0]}…{ref[-1][0]} ({len(ref)}): train both for the same steps")
        d = [(s, rel(v, ref_by_step[s])) for s, v in pts]
        diffs.append((label, d))
        final_worst = max(final_worst, d[-1][1])
        b = max(1, args.block)
        for i in range(0, len(pts), b):
            ours = [v for _, v in pts[i : i + b]]
            theirs = [v for _, v in ref[i : i + b]]
            step_worst = max(step_worst, rel(sum(ours) / len(ours), sum(theirs) / len(theirs)))
    metrics["final_loss_rel_diff"] = final_worst
    metrics["max_loss_rel_diff"] = step_worst
    metrics["loss_diff_over_tol"] = step_worst / args.tol
    metrics["tol"], metrics["block"] = args.tol, args.block
    tail = [v for _, v in ref[-5:]]
    metrics["loss_drop"] = ref[0][1] - sum(tail) / len(tail)

    names = ("moments_total", "moments_balance", "gradients_total", "gradients_balance")
    worst = None
    for label, _ in runs[1:] + memory:
        figs = zero_figures(states[ref_label], states[label])
        metrics[slug(label)] = dict(zip(names, figs))
        if (label, _) in runs[1:]:
            worst = figs if worst is None else tuple(max(a, b) for a, b in zip(worst, figs))
    metrics.update(dict(zip(names, worst)))

    ref_m = states[ref_label][0][2]
    table = []
    lines = ["| run | rank | parameters MiB | gradients MiB | moments MiB | moments / 1 rank's |",
             "|---|---|---|---|---|---|"]
    for label, _ in runs + memory:
        for r, (p, g, m) in enumerate(states[label]):
            table.append({"run": label, "rank": r, "parameters_mib": p, "gradients_mib": g,
                          "moments_mib": m})
            lines.append(f"| {label} | {r} | {p:.2f} | {g:.2f} | {m:.2f} | {m / ref_m:.2f} |")
    metrics["table"] = table

    args.out.mkdir(parents=True, exist_ok=True)
    draw(args.out / "curves.svg", histories, diffs)
    (args.out / "memory.md").write_text("\n".join(lines) + "\n")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print("\n".join(lines))
    print(f"largest relative loss difference over {len(ref)} steps: {step_worst:.3g} "
          f"(last step: {final_worst:.3g})")


if __name__ == "__main__":
    main()
