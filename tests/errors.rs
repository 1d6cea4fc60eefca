//! Malformed workflows give errors that name file:line:column and what to do.

mod common;
use common::*;

/// (name, workflow, expected location, expected words in the message)
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "yaml syntax",
        "steps:\n  a:\n    run: echo\n   b: x\n",
        "wf.yaml:4:4",
        "did not find expected key",
    ),
    (
        "unknown key",
        "steps:\n  a:\n    runn: echo hi\n",
        "wf.yaml:3:5",
        "unknown field `runn`",
    ),
    (
        "unknown top-level key",
        "stepz:\n  a:\n    run: echo\n",
        "wf.yaml:1:1",
        "unknown field `stepz`",
    ),
    (
        "unknown kind",
        "steps:\n  a:\n    uses: file.writ\n",
        "wf.yaml:3:11",
        "unknown step kind `file.writ`",
    ),
    (
        "bad type",
        "steps:\n  a:\n    run: echo\n    retries: many\n",
        "wf.yaml:4:14",
        "`retries` is how many times to retry a failed step: a whole number, 0 or more",
    ),
    (
        "negative retries",
        "steps:\n  a:\n    run: echo\n    retries: -3\n",
        "wf.yaml:4:14",
        "`retries` is how many times to retry a failed step: a whole number, 0 or more",
    ),
    (
        "empty file",
        "# nothing here yet\n",
        "wf.yaml:1:1",
        "the workflow is empty: it needs at least `name` and `steps`",
    ),
    (
        "params as a list",
        "params: [1, 2, 3]\nsteps:\n  a:\n    run: echo\n",
        "wf.yaml:1:9",
        "`params` is a map from parameter names to values",
    ),
    (
        "steps as a list",
        "name: x\nsteps:\n  - a\n  - b\n",
        "wf.yaml:3:3",
        "`steps` is a map from step names to steps",
    ),
    (
        "with as a list",
        "steps:\n  a:\n    uses: file.write\n    with: [x]\n",
        "wf.yaml:4:11",
        "`with` is a map of the kind's parameters",
    ),
    (
        "empty file parameter",
        "steps:\n  s:\n    uses: data.split\n    with: { input: \"\" }\n",
        "wf.yaml:4:20",
        "`input` is empty: it names a file or directory",
    ),
    (
        "alias bomb",
        "params:\n  l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n  l1: &l1 [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]\n  l2: &l2 [*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1]\n  l3: &l3 [*l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2]\n  l4: &l4 [*l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3]\n  l5: &l5 [*l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4]\n  l6: &l6 [*l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5]\n  l7: &l7 [*l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6, *l6]\nsteps:\n  a:\n    run: echo\n",
        "wf.yaml:7:47",
        "the workflow's aliases (`*name`) expand to too much",
    ),
    (
        "unknown step reference",
        "steps:\n  tok:\n    run: echo\n  b:\n    run: cat ${{ steps.tokk.out }}\n",
        "wf.yaml:5:10",
        "unknown step `tokk`",
    ),
    (
        "unknown output",
        "steps:\n  a:\n    uses: file.write\n    with: {content: x}\n  b:\n    run: cat ${{ steps.a.fil }}\n",
        "wf.yaml:6:10",
        "step `a` has no output `fil`",
    ),
    (
        "unknown param",
        "params: {n: 1}\nsteps:\n  a:\n    run: echo ${{ params.m }}\n",
        "wf.yaml:4:10",
        "unknown parameter `m`",
    ),
    (
        "bad expression",
        "steps:\n  a:\n    run: echo ${{ parms.x }}\n",
        "wf.yaml:3:10",
        "cannot read `${{ parms.x }}`",
    ),
    (
        "cycle",
        "steps:\n  a:\n    run: cat ${{ steps.c.out }}\n  b:\n    run: cat ${{ steps.a.out }}\n  c:\n    run: cat ${{ steps.b.out }}\n",
        "wf.yaml:2:3",
        "steps form a cycle: a → b → c → a",
    ),
    (
        "duplicate step",
        "steps:\n  a:\n    run: echo 1\n  a:\n    run: echo 2\n",
        "wf.yaml:4:3",
        "duplicate key `a`",
    ),
    (
        "missing input",
        "steps:\n  a:\n    run: cat data.txt\n    inputs: [data.txt]\n",
        "wf.yaml:4:14",
        "input `data.txt` not found",
    ),
    (
        "bad kind parameter",
        "steps:\n  a:\n    uses: file.write\n    with: {content: x, contnt: y}\n",
        "wf.yaml:4:24",
        "unknown field `contnt`",
    ),
    (
        "uses and run",
        "steps:\n  a:\n    uses: file.write\n    run: echo\n",
        "wf.yaml:4:10",
        "either `uses:` or `run:`",
    ),
    (
        "neither uses nor run",
        "steps:\n  a:\n    inputs: []\n",
        "wf.yaml:2:3",
        "needs `uses: KIND` or `run: COMMAND`",
    ),
    (
        "self reference",
        "steps:\n  a:\n    run: cat ${{ steps.a.out }}\n",
        "wf.yaml:3:10",
        "refers to itself",
    ),
    (
        "bad needs",
        "steps:\n  a:\n    run: echo\n    needs: [b]\n",
        "wf.yaml:4:13",
        "unknown step `b`",
    ),
    (
        "matrix outside foreach",
        "steps:\n  a:\n    run: echo ${{ matrix.k }}\n",
        "wf.yaml:3:10",
        "has no `foreach:`",
    ),
    (
        "foreach not a list",
        "steps:\n  a:\n    foreach: { k: abc }\n    run: echo\n",
        "wf.yaml:3:19",
        "must be a list",
    ),
    (
        "bad step name",
        "steps:\n  a.b:\n    run: echo\n",
        "wf.yaml:2:3",
        "step name `a.b`",
    ),
    (
        "empty expectation",
        "steps:\n  a:\n    run: echo\n    expect: { acc: {} }\n",
        "wf.yaml:4:20",
        "sets no bound",
    ),
    (
        "profile sets unknown param",
        "params: {lr: 1}\nprofiles:\n  full: {lrr: 2}\nsteps:\n  a:\n    run: echo\n",
        "wf.yaml:3:10",
        "not a parameter",
    ),
    (
        "unclosed expression",
        "steps:\n  a:\n    run: echo ${{ out\n",
        "wf.yaml:3:10",
        "without a closing",
    ),
];

#[test]
fn malformed_workflows_give_located_errors() {
    let p = Project::new();
    let mut failures = Vec::new();
    for (name, yaml, location, words) in CASES {
        p.write("wf.yaml", yaml);
        let out = p.dnaflow(&["validate", "wf.yaml"]);
        let t = text(&out);
        let ok = out.status.code() == Some(2)
            && t.contains(&format!("{location}: "))
            && t.contains(words)
            && !t.contains("panicked")
            && !t.contains("RUST_BACKTRACE");
        if !ok {
            failures.push(format!("--- {name} (want {location}: …{words}…)\n{t}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn did_you_mean_hints() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "steps:\n  tok:\n    run: echo\n  b:\n    run: cat ${{ steps.tokk.out }}\n    runn: x\n",
    );
    let t = text(&p.dnaflow(&["validate", "wf.yaml"]));
    assert!(t.contains("did you mean `run`?"), "{t}");
    p.write("wf.yaml", "steps:\n  a:\n    uses: file.writ\n");
    assert!(text(&p.dnaflow(&["validate", "wf.yaml"])).contains("did you mean `file.write`?"));
}

#[test]
fn several_problems_are_reported_together() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "steps:\n  a:\n    run: echo ${{ params.x }}\n  b:\n    uses: nope\n",
    );
    let t = text(&p.dnaflow(&["validate", "wf.yaml"]));
    assert!(t.contains("wf.yaml:3:10: unknown parameter `x`"), "{t}");
    assert!(t.contains("wf.yaml:5:11: unknown step kind `nope`"), "{t}");
    assert!(t.contains("2 problems found"), "{t}");
}

#[test]
fn command_line_mistakes_are_explained() {
    let p = Project::new();
    p.write(
        "wf.yaml",
        "params: {lr: 1}\nprofiles: {full: {lr: 2}}\nsteps:\n  a:\n    run: echo\n",
    );
    let t = text(&p.dnaflow(&["validate", "missing.yaml"]));
    assert!(t.contains("missing.yaml: cannot read workflow"), "{t}");
    let t = text(&p.dnaflow(&["run", "wf.yaml", "--profile", "ful"]));
    assert!(
        t.contains("no profile `ful`") && t.contains("profiles here: full"),
        "{t}"
    );
    let t = text(&p.dnaflow(&["run", "wf.yaml", "--set", "lrr=3"]));
    assert!(
        t.contains("`lrr` is not a parameter") && t.contains("did you mean `lr`?"),
        "{t}"
    );
}
