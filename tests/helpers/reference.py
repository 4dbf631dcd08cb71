"""Independent reference computations the tests check Evalsite's numbers against."""
from __future__ import annotations

import math

import numpy as np
from sklearn.linear_model import LogisticRegression


def logistic_elo(battles, extra_features=None) -> tuple[dict[str, float], np.ndarray]:
    """Bradley-Terry by FastChat's recipe: logistic regression on individual battles.

    ``battles`` holds ``(model_a, model_b, score)`` with score 1 (A won), 0 (B won) or 0.5
    (tie, entered as one win and one loss at half weight).  Optional ``extra_features``
    (one row per battle) are covariates fitted beside the models.  Returns ratings on
    the Elo scale centred on 1000, and the covariate coefficients in Elo.
    """
    models = sorted({b[0] for b in battles} | {b[1] for b in battles})
    idx = {m: i for i, m in enumerate(models)}
    k = 0 if extra_features is None else np.asarray(extra_features).shape[1]
    X, y, w = [], [], []
    for n, (a, b, score) in enumerate(battles):
        row = np.zeros(len(models) + k)
        row[idx[a]], row[idx[b]] = 1.0, -1.0
        if k:
            row[len(models):] = extra_features[n]
        if score == 0.5:
            X += [row, row]; y += [1, 0]; w += [0.5, 0.5]  # noqa: E702
        else:
            X.append(row); y.append(int(score == 1)); w.append(1.0)  # noqa: E702
    lr = LogisticRegression(fit_intercept=False, C=1e12, tol=1e-12, max_iter=10000)
    lr.fit(np.array(X), np.array(y), sample_weight=np.array(w))
    to_elo = 400 / math.log(10)
    elo = lr.coef_[0][: len(models)] * to_elo
    return dict(zip(models, elo - elo.mean() + 1000)), lr.coef_[0][len(models):] * to_elo
