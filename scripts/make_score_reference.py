#!/usr/bin/env python3
"""Reference scores for src/score: scikit-learn and SciPy on fixed vectors.

Writes tests/fixtures/scores/reference.json, which the Rust unit tests in src/score/ load and
compare against within 1e-9. Run from anywhere:

    python3 scripts/make_score_reference.py

Every vector is written into the JSON next to what sklearn/scipy made of it, so the Rust side
needs neither Python nor this script. NaN (a score sklearn or scipy cannot define) is written
as null, which is what dnaflow reports for it.

Conventions the Rust side follows (and this script spells out):
- classes are the sorted union of the true labels, the predicted labels and the classes that
  have a probability column; precision/recall/F1/confusion use them as sklearn's `labels=`.
- with two classes, the positive class is the later one in sorted order (sklearn's pos_label=1
  for 0/1 labels); a class without a probability column gets 1 - the other's.
- AUROC/AUPRC are one-vs-rest per class: roc_auc_score and average_precision_score of
  (y_true == c) against that class's probability. With two classes the headline is the positive
  class's; with more, the unweighted mean (null when any class's AUROC is null, as sklearn's
  nan propagates).
"""

import json
import re
import os
import subprocess
import sys
import warnings

try:
    import numpy as np
    import scipy
    import sklearn
except ImportError:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "scikit-learn", "scipy"])
    import numpy as np
    import scipy
    import sklearn

from scipy import stats
from sklearn import metrics

warnings.simplefilter("ignore")  # the undefined cases warn; their nan is what we record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "scores", "reference.json")


def num(x):
    """A float for JSON, None for nan."""
    x = float(x)
    return None if np.isnan(x) else x


def probability_rows(rng, truth, k, boost):
    """Rows of k probabilities in hundredths (so that ties happen) summing to one, the true
    class's raised by `boost` (a model better than chance)."""
    p = rng.dirichlet(np.ones(k), size=len(truth))
    p[np.arange(len(truth)), truth] += boost
    cents = np.floor(p / p.sum(axis=1, keepdims=True) * 100).astype(int)
    cents[:, -1] = 100 - cents[:, :-1].sum(axis=1)
    return cents / 100


checked_natively = []


def classification_case(name, y_true, y_pred, probs=None):
    """probs: {class: [p per row]} or None."""
    y_true = np.array(y_true, dtype=object)
    y_pred = np.array(y_pred, dtype=object)
    classes = sorted(set(y_true) | set(y_pred) | set(probs or {}))
    per_p, per_r, per_f, per_s = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0, average=None
    )
    mp, mr, mf, _ = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0, average="macro"
    )
    if not probs:
        # Without probability columns the classes are exactly sklearn's default labels.
        d = metrics.precision_recall_fscore_support(y_true, y_pred, zero_division=0, average="macro")
        assert np.allclose(d[:3], (mp, mr, mf), rtol=0, atol=0)
    expected = {
        "classes": classes,
        "accuracy": num(metrics.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": num(metrics.balanced_accuracy_score(y_true, y_pred)),
        "precision_macro": num(mp),
        "recall_macro": num(mr),
        "f1_macro": num(mf),
        "mcc": num(metrics.matthews_corrcoef(y_true, y_pred)),
        "confusion": metrics.confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "per_class": {
            c: {
                "precision": num(per_p[i]),
                "recall": num(per_r[i]),
                "f1": num(per_f[i]),
                "support": int(per_s[i]),
            }
            for i, c in enumerate(classes)
        },
    }
    if probs:
        def score_of(c):
            if c in probs:
                return np.array(probs[c], dtype=float)
            assert len(classes) == 2, "more than two classes need a column each"
            other = classes[1 - classes.index(c)]
            return 1.0 - np.array(probs[other], dtype=float)

        aurocs, auprcs = [], []
        for c in classes:
            truth = (y_true == c).astype(int)
            s = score_of(c)
            auroc = num(metrics.roc_auc_score(truth, s)) if 0 < truth.sum() < len(truth) else None
            auprc = num(metrics.average_precision_score(truth, s))
            expected["per_class"][c]["auroc"] = auroc
            expected["per_class"][c]["auprc"] = auprc
            aurocs.append(auroc)
            auprcs.append(auprc)
        if len(classes) == 2:
            pos = classes[1]
            expected["positive"] = pos
            expected["auroc"] = expected["per_class"][pos]["auroc"]
            expected["auprc"] = expected["per_class"][pos]["auprc"]
        else:
            expected["auroc"] = None if None in aurocs else float(np.mean(aurocs))
            expected["auprc"] = float(np.mean(auprcs))
            if set(classes) == set(y_true):
                # sklearn's own multiclass one-vs-rest gives the same numbers.
                matrix = np.column_stack([score_of(c) for c in classes])
                if np.allclose(matrix.sum(axis=1), 1):  # sklearn's multiclass check
                    native = metrics.roc_auc_score(y_true, matrix, multi_class="ovr", labels=classes)
                    assert abs(native - expected["auroc"]) < 1e-12, (name, native, expected["auroc"])
                    checked_natively.append(name)
                ap = metrics.average_precision_score(y_true, matrix, average="macro")
                assert abs(ap - expected["auprc"]) < 1e-12, (name, ap, expected["auprc"])
    return {
        "name": name,
        "y_true": list(y_true),
        "y_pred": list(y_pred),
        "probs": {c: [float(v) for v in p] for c, p in probs.items()} if probs else None,
        "expected": expected,
    }


def regression_case(name, y_true, y_pred):
    y_true = np.array(y_true, dtype=float)
    y_pred = np.array(y_pred, dtype=float)
    n = len(y_true)
    return {
        "name": name,
        "y_true": y_true.tolist(),
        "y_pred": y_pred.tolist(),
        "expected": {
            "mse": num(metrics.mean_squared_error(y_true, y_pred)),
            "rmse": num(metrics.root_mean_squared_error(y_true, y_pred)),
            "mae": num(metrics.mean_absolute_error(y_true, y_pred)),
            "pearson": num(stats.pearsonr(y_true, y_pred).statistic) if n >= 2 else None,
            "spearman": num(stats.spearmanr(y_true, y_pred).statistic) if n >= 2 else None,
            "r2": num(metrics.r2_score(y_true, y_pred)),
        },
    }


def main():
    rng = np.random.default_rng(20240509)
    cls = []

    # Binary, 0/1 labels, both probability columns, a few ties.
    n = 30
    y = rng.integers(0, 2, n)
    p1 = np.clip(np.round(0.35 + 0.3 * y + rng.normal(0, 0.22, n), 2), 0, 1)
    yt = [str(v) for v in y]
    yp = [str(int(v >= 0.5)) for v in p1]
    cls.append(classification_case("binary", yt, yp, {"0": (1 - p1).tolist(), "1": p1.tolist()}))

    # Binary with only the positive class's column and heavy ties (one decimal).
    p1t = np.round(p1, 1)
    cls.append(classification_case("binary_ties_positive_column_only", yt, [str(int(v >= 0.5)) for v in p1t], {"1": p1t.tolist()}))

    # Binary with only the negative class's column.
    cls.append(classification_case("binary_negative_column_only", yt, yp, {"0": np.round(1 - p1, 2).tolist()}))

    # Binary without probabilities.
    cls.append(classification_case("binary_no_probabilities", yt, yp))

    # Three classes (the splice-junction task's), probabilities rounded so that ties occur.
    names = ["acceptor", "donor", "neither"]
    n = 36
    y3 = rng.integers(0, 3, n)
    p = probability_rows(rng, y3, 3, 0.4)
    yt3 = [names[v] for v in y3]
    yp3 = [names[v] for v in p.argmax(axis=1)]
    cls.append(classification_case("three_classes", yt3, yp3, {c: p[:, i].tolist() for i, c in enumerate(names)}))
    cls.append(classification_case("three_classes_no_probabilities", yt3, yp3))

    # Ties everywhere: probabilities on a coarse grid.
    pc = np.round(p * 4) / 4
    cls.append(classification_case("three_classes_coarse_ties", yt3, yp3, {c: pc[:, i].tolist() for i, c in enumerate(names)}))

    # A class absent from y_true: predicted sometimes and it has a probability column.
    n = 20
    ya = rng.integers(0, 2, n)
    pa = probability_rows(rng, ya, 3, 0.3)
    abc = ["a", "b", "c"]
    cls.append(classification_case("class_absent_from_truth", [abc[v] for v in ya], [abc[v] for v in pa.argmax(axis=1)], {c: pa[:, i].tolist() for i, c in enumerate(abc)}))
    # ... and without probabilities (precision of the absent class: zero_division=0).
    cls.append(classification_case("class_absent_from_truth_no_probabilities", [abc[v] for v in ya], [abc[v] for v in pa.argmax(axis=1)]))
    # A class in y_true that is never predicted.
    cls.append(classification_case("class_never_predicted", ["x", "y", "z", "x", "y", "z", "x"], ["x", "y", "y", "x", "x", "y", "x"]))

    # Constant predictions and constant probabilities.
    n = 12
    yc = [str(v) for v in rng.integers(0, 2, n)]
    cls.append(classification_case("constant_predictions", yc, ["1"] * n, {"1": [0.7] * n}))
    # Only one class in y_true: AUROC undefined (null), average precision 1 (no negatives).
    cls.append(classification_case("one_class_in_truth", ["1"] * 6, ["1", "0", "1", "1", "0", "1"], {"1": [0.9, 0.2, 0.8, 0.6, 0.4, 0.9]}))
    # Perfect and perfectly wrong.
    cls.append(classification_case("perfect", ["0", "1", "1", "0"], ["0", "1", "1", "0"], {"1": [0.1, 0.9, 0.8, 0.3]}))
    cls.append(classification_case("all_wrong", ["0", "1", "1", "0"], ["1", "0", "0", "1"], {"1": [0.9, 0.1, 0.2, 0.7]}))
    # Four classes, one of them only in the probability columns.
    n = 16
    y4 = rng.integers(0, 3, n)
    p4 = probability_rows(rng, y4, 4, 0.0)
    cls.append(classification_case("class_only_in_probabilities", [str(v) for v in y4], [str(v) for v in p4[:, :3].argmax(axis=1)], {str(i): p4[:, i].tolist() for i in range(4)}))

    reg = []
    n = 25
    x = np.round(rng.normal(-20, 6, n), 2)
    reg.append(regression_case("basic", x, np.round(x * 0.8 + rng.normal(0, 3, n), 2)))
    # Ties in both vectors (spearman uses average ranks).
    xt = np.round(rng.normal(0, 2, n))
    reg.append(regression_case("ties", xt, np.round(xt + rng.normal(0, 1.5, n))))
    reg.append(regression_case("constant_prediction", x, [2.5] * n))
    reg.append(regression_case("constant_truth", [3.0] * 8, [3.0, 2.0, 4.0, 3.5, 3.0, 1.0, 3.0, 2.5]))
    reg.append(regression_case("constant_both_equal", [3.0] * 5, [3.0] * 5))
    reg.append(regression_case("perfect", x, x))
    reg.append(regression_case("anticorrelated", [1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 8.0, 8.0, 3.0, -1.0]))
    reg.append(regression_case("two_rows", [1.0, 2.0], [1.5, 1.0]))
    reg.append(regression_case("one_row", [1.0], [2.0]))

    # numpy's default (linear) percentile, which the bootstrap interval uses.
    pct = []
    for values in ([4.0], [3.0, 1.0], [5.0, 1.0, 4.0, 2.0, 3.0, 9.0, -1.0], rng.normal(size=1000).tolist()):
        lo, hi = np.percentile(values, [2.5, 97.5])
        pct.append({"values": [float(v) for v in values], "p2_5": float(lo), "p97_5": float(hi)})

    ref = {
        "generated_by": "scripts/make_score_reference.py",
        "sklearn": sklearn.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "classification": cls,
        "regression": reg,
        "percentile": pct,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    text = json.dumps(ref, indent=1)
    # Lists of numbers or labels on one line each: a reviewable file.
    text = re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    with open(OUT, "w") as f:
        f.write(text + "\n")
    print(f"sklearn's own multiclass roc_auc_score agreed on: {', '.join(checked_natively) or 'none'}")
    print(f"wrote {os.path.relpath(OUT, ROOT)}: {len(cls)} classification, {len(reg)} regression, {len(pct)} percentile cases")


if __name__ == "__main__":
    main()
