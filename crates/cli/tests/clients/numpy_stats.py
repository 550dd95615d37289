"""Job statistics as NumPy computes them, to check idunno's against (run
by the tests in stats.rs and jobs.rs with the assets' virtualenv).

Usage:
  numpy_stats.py var VALUES_NPY
      the population variance (ddof 0) of the values.
  numpy_stats.py loss ROWS_NPY LABELS_NPY
      the mean cross-entropy of the rows against the labels (-1: none).
  numpy_stats.py model-loss MODEL_ONNX INPUTS_NPY LABELS_NPY
      the same over a model's outputs, run here on ONNX Runtime.

The loss rule is the one docs/jobs.md states: a row of values in [0, 1]
that sum to 1 within 1e-3 is probabilities, -ln(max(p, 1e-7)); any other
row is logits, softmax first. Prints one JSON document.
"""

import json
import sys

import numpy as np


def mean_loss(rows, labels):
    rows = rows.astype(np.float64).reshape(len(rows), -1)
    losses = []
    for row, label in zip(rows, labels):
        if label < 0 or label >= row.size or not np.all(np.isfinite(row)):
            continue
        if np.all((row >= 0) & (row <= 1)) and abs(row.sum() - 1) <= 1e-3:
            losses.append(-np.log(max(row[label], 1e-7)))
        else:
            shifted = row - row.max()
            log_softmax = shifted - np.log(np.exp(shifted).sum())
            losses.append(-log_softmax[label])
    return {"loss": float(np.mean(losses)) if losses else None, "count": len(losses)}


def main(argv):
    if argv[0] == "var":
        values = np.load(argv[1]).astype(np.float64)
        print(json.dumps({"var": float(np.var(values)), "count": int(values.size)}))
    elif argv[0] == "loss":
        print(json.dumps(mean_loss(np.load(argv[1]), np.load(argv[2]))))
    elif argv[0] == "model-loss":
        import onnxruntime as ort

        session = ort.InferenceSession(argv[1], providers=["CPUExecutionProvider"])
        inputs = np.load(argv[2])
        rows = session.run(None, {session.get_inputs()[0].name: inputs})[0]
        print(json.dumps(mean_loss(rows, np.load(argv[3]))))
    else:
        sys.exit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
