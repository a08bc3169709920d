#!/usr/bin/env python3
"""A/B experiments: how often a winner is named between equal models, and how often and how fast
on a real difference, through the real decision code (canaryml_operator.experiments).

    python benchmarks/experiments.py [--trials 2000] [--seed 23] [--alpha 0.01]
                                     [--labels-per-second 5] [--interval 10] [--max-labels 20000]

Each trial is one experiment at a 50/50 split: every --interval seconds (an analysis) each track
gets Binomial(labels-per-second x interval, its accuracy) correct labels out of that many, and
the experiment looks at the cumulative counts since it began (experiments.difference_bounds,
experiments.winner_codes), deciding nothing while a track has fewer than --min-samples labels
(minSamples, 100). A trial ends at the first look that names a winner, or undecided once each
track has --max-labels labels. Stable's accuracy is 0.90; the canary's 0.90 (equal models: any
winner is a false one), 0.91, 0.92, 0.93, 0.95 and 0.85.

Prints one table (counts out of --trials): winner canary, winner stable, undecided, the false
winner rate on equal models against alpha, and the labels per track (and minutes at the
--labels-per-second rate) to a decision: median and p95 over the decided trials.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from canaryml_operator import experiments

STABLE_ACCURACY = 0.90
CANARY_ACCURACIES = (0.90, 0.91, 0.92, 0.93, 0.95, 0.85)


def simulate(
    canary: float,
    *,
    trials: int,
    per_look: int,
    looks: int,
    alpha: float,
    min_samples: int,
    rng: np.random.Generator,
    chunk: int = 250,
) -> tuple[np.ndarray, np.ndarray]:
    """For each trial, the decision code and the index of the deciding look (-1: none)."""
    codes = np.zeros(trials, dtype=np.int8)
    first = np.full(trials, -1)
    n = np.arange(1, looks + 1) * per_look
    for start in range(0, trials, chunk):
        size = min(chunk, trials - start)
        xc = rng.binomial(per_look, canary, size=(size, looks)).cumsum(axis=1)
        xs = rng.binomial(per_look, STABLE_ACCURACY, size=(size, looks)).cumsum(axis=1)
        low, high = experiments.difference_bounds(xc, n, xs, n, alpha)
        decided = experiments.winner_codes(low, high)
        decided[:, n < min_samples] = experiments.UNDECIDED
        hit = decided != experiments.UNDECIDED
        any_hit = hit.any(axis=1)
        index = np.where(any_hit, hit.argmax(axis=1), -1)
        rows = np.arange(size)
        codes[start : start + size] = np.where(any_hit, decided[rows, index], 0)
        first[start : start + size] = index
    return codes, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2000, help="experiments per cell")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--alpha", type=float, default=0.01, help="false winner rate")
    parser.add_argument("--labels-per-second", type=float, default=5.0, help="per track")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between looks")
    parser.add_argument("--max-labels", type=int, default=20_000, help="per track")
    parser.add_argument("--min-samples", type=int, default=100)
    args = parser.parse_args()
    per_look = round(args.labels_per_second * args.interval)
    looks = args.max_labels // per_look
    rng = np.random.default_rng(args.seed)
    began = time.perf_counter()
    print(
        f"A/B experiments: {args.trials} trials per row, seed {args.seed}, alpha {args.alpha}, "
        f"50/50 split, {per_look} labels per track every {args.interval:g} s "
        f"({args.labels_per_second:g}/s), minSamples {args.min_samples}, up to "
        f"{args.max_labels} labels per track; stable accuracy {STABLE_ACCURACY:.2f}\n"
    )
    header = (
        f"{'canary':>7} {'winner canary':>15} {'winner stable':>15} {'undecided':>11} "
        f"{'labels/track to decide: median':>31} {'p95':>7} {'minutes: median':>16} {'p95':>6}"
    )
    print(header)
    false_rate = None
    for canary in CANARY_ACCURACIES:
        codes, first = simulate(
            canary,
            trials=args.trials,
            per_look=per_look,
            looks=looks,
            alpha=args.alpha,
            min_samples=args.min_samples,
            rng=rng,
        )
        won_canary = int((codes == experiments.CANARY).sum())
        won_stable = int((codes == experiments.STABLE).sum())
        undecided = args.trials - won_canary - won_stable
        labels = (first[first >= 0] + 1) * per_look
        if labels.size:
            median, p95 = np.percentile(labels, 50), np.percentile(labels, 95)
            times = (
                f"{median:>31.0f} {p95:>7.0f} "
                f"{median / args.labels_per_second / 60:>16.1f} "
                f"{p95 / args.labels_per_second / 60:>6.1f}"
            )
        else:
            times = f"{'-':>31} {'-':>7} {'-':>16} {'-':>6}"
        print(
            f"{canary:>7.2f} {won_canary:>8} ({won_canary / args.trials:>4.0%}) "
            f"{won_stable:>8} ({won_stable / args.trials:>4.0%}) "
            f"{undecided:>5} ({undecided / args.trials:>3.0%}) {times}"
        )
        if canary == STABLE_ACCURACY:
            false_rate = (won_canary + won_stable) / args.trials
    assert false_rate is not None
    verdict = "met" if false_rate <= args.alpha else "MISSED"
    print(
        f"\nfalse winner rate on equal models: {false_rate:.4f} (target <= alpha "
        f"{args.alpha}): {verdict}"
    )
    print(f"({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
