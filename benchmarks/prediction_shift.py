#!/usr/bin/env python3
"""predictionsVsStable (analysis.baseline.maxPredictionShift) on simulated steps.

    python benchmarks/prediction_shift.py [--trials 2000] [--seed 23] [--shift 0.05]
                                          [--rows 10]

Each trial is one step of a rollout with a three-class model: stable predicts the classes
0.50 / 0.30 / 0.20 of the time; the canary shifts class 0's share by a given number of points
(taken from class 1). Rows arrive one per request at --rows canary rows per look (10: a canary
of 1 request/s at a 10 s analysis interval) and 9x as many for stable (canary weight 10 %), for
360 looks (an hour); every look runs the real decision (canaryml_operator.evidence
.share_decisions) on the counts since the step began, at falseRollbackRate =
falsePromotionRate = 0.01. A Fail at any look counts as a rollback, a Pass at any look before
it as a promotion; the time is the first look deciding.

The row at exactly the shift is the error control: its rollbacks are false rollbacks (at most
alpha, by construction: at most 1 % per step) and its promotions false promotions (likewise).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from canaryml_operator import evidence as ev

STABLE = np.array([0.50, 0.30, 0.20])
LOOKS = 360
INTERVAL_SECONDS = 10


def simulate(
    rng: np.random.Generator, shift_points: float, *, trials: int, allowed: float, rows: int
) -> tuple[float, float, float | None]:
    """(share rolled back, share promoted, median seconds to the first decision)."""
    canary_shares = STABLE + np.array([shift_points, -shift_points, 0.0])
    canary = np.cumsum(rng.multinomial(rows, canary_shares, (LOOKS, trials)), axis=0)
    stable = np.cumsum(rng.multinomial(9 * rows, STABLE, (LOOKS, trials)), axis=0)
    codes = ev.share_decisions(canary, stable, allowed, alpha=ev.ALPHA, beta=ev.BETA)
    decided = codes != ev.UNDECIDED
    first = np.where(decided.any(axis=0), decided.argmax(axis=0), -1)
    at_first = codes[np.maximum(first, 0), np.arange(trials)]
    rolled_back = float(np.mean((first >= 0) & (at_first == ev.FAIL)))
    promoted = float(np.mean((first >= 0) & (at_first == ev.PASS)))
    seconds = (first[first >= 0] + 1) * INTERVAL_SECONDS
    return rolled_back, promoted, float(np.median(seconds)) if seconds.size else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--shift", type=float, default=0.05, help="maxPredictionShift")
    parser.add_argument("--rows", type=int, default=10, help="canary rows per look")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(
        f"trials {args.trials}, seed {args.seed}, maxPredictionShift {args.shift}, "
        f"{LOOKS} looks of {args.rows} canary / {9 * args.rows} stable rows"
    )
    print(f"{'class 0 shift':>14} {'rolled back':>12} {'promoted':>9} {'median s':>9}")
    for points in (0.0, args.shift / 2, args.shift, 2 * args.shift, 0.2):
        back, promoted, seconds = simulate(
            rng, points, trials=args.trials, allowed=args.shift, rows=args.rows
        )
        shown = "-" if seconds is None else f"{seconds:.0f}"
        print(f"{points * 100:>12.1f} pt {back:>12.2%} {promoted:>9.2%} {shown:>9}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
