#!/usr/bin/env python3
"""Reference fits for src/linear and the baseline kinds: scikit-learn on small fixed data.

Writes tests/fixtures/baselines/reference.json, which the Rust unit tests in src/linear/ and
src/steps/baseline.rs load and compare against within 1e-6 (coefficients, intercepts,
probabilities, predictions). Run from anywhere:

    python3 scripts/make_baseline_reference.py

Every input is written into the JSON beside what sklearn made of it, so the Rust side needs
neither Python nor this script.

Conventions the Rust side follows (and this script spells out):
- logistic regression: LogisticRegression(C=1/l2, solver="lbfgs") with a tight tolerance;
  two classes give one weight row (the second class against the first), more give one row
  per class (multinomial). The intercept is not penalised.
- ridge: Ridge(alpha), intercept fitted and not penalised.
- features of a sequence (uppercased, U read as T): `onehot` is 5 columns per position
  (A, C, G, T, N; any other letter counts as N) over the longest training sequence, shorter
  sequences padded with zeros and longer ones cut; `kmer` is the count of each ACGT k-mer
  (lexicographic order, k-mers containing another letter skipped) divided by the sequence
  length.
- `standardize`: each feature centred and scaled on the training rows (StandardScaler:
  population variance, a constant feature keeps scale 1), test rows with the same numbers.
"""

import itertools
import json
import os
import subprocess
import sys

try:
    import numpy as np
    import sklearn
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "scikit-learn"])
    import numpy as np
    import sklearn

from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "baselines", "reference.json")


def logistic(name, x, y, l2, x_test):
    m = LogisticRegression(C=1.0 / l2, tol=1e-12, max_iter=100_000).fit(x, y)
    return {
        "name": name,
        "x": x.tolist(),
        "y": [int(v) for v in y],
        "classes": int(len(np.unique(y))),
        "l2": l2,
        "x_test": x_test.tolist(),
        "coef": m.coef_.tolist(),
        "intercept": m.intercept_.tolist(),
        "probabilities": m.predict_proba(x_test).tolist(),
    }


def ridge(name, x, y, alpha, x_test):
    m = Ridge(alpha=alpha).fit(x, y)
    return {
        "name": name,
        "x": x.tolist(),
        "y": y.tolist(),
        "alpha": alpha,
        "x_test": x_test.tolist(),
        "coef": m.coef_.tolist(),
        "intercept": float(m.intercept_),
        "predictions": m.predict(x_test).tolist(),
    }


def onehot(seqs, width):
    out = np.zeros((len(seqs), width * 5))
    for i, s in enumerate(seqs):
        for j, b in enumerate(s.upper().replace("U", "T")[:width]):
            out[i, j * 5 + "ACGTN".find(b) if b in "ACGT" else j * 5 + 4] = 1.0
    return out


def kmer(seqs, k):
    index = {"".join(w): i for i, w in enumerate(itertools.product("ACGT", repeat=k))}
    out = np.zeros((len(seqs), 4**k))
    for i, s in enumerate(seqs):
        s = s.upper().replace("U", "T")
        for j in range(len(s) - k + 1):
            w = s[j : j + k]
            if w in index:
                out[i, index[w]] += 1.0
        if len(s):
            out[i] /= len(s)
    return out


def main():
    rng = np.random.RandomState(7)
    cases = {"logistic": [], "ridge": [], "features": [], "sequences": []}

    # Two classes, separable: the penalty alone keeps the weights finite.
    x = np.array([[0.0, 1.0], [1.0, 0.5], [2.0, 2.0], [3.0, 1.5], [4.0, 3.0], [5.0, 2.5]])
    y = np.array([0, 0, 0, 1, 1, 1])
    cases["logistic"].append(logistic("binary_separable", x, y, 1.0, x))
    cases["logistic"].append(logistic("binary_separable_weak_penalty", x, y, 0.01, x))
    # Two classes, overlapping.
    x = rng.normal(size=(40, 3))
    y = (x @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=40) > 0.3).astype(int)
    cases["logistic"].append(logistic("binary_overlapping", x, y, 1.0, rng.normal(size=(5, 3))))
    # Three classes, overlapping (multinomial), strong and weak penalty.
    x = rng.normal(size=(60, 4))
    y = np.argmax(x[:, :3] + 0.8 * rng.normal(size=(60, 3)), axis=1)
    xt = rng.normal(size=(6, 4))
    cases["logistic"].append(logistic("three_classes", x, y, 1.0, xt))
    cases["logistic"].append(logistic("three_classes_strong_penalty", x, y, 20.0, xt))
    # Three classes, separable.
    x = np.array([[0.0, 0.0], [0.2, 0.1], [3.0, 0.0], [3.1, 0.3], [0.0, 3.0], [0.3, 3.2]])
    y = np.array([0, 0, 1, 1, 2, 2])
    cases["logistic"].append(logistic("three_classes_separable", x, y, 1.0, x))

    # Ridge: more rows than features (primal), more features than rows (dual).
    x = rng.normal(size=(30, 4))
    y = x @ np.array([1.5, -0.5, 0.0, 2.0]) + 3.0 + 0.1 * rng.normal(size=30)
    cases["ridge"].append(ridge("tall", x, y, 1.0, rng.normal(size=(4, 4))))
    cases["ridge"].append(ridge("tall_strong", x, y, 100.0, rng.normal(size=(4, 4))))
    x = rng.normal(size=(6, 10))
    y = rng.normal(size=6) * 2.0 - 1.0
    cases["ridge"].append(ridge("wide", x, y, 0.5, rng.normal(size=(3, 10))))
    # Collinear one-hot columns (every position sums to 1): singular without the penalty.
    x = onehot(["ACGT", "AAGT", "TCGA", "GGGG", "ACGA", "CCGT"], 4)
    y = np.array([1.0, 2.0, -1.0, 0.5, 1.5, 2.5])
    cases["ridge"].append(ridge("onehot_collinear", x, y, 1.0, x))

    # Features and whole baselines on sequences (the Rust featurisers must agree).
    train = ["ACGTAC", "acgtnA", "TTGCA", "GGGAUC", "CATTAG", "ACGRTA", "TTTTTT", "GCGCGCG"]
    labels = ["b", "a", "c", "a", "b", "c", "a", "b"]
    targets = [1.0, -0.5, 2.0, 0.0, 1.5, 0.25, -1.0, 3.0]
    test = ["ACG", "TTGCAAAA", "NNNNNN", "GGCAT"]
    width = max(len(s) for s in train)
    for spec, fx, standardize in [
        ("onehot", lambda s: onehot(s, width), False),
        ("kmer2", lambda s: kmer(s, 2), False),
        ("kmer2_standardized", lambda s: kmer(s, 2), True),
    ]:
        x_train, x_test = fx(train), fx(test)
        if standardize:
            scaler = StandardScaler().fit(x_train)
            x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
        else:
            cases["features"].append(
                {"features": spec, "sequences": test, "width": width, "x": x_test.tolist()}
            )
        classes = sorted(set(labels))
        y = np.array([classes.index(v) for v in labels])
        m = LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000).fit(x_train, y)
        r = Ridge(alpha=1.0).fit(x_train, np.array(targets))
        cases["sequences"].append(
            {
                "features": spec,
                "train": train,
                "labels": labels,
                "targets": targets,
                "test": test,
                "classes": classes,
                "probabilities": m.predict_proba(x_test).tolist(),
                "ridge_predictions": r.predict(x_test).tolist(),
            }
        )

    doc = {
        "generator": "scripts/make_baseline_reference.py",
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        **cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
