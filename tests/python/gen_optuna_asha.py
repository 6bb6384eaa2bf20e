"""Writes tests/data/optuna_asha.json: sequences of intermediate values (trials reporting epoch by
epoch, interleaved in random orders, ties and NaNs among them) and the decisions Optuna's
SuccessiveHalvingPruner makes on them (min_resource = grace, reduction_factor, no
min_early_stopping_rate, no bootstrap count): for each report at a rung epoch, whether the trial
is pruned. The tuner's successive halving replays the sequences in its unit test
(tuner/src/asha.rs) and must decide the same; test_tuning.py checks that the file is still what
Optuna says.

    .cache/venv/bin/python tests/python/gen_optuna_asha.py > tests/data/optuna_asha.json
"""
import json
import math
import random

import optuna


def sequence(rng: random.Random, trials: int, max_epochs: int) -> list:
    """Reports (trial, epoch, value): each trial's epochs in order, trials interleaved; a trial
    stops reporting once pruned (decided below), so this is the order in which they would
    report, cut later."""
    cursors = {t: 1 for t in range(trials)}
    out = []
    while cursors:
        t = rng.choice(sorted(cursors))
        e = cursors[t]
        value = round(rng.random() * 0.5 + 0.05 * e, 2)  # rounded: ties happen
        if rng.random() < 0.03:
            value = float("nan")
        out.append((t, e, value))
        cursors[t] += 1
        if cursors[t] > max_epochs:
            del cursors[t]
    return out


def decide(reports, grace: int, reduction: int) -> list:
    """Feeds the reports to Optuna in order (ask/tell, one trial object per trial) and records
    every report's decision; a pruned trial's later reports are dropped."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=grace, reduction_factor=reduction,
                                                    min_early_stopping_rate=0)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    live, pruned, out = {}, set(), []
    for t, e, v in reports:
        if t in pruned:
            continue
        if t not in live:
            live[t] = study.ask()
        trial = live[t]
        trial.report(v, e)
        prune = trial.should_prune()
        out.append({"trial": t, "epoch": e, "value": None if math.isnan(v) else v, "pruned": prune})
        if prune:
            pruned.add(t)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return out


def cases() -> list:
    """Every recorded case, in the file's order, from one seeded generator."""
    rng = random.Random(7)
    out = []
    for grace, reduction, trials, max_epochs in [(1, 3, 12, 9), (1, 2, 10, 8), (2, 3, 15, 18), (1, 4, 20, 16)]:
        for _ in range(3):
            reports = sequence(rng, trials, max_epochs)
            out.append({"grace": grace, "reduction": reduction, "max_epochs": max_epochs,
                        "reports": decide(reports, grace, reduction)})
    return out


def main():
    print(json.dumps({"optuna": optuna.__version__, "cases": cases()}))


if __name__ == "__main__":
    main()
