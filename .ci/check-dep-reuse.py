#!/usr/bin/env python3
"""Fail if the test build recompiles a dependency that the run build already compiled.

Usage (CI):
  cargo build --locked --message-format=json                > run.jsonl
  cargo test  --locked --no-run --message-format=json       > test.jsonl   # what nextest builds
  python3 check_dep_reuse.py run.jsonl test.jsonl

Reads cargo's JSON messages with "reason": "compiler-artifact" and their fields
"package_id", "target" {"name", "kind"} and "fresh" (false = rustc ran in this invocation).
Workspace members (from `cargo metadata --no-deps`) are ignored; so are crates that only the
test build has (tempfile and its own new dependencies are compiled once, legitimately).
"""
import json, subprocess, sys

def artifacts(path):
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            m = json.loads(line)
            if m.get("reason") == "compiler-artifact":
                yield m

meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked", "--offline"]))
workspace = set(meta["workspace_members"])

run_log, test_log = sys.argv[1], sys.argv[2]
built_by_run = {(m["package_id"], m["target"]["name"]) for m in artifacts(run_log)}

rebuilt, new = [], []
for m in artifacts(test_log):
    if m["package_id"] in workspace or m["fresh"]:
        continue
    key = (m["package_id"], m["target"]["name"])
    name = m["package_id"].rsplit("#", 1)[-1]          # e.g. rustix@1.1.6
    label = f'{name} ({"/".join(m["target"]["kind"])})'
    (rebuilt if key in built_by_run else new).append(label)

if new:
    print(f"test-only crates compiled ({len(new)}): " + ", ".join(sorted(set(new))))
if rebuilt:
    print(f"ERROR: the test build recompiled {len(rebuilt)} dependencies the run build "
          f"had already compiled (feature unification with dev-dependencies?):")
    for r in sorted(set(rebuilt)):
        print("  ", r)
    print("Compare: cargo tree -e normal,build -f '{p} {f}'  vs  cargo tree -e normal,build,dev -f '{p} {f}'")
    sys.exit(1)
print("ok: the test build reused every dependency of the run build")
