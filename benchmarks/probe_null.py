"""probe_refit + permutation null on cached embeddings: batched torch probes vs scikit-learn one probe at a time.

Synthetic cached embeddings (N x d, power-law spectrum ``lambda_i ~ i^-alpha`` in a random basis) with a 4-class
primary head and 5 metadata tasks of 2..6 classes whose labels are sampled from a noisy softmax of the embedding
(partly predictable). For each side, timed end to end:

* PCA projection (``fit_pca_projection``, default k rule) and projected features/primary head;
* per task: the real probe + ``B`` probes on permuted labels (the same permutations for both sides) and max |cos|
  against the primary head; a held-out probe (fit on 80 %, macro AUROC on 20 %).

Ours: ``permutation_null`` (one batched ``fit_linear_probes`` call per task, B + 1 probes) + one held-out fit.
scikit-learn: ``LogisticRegression(solver="lbfgs", class_weight="balanced")`` fitted B + 2 times per task. Penalty
mapping (same optimum): ours minimises ``sum_i w_i CE_i / S + l2/2 ||W||^2`` with ``S = sum_i w_i`` (= n for balanced
weights with every class present); sklearn minimises ``C sum_i w_i CE_i + 1/2 ||W||^2``, so ``C = 1/(l2 S)`` for a
multinomial head. For 2 classes sklearn fits one vector ``beta = w_1 - w_0``; the optimum of our 2-row head has
``w_0 = -w_1`` so ``||W||^2 = ||beta||^2 / 2`` and ``C = 2/(l2 S)``. Both sides stop on the same criterion:
max |gradient| of the mean objective below ``tol``. Macro AUROC is computed by the same function for both.

Usage: ``python benchmarks/probe_null.py [--alpha 1.5] [--permutations 100] [--repeats 1] [--skip-sklearn]``.
Writes ``benchmarks/results/probe_null.json`` (not with ``--skip-sklearn``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from wsca_lightning.wsc.engine import AnalysisSettings, analyze_embeddings
from wsca_lightning.wsc.null import permutation_null, permuted_labels
from wsca_lightning.wsc.probes import fit_linear_probes, macro_auroc, probe_scores
from wsca_lightning.wsc.projection import fit_pca_projection
from wsca_lightning.wsc.similarity import cosine_matrix

RESULTS = Path(__file__).parent / "results" / "probe_null.json"
N, D, NUM_PRIMARY = 5000, 256, 4
TASK_CLASSES = (2, 3, 4, 5, 6)
L2, TOL = 1e-2, 1e-5


def make_data(alpha: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Embeddings (N, D), primary head (4, D), metadata labels per task, and a fixed 80/20 split mask."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.arange(1, D + 1, dtype=torch.float64) ** -alpha
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    latent = torch.randn(N, D, generator=g, dtype=torch.float64) * spectrum.sqrt()
    emb = latent @ basis.T + torch.randn(D, generator=g, dtype=torch.float64)
    top = basis[:, :32]  # the label-relevant directions live among the leading components
    scale = spectrum[:32].sqrt().reciprocal()  # so every direction matters on the data's own scale

    def head(c: int, strength: float) -> torch.Tensor:
        return (torch.randn(c, 32, generator=g, dtype=torch.float64) * scale * strength) @ top.T

    primary = head(NUM_PRIMARY, 0.1)
    labels = []
    for t, c in enumerate(TASK_CLASSES):
        logits = (emb - emb.mean(0)) @ head(c, 0.25 + 0.1 * t).T
        gumbel = -torch.log(-torch.log(torch.rand(N, c, generator=g, dtype=torch.float64)))
        y = (logits + gumbel).argmax(dim=1)
        y[torch.rand(N, generator=g) < 0.02] = -1  # a few missing labels
        labels.append(y)
    train = torch.rand(N, generator=g) < 0.8
    return emb, primary, labels, train


def project(emb, primary):
    """The shared first step of both arms (timed in each): PCA fit, projected embeddings and primary head."""
    proj = fit_pca_projection(emb)
    return proj, proj.project_embeddings(emb), proj.project_weights(primary)


def run_ours(emb, primary, labels, train, num_perm):
    start = time.perf_counter()
    proj, feats, wp = project(emb, primary)
    tasks = []
    for t, (c, y) in enumerate(zip(TASK_CLASSES, labels)):
        res = permutation_null(feats, y, wp, c, num_permutations=num_perm, seed=t, l2=L2, tol=TOL)
        held = fit_linear_probes(feats[train], y[train], c, l2=L2, tol=TOL)
        auc = float(macro_auroc(probe_scores(held, feats[~train])[0], y[~train]))
        converged = int(res.fit.converged.sum()) + int(held.converged.sum())
        tasks.append({"classes": c, "observed": res.observed, "z": res.z, "p": res.p, "auroc": auc,
                      "converged": converged, "fits": num_perm + 2, "null": res.null})
    return time.perf_counter() - start, proj.k, tasks


def run_engine(emb, primary, labels, num_perm, deconfound):
    """The whole per-epoch engine (``analyze_embeddings``, probe_refit): projection, per task the probe and its null
    on the 75 % fit part, the held-out AUROC with a 200-resample bootstrap interval, the raw-space reference probe,
    and (``deconfound``) the reweighted probe with its own null."""
    primary_labels = ((emb - emb.mean(0)) @ primary.T).argmax(dim=1)
    start = time.perf_counter()
    analyze_embeddings(emb, primary, {f"task{t}": y for t, y in enumerate(labels)},
                       {f"task{t}": c for t, c in enumerate(TASK_CLASSES)}, primary_labels=primary_labels,
                       settings=AnalysisSettings(num_permutations=num_perm, l2=L2, tol=TOL, deconfound=deconfound))
    return time.perf_counter() - start


def run_sklearn(emb, primary, labels, train, num_perm):
    from sklearn.linear_model import LogisticRegression

    def fit(x, y, c):
        valid = y >= 0
        n = int(valid.sum())
        cc = (2.0 if c == 2 else 1.0) / (L2 * n)
        model = LogisticRegression(C=cc, class_weight="balanced", solver="lbfgs", max_iter=10_000, tol=TOL)
        model.fit(x[valid].numpy(), y[valid].numpy())
        return model, int(model.n_iter_.max()) < 10_000

    def rows(model):
        coef = torch.from_numpy(model.coef_)
        return torch.cat([-coef / 2, coef / 2]) if coef.shape[0] == 1 else coef

    start = time.perf_counter()
    proj, feats, wp = project(emb, primary)
    tasks = []
    for t, (c, y) in enumerate(zip(TASK_CLASSES, labels)):
        stacked = torch.cat([y.unsqueeze(0), permuted_labels(y, num_perm, seed=t)])
        stats, converged = [], 0
        for row in stacked:
            model, ok = fit(feats, row, c)
            converged += ok
            stats.append(float(cosine_matrix(wp, rows(model)).abs().max()))
        null = torch.tensor(stats[1:], dtype=torch.float64)
        model, ok = fit(feats[train], y[train], c)
        converged += ok
        proba = torch.from_numpy(model.predict_proba(feats[~train].numpy()))
        auc = float(macro_auroc(proba, y[~train]))
        tasks.append({"classes": c, "observed": stats[0], "auroc": auc, "converged": converged,
                      "fits": num_perm + 2, "null": null,
                      "p": (1 + int((null >= stats[0]).sum())) / (num_perm + 1)})
    return time.perf_counter() - start, proj.k, tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=1.5, help="spectrum exponent: lambda_i ~ i^-alpha")
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved ours/sklearn repeats (min time kept)")
    parser.add_argument("--skip-sklearn", action="store_true", help="time ours only; writes no JSON")
    args = parser.parse_args()
    sk_version = None
    if not args.skip_sklearn:
        try:
            import sklearn
        except ImportError:
            sys.exit("this benchmark compares against scikit-learn: pip install scikit-learn")
        sk_version = sklearn.__version__

    emb, primary, labels, train = make_data(args.alpha)
    # warm-up (thread pools, lazy init) outside the timings, for both sides
    small = (emb[:300], primary, [y[:300] for y in labels], train[:300])
    run_ours(*small, 2)
    if not args.skip_sklearn:
        run_sklearn(*small, 2)

    ours_times, sk_times = [], []
    for _ in range(args.repeats):
        t, k, ours = run_ours(emb, primary, labels, train, args.permutations)
        ours_times.append(t)
        if not args.skip_sklearn:
            t, _, sk = run_sklearn(emb, primary, labels, train, args.permutations)
            sk_times.append(t)
    ours_s = min(ours_times)
    engine_s = run_engine(emb, primary, labels, args.permutations, deconfound=False)
    engine_deconf_s = run_engine(emb, primary, labels, args.permutations, deconfound=True)
    print(f"engine (analyze_embeddings, probe_refit): {engine_s:.2f} s; with deconfounded probes and their null: "
          f"{engine_deconf_s:.2f} s")
    print(f"N={N} d={D} k={k} alpha={args.alpha} B={args.permutations} torch {torch.__version__} "
          f"threads={torch.get_num_threads()} cpus={os.cpu_count()}")
    if args.skip_sklearn:
        for r in ours:
            print(f"  C={r['classes']} auroc={r['auroc']:.4f} observed={r['observed']:.4f} p={r['p']:.3f} "
                  f"converged={r['converged']}/{r['fits']}")
        print(f"ours: {ours_s:.2f} s")
        return
    sk_s = min(sk_times)
    rows = []
    print(f"{'task':>6} {'C':>2} {'AUROC ours':>10} {'AUROC skl':>10} {'|diff|':>8} {'max|cos| ours':>13} "
          f"{'skl':>7} {'p ours':>7} {'p skl':>6} {'conv ours':>9} {'conv skl':>9}")
    for t, (a, b) in enumerate(zip(ours, sk)):
        null_diff = float((a["null"] - b["null"]).abs().max())
        row = {"task": t, "classes": a["classes"], "auroc_ours": a["auroc"], "auroc_sklearn": b["auroc"],
               "auroc_abs_diff": abs(a["auroc"] - b["auroc"]), "observed_ours": a["observed"],
               "observed_sklearn": b["observed"], "null_max_abs_diff": null_diff, "z_ours": a["z"],
               "p_ours": a["p"], "p_sklearn": b["p"], "converged_ours": a["converged"],
               "converged_sklearn": b["converged"], "fits": a["fits"]}
        rows.append(row)
        print(f"{t:>6} {a['classes']:>2} {a['auroc']:>10.4f} {b['auroc']:>10.4f} {row['auroc_abs_diff']:>8.1e} "
              f"{a['observed']:>13.4f} {b['observed']:>7.4f} {a['p']:>7.3f} {b['p']:>6.3f} "
              f"{a['converged']:>5}/{a['fits']} {b['converged']:>5}/{b['fits']}")
    ratio = sk_s / ours_s
    ok_auc = all(r["auroc_abs_diff"] <= 0.01 for r in rows)
    print(f"ours {ours_s:.2f} s | sklearn {sk_s:.2f} s | ratio {ratio:.1f}x | under 10 s: {ours_s < 10} | "
          f">= 5x: {ratio >= 5} | AUROC within 0.01: {ok_auc}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": {"os_cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "sklearn": sk_version, "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": {"N": N, "d": D, "k": k, "alpha": args.alpha, "permutations": args.permutations,
                     "task_classes": list(TASK_CLASSES), "l2": L2, "tol": TOL, "repeats": args.repeats,
                     "train_fraction": float(train.double().mean())},
        "seconds_ours": ours_s, "seconds_sklearn": sk_s, "seconds_engine": engine_s,
        "seconds_engine_with_deconfounded": engine_deconf_s, "all_seconds_ours": ours_times,
        "all_seconds_sklearn": sk_times, "ratio": ratio, "under_10s": ours_s < 10, "at_least_5x": ratio >= 5,
        "auroc_within_0.01": ok_auc, "tasks": rows,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
