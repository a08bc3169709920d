"""Drift benchmark: canaryml's calibrated gate against today's PSI gate, alibi-detect and Evidently.

    python benchmarks/drift.py [--trials 100] [--drift-trials 50] [--peer-trials 5]
                               [--seeds 3] [--peers all|alibi-detect|evidently|none] [--quick]
                               [--request-rows N]

Every detector sees the same windows. canaryml's are binned by the real DriftMonitor against a
profile built by the real build_profile, then judged by drift_test (the new gate, alpha 0.01)
and by today's rule (worst feature's PSI > maxDrift 0.25). The peers run in their own virtual
environments under benchmarks/.venv-drift-peers (created with pip when missing: they pin older
numpy and pandas) through benchmarks/peers/drift_worker.py, on the first --peer-trials windows
of each cell (they are slower); each rate is printed with the windows it rests on.

1. Independent windows (false alarms need them): references and windows drawn at random from
   one million-row make_classification sample per seed (20 columns) plus skewed, heavy-tailed,
   integer and categorical columns derived from it: 30 features. A new reference every
   --windows-per-reference windows, so that a rate is over many references: with one reference
   per seed, a reference that happens to be atypical colours every window judged against it.
   References of 90, 300 and 5000 rows; windows of 100, 300 and 1000.
2. Real data side by side: scikit-learn's breast-cancer (30 features) and wine (13), split in
   half per seed (reference / production pool); windows of 300 and 1000 rows resampled from the
   pool. Resampled windows are not independent of the pool's own difference from the reference,
   so every detector sees that difference alike.

Scenarios: no drift; one feature +0.25, +0.5, +1 sd; one feature x1.5 spread (about its mean);
five features +0.2 sd. Drifted features are numeric ones drawn at random per window.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special, stats
from sklearn.datasets import load_breast_cancer, load_wine, make_classification

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "server")]

from canaryml_server.drift import SAMPLE_ROWS, DriftMonitor  # noqa: E402
from canaryml_server.drift_test import DEFAULT_ALPHA, compare_counts, drift_test  # noqa: E402
from canaryml_server.profile import build_numeric_bins, build_profile  # noqa: E402
from canaryml_server.schema import Batch, FeatureSchema  # noqa: E402

MAX_DRIFT = 0.25  # today's default maxDrift
PEER_VENVS = HERE / ".venv-drift-peers"
PEER_PACKAGES = {
    "alibi-detect": ["alibi-detect==0.13.0"],
    "evidently": ["evidently==0.7.23", "pandas<3"],
}
SCENARIOS: dict[str, tuple[int, float, float]] = {
    # name: (features drifted, shift in sd, spread factor)
    "no drift": (0, 0.0, 1.0),
    "1 feature +0.25 sd": (1, 0.25, 1.0),
    "1 feature +0.5 sd": (1, 0.5, 1.0),
    "1 feature +1 sd": (1, 1.0, 1.0),
    "1 feature x1.5 spread": (1, 0.0, 1.5),
    "5 features +0.2 sd": (5, 0.2, 1.0),
}
DETECTORS = ["canaryml", "psi>0.25", "alibi-detect", "evidently"]


@dataclass
class Data:
    """A reference and where windows come from, with what drift may touch."""

    reference: pd.DataFrame
    numeric: list[int]
    categorical: list[int]
    mean: np.ndarray
    sd: np.ndarray


@dataclass
class Cell:
    part: str
    name: str  # the data set, or "ref N"
    reference_rows: int
    window: int
    scenario: str
    flags: dict[str, list[bool]] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)  # the peers' copies of the first windows


# --- data --------------------------------------------------------------------------------------


def synthetic_pool(seed: int, rows: int) -> tuple[pd.DataFrame, list[int]]:
    """30 features: make_classification's 20 and 10 derived ones of other shapes."""
    x, _ = make_classification(
        n_samples=rows, n_features=20, n_informative=6, n_redundant=4, random_state=seed
    )
    rng = np.random.default_rng(seed)
    columns = {f"x{j}": x[:, j] for j in range(20)}
    for j in range(3):  # skewed
        columns[f"skew{j}"] = np.exp(0.8 * x[:, j])
    for j in range(3):  # heavy-tailed
        columns[f"heavy{j}"] = x[:, 3 + j] + rng.standard_t(2, rows)
    columns["count0"] = rng.poisson(np.exp(0.4 * x[:, 6] + 1.0)).astype(np.float64)
    columns["count1"] = np.round(3 * x[:, 7]).astype(np.float64)
    cut = np.quantile(x[:, 8], [0.45, 0.75, 0.9, 0.98])
    columns["cat0"] = np.searchsorted(cut, x[:, 8]).astype(np.float64)
    columns["cat1"] = rng.choice(5, rows, p=[0.6, 0.25, 0.1, 0.04, 0.01]).astype(np.float64)
    frame = pd.DataFrame(columns)
    return frame, [frame.columns.get_loc("cat0"), frame.columns.get_loc("cat1")]


def as_data(reference: pd.DataFrame, population: pd.DataFrame, categorical: list[int]) -> Data:
    numeric = [j for j in range(reference.shape[1]) if j not in categorical]
    return Data(
        reference=reference,
        numeric=numeric,
        categorical=categorical,
        mean=population.mean().to_numpy(),
        sd=population.std().to_numpy(),
    )


def drifted(window: np.ndarray, data: Data, scenario: str, rng: np.random.Generator) -> np.ndarray:
    count, shift, spread = SCENARIOS[scenario]
    if not count:
        return window
    out = window.copy()
    for j in rng.choice(data.numeric, count, replace=False):
        out[:, j] = data.mean[j] + spread * (out[:, j] - data.mean[j]) + shift * data.sd[j]
    return out


# --- canaryml's detectors -----------------------------------------------------------------------


class Canaryml:
    """The real profile, monitor and test: one monitor per window size, refilled per window.

    With `request_rows`, a window's rows arrive in requests of that many rows and the monitor
    bins at most SAMPLE_ROWS of each, as a server does by default (`rows_to_draw` rows give a
    full window); without, the window is one request binned whole."""

    def __init__(self, data: Data, window: int, request_rows: int = 0) -> None:
        self.request_rows = request_rows
        frame = self.frame(data.reference.to_numpy(), data)
        self.names = list(frame.columns)
        self.categorical = [self.names[j] for j in data.categorical]
        self.profile = build_profile(
            frame,
            np.zeros(len(frame), dtype=np.int64),
            categorical=set(self.categorical),
            classification=True,
        )
        self.monitor = DriftMonitor(
            self.profile,
            feature_names=self.names,
            window=window,
            sample_rows=SAMPLE_ROWS if request_rows else 0,
            seed=window,
        )
        self.data = data

    def frame(self, values: np.ndarray, data: Data) -> pd.DataFrame:
        frame = pd.DataFrame(values, columns=list(data.reference.columns))
        for j in data.categorical:
            name = frame.columns[j]
            frame[name] = [f"c{int(v)}" for v in frame[name]]
        return frame

    def judge(self, window: np.ndarray) -> tuple[bool, bool]:
        columns = {n: window[:, j] for j, n in enumerate(self.names)}
        for name in self.categorical:
            columns[name] = np.array([f"c{int(v)}" for v in columns[name]], dtype=object)
        step = self.request_rows or len(window)
        for start in range(0, len(window), step):
            part = {n: column[start : start + step] for n, column in columns.items()}
            rows = min(step, len(window) - start)
            batch = Batch(schema=FeatureSchema(features=[]), columns=part, rows=rows)
            self.monitor.observe(batch, np.zeros(rows, dtype=np.int64))
        counts = self.monitor.counts()
        test = drift_test(self.profile, dict(zip(self.names, counts[:-1], strict=True)))
        worst = self.monitor.report().worst_feature
        return test.drifted, worst is not None and worst[1] > MAX_DRIFT


# --- running ------------------------------------------------------------------------------------


def run_cells(
    part: str,
    name: str,
    reference: Callable[[int], Data],
    window: int,
    draw: Callable[[int], np.ndarray],
    args: argparse.Namespace,
    rng: np.random.Generator,
    folder: Path,
    index: list[dict[str, object]],
) -> list[Cell]:
    """Every scenario's windows through canaryml and the PSI gate; the peers' share saved.

    `reference(t)` is the reference of the t-th window (a new one every few windows for
    independent data, so that a rate is over many references, not a few)."""
    cells = []
    count = 0
    gate: Canaryml | None = None
    for scenario in SCENARIOS:
        cell = Cell(part, name, len(reference(count).reference), window, scenario)
        cell.flags = {"canaryml": [], "psi>0.25": []}
        groups: dict[int, tuple[Data, list[np.ndarray]]] = {}
        for t in range(args.trials if scenario == "no drift" else args.drift_trials):
            data = reference(count)
            count += 1
            if gate is None or gate.data is not data:
                gate = Canaryml(data, window, args.request_rows)
            values = drifted(draw(rows_to_draw(window, args.request_rows)), data, scenario, rng)
            ours, psi_gate = gate.judge(values)
            cell.flags["canaryml"].append(ours)
            cell.flags["psi>0.25"].append(psi_gate)
            if t < args.peer_trials and args.peers != "none":
                groups.setdefault(id(data), (data, []))[1].append(values)
        for data, kept in groups.values():
            key = f"{len(index)}"
            np.save(folder / f"r{key}.npy", data.reference.to_numpy())
            np.save(folder / f"w{key}.npy", np.stack(kept))
            index.append(
                {
                    "key": key,
                    "reference": str(folder / f"r{key}.npy"),
                    "windows": str(folder / f"w{key}.npy"),
                    "categorical": data.categorical,
                }
            )
            cell.keys.append(key)
        cells.append(cell)
    return cells


def rows_to_draw(window: int, request_rows: int) -> int:
    """Rows seen that fill a window of `window` rows binned, in requests of `request_rows`."""
    if not request_rows:
        return window
    per_request = min(request_rows, SAMPLE_ROWS)
    return -(-window // per_request) * request_rows


def fresh_references(
    pool: pd.DataFrame, categorical: list[int], rows: int, every: int, rng: np.random.Generator
) -> Callable[[int], Data]:
    """A new reference of `rows` rows drawn from the pool every `every` windows."""
    current: dict[int, Data] = {}

    def reference(t: int) -> Data:
        group = t // every
        if group not in current:
            current.clear()
            picked = pool.iloc[rng.integers(0, len(pool), rows)].reset_index(drop=True)
            current[group] = as_data(picked, pool, categorical)
        return current[group]

    return reference


def fresh_windows(values: np.ndarray, rng: np.random.Generator) -> Callable[[int], np.ndarray]:
    return lambda size: values[rng.integers(0, len(values), size)]


def independent(
    args: argparse.Namespace, folder: Path, index: list[dict[str, object]]
) -> list[Cell]:
    """Part 1: references and windows drawn from one large make_classification sample per seed
    (a million rows: two draws share a row rarely enough not to matter)."""
    cells: list[Cell] = []
    for seed in range(args.seeds):
        pool, categorical = synthetic_pool(seed, 1_000_000)
        rng = np.random.default_rng([seed, 1])
        draw = fresh_windows(pool.to_numpy(), rng)
        for rows in (90, 300, 5000):
            reference = fresh_references(pool, categorical, rows, args.windows_per_reference, rng)
            for window in (100, 300, 1000):
                cells += run_cells(
                    "independent", f"ref {rows}", reference, window, draw, args,
                    np.random.default_rng([seed, window]), folder, index,
                )  # fmt: skip
    return cells


def real(args: argparse.Namespace, folder: Path, index: list[dict[str, object]]) -> list[Cell]:
    """Part 2: bundled data sets, half reference and half production pool, per seed."""
    cells: list[Cell] = []
    for name, loader in (("breast-cancer", load_breast_cancer), ("wine", load_wine)):
        full = loader(as_frame=True).frame.drop(columns="target")
        full.columns = [f"f{j}" for j in range(full.shape[1])]
        for seed in range(args.seeds):
            rng = np.random.default_rng([seed, 7])
            order = rng.permutation(len(full))
            half = len(full) // 2
            reference = full.iloc[order[:half]].reset_index(drop=True)
            pool = full.iloc[order[half:]].to_numpy()
            data = as_data(reference, full, [])
            for window in (300, 1000):

                def draw(
                    size: int, pool: np.ndarray = pool, rng: np.random.Generator = rng
                ) -> np.ndarray:
                    return pool[rng.integers(0, len(pool), size)]

                cells += run_cells(
                    "real", name, lambda _t, data=data: data, window, draw, args, rng, folder, index
                )
    return cells


# --- peers --------------------------------------------------------------------------------------


def peer_python(name: str) -> Path | None:
    """The interpreter of a peer's environment, created once with pip; None if that fails."""
    venv = PEER_VENVS / name
    python = venv / "bin" / "python"
    stamp = venv / "canaryml-bench.json"
    wanted = PEER_PACKAGES[name]
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return python
    print(f"creating the {name} environment in {venv} (once)...", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *wanted,
            ],
            check=True,
            timeout=1200,
        )
    except (subprocess.SubprocessError, OSError) as error:
        print(f"  {name}: cannot install ({error}); its columns stay empty", file=sys.stderr)
        return None
    stamp.write_text(json.dumps(wanted))
    return python


def run_peers(
    args: argparse.Namespace, folder: Path, index: list[dict[str, object]], cells: list[Cell]
) -> dict[str, float]:
    (folder / "index.json").write_text(json.dumps(index))
    seconds: dict[str, float] = {}
    for peer in ("alibi-detect", "evidently"):
        if args.peers not in ("all", peer):
            continue
        python = peer_python(peer)
        if python is None:
            continue
        start = time.monotonic()
        check = ["--check", "1"] if peer == "evidently" else []
        subprocess.run(
            [str(python), str(HERE / "peers" / "drift_worker.py"), peer, str(folder), *check],
            check=True,
        )
        seconds[peer] = time.monotonic() - start
        flags = json.loads((folder / f"{peer}.json").read_text())
        for cell in cells:
            if cell.keys:
                cell.flags[peer] = [f for key in cell.keys for f in flags[key]]
    return seconds


# --- reporting ----------------------------------------------------------------------------------


def upper_bound(hits: int, trials: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound of a rate."""
    return 1.0 if hits >= trials else float(stats.beta.ppf(0.95, hits + 1, trials - hits))


def verdict(hits: int, trials: int) -> str:
    """At most 1 %: met; above but a 1 % rate could give it (one-sided 95 %): within noise."""
    if hits <= 0.01 * trials:
        return "met"
    lower = float(stats.beta.ppf(0.05, hits, trials - hits + 1))
    return "within noise" if lower <= 0.01 else "MISSED"


def merged(cells: list[Cell]) -> dict[tuple[str, str, int, int, str], dict[str, list[bool]]]:
    """Cells of the same set-up over seeds, pooled."""
    out: dict[tuple[str, str, int, int, str], dict[str, list[bool]]] = {}
    for c in cells:
        key = (c.part, c.name, c.reference_rows, c.window, c.scenario)
        slot = out.setdefault(key, {})
        for detector, flags in c.flags.items():
            slot.setdefault(detector, []).extend(flags)
    return out


def rate(flags: list[bool] | None) -> str:
    if not flags:
        return "-"
    return f"{100 * sum(flags) / len(flags):.1f}% ({len(flags)})"


def calibration(trials: int, rng: np.random.Generator) -> list[tuple[int, int, dict[str, float]]]:
    """Per-feature null tail rates of candidate statistics on quantile bins, observed / nominal,
    at the per-feature level a Bonferroni share of alpha 0.01 over 30 features asks (3.3e-4)."""
    level = DEFAULT_ALPHA / 30
    rows = []
    for n, m in ((90, 1000), (90, 100), (300, 300), (5000, 100)):
        edges = np.quantile(rng.random((trials, n)), np.linspace(0, 1, 11)[1:-1], axis=-1).T
        ref = np.tile(_quantile_counts(n), (trials, 1)).astype(np.float64)
        win = rng.multinomial(m, np.diff(edges, prepend=0.0, append=1.0, axis=-1)).astype(
            np.float64
        )
        totals = ref + win
        total = n + m
        e_ref, e_win = totals * n / total, totals * m / total
        x2 = ((ref - e_ref) ** 2 / e_ref + (win - e_win) ** 2 / e_win).sum(axis=1)
        g = 2 * (special.xlogy(ref, ref / e_ref) + special.xlogy(win, win / e_win)).sum(axis=1)
        q = 1 + (total * (1 / n + 1 / m) - 1) * (total * (1 / totals).sum(axis=1) - 1) / (
            6 * total * 9
        )
        observed = {
            "Pearson X2": float((special.chdtrc(9, x2) <= level).mean()),
            "G": float((special.chdtrc(9, g) <= level).mean()),
            "G, Williams": float((special.chdtrc(9, g / q) <= level).mean()),
        }
        rows.append((n, m, {k: v / level for k, v in observed.items()}))
    return rows


def _quantile_counts(n: int) -> np.ndarray:
    """Reference counts per quantile bin: the same for every continuous sample of n rows."""
    sample = np.random.default_rng(0).random(n)
    bins = build_numeric_bins(sample)
    return np.bincount(bins.assign(sample), minlength=len(bins.edges) + 1)[: len(bins.edges) + 1]


def cost_per_call() -> float:
    """Microseconds of one drift_test of 30 features x 10 bins (+ the missing-value bin)."""
    rng = np.random.default_rng(1)
    ref = [rng.multinomial(300, [0.1] * 10 + [0.0]) for _ in range(30)]
    win = [rng.multinomial(1000, [0.1] * 10 + [0.0]) for _ in range(30)]
    names = [f"f{j}" for j in range(30)]
    calls = 2000
    start = time.perf_counter()
    for _ in range(calls):
        compare_counts(ref, win, names=names, ordered=[10] * 30)
    return (time.perf_counter() - start) / calls * 1e6


def report(cells: list[Cell], args: argparse.Namespace, seconds: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    pooled = merged(cells)
    detectors = [d for d in DETECTORS if any(d in v for v in pooled.values())]

    null = Table(
        title=f"1. Independent windows, no drift: false alarms per analysis ({args.seeds} seeds; "
        f"windows in brackets; canaryml alpha {DEFAULT_ALPHA})"
    )
    for column in ("reference", "window", *detectors, "canaryml 95% upper", "target <= 1%"):
        null.add_column(column, justify="right")
    misses: list[str] = []
    noisy: list[str] = []  # above 1 % but within what a 1 % rate gives (one-sided 95 %)
    for (part, _name, n, m, scenario), flags in pooled.items():
        if part != "independent" or scenario != "no drift":
            continue
        ours = flags["canaryml"]
        hits = sum(ours)
        status = verdict(hits, len(ours))
        if status == "MISSED":
            misses.append(f"{n}/{m}")
        elif status == "within noise":
            noisy.append(f"{n}/{m}")
        null.add_row(
            str(n), str(m), *(rate(flags.get(d)) for d in detectors),
            f"{100 * upper_bound(hits, len(ours)):.1f}%", status,
        )  # fmt: skip
    console.print(null)

    detect = Table(title="1. Independent windows: detection per analysis (30 features)")
    for column in ("reference", "window", "scenario", *detectors):
        detect.add_column(column, justify="right")
    for (part, _name, n, m, scenario), flags in pooled.items():
        if part == "independent" and scenario != "no drift":
            detect.add_row(str(n), str(m), scenario, *(rate(flags.get(d)) for d in detectors))
    console.print(detect)

    side = Table(
        title="2. Real data, windows resampled from the production half (pool effect included)"
    )
    for column in ("data", "reference", "window", "scenario", *detectors):
        side.add_column(column, justify="right")
    for (part, name, n, m, scenario), flags in pooled.items():
        if part == "real":
            side.add_row(name, str(n), str(m), scenario, *(rate(flags.get(d)) for d in detectors))
    console.print(side)

    targets = Table(title="Targets (issue 17), independent windows")
    for column in ("target", "canaryml", "comparison", "status"):
        targets.add_column(column)
    worst = max(
        (sum(f["canaryml"]) / len(f["canaryml"]), f"{k[2]}/{k[3]}")
        for k, f in pooled.items()
        if k[0] == "independent" and k[4] == "no drift"
    )
    targets.add_row(
        "<= 1 % false alarms at every size",
        f"worst {100 * worst[0]:.1f}% ({worst[1]})",
        "",
        "MISSED: " + ", ".join(misses)
        if misses
        else "within noise: " + ", ".join(noisy)
        if noisy
        else "met",
    )
    key = ("independent", "ref 300", 300, 1000)
    for scenario, goal in (("1 feature +0.5 sd", 0.99), ("5 features +0.2 sd", 0.95)):
        flags = pooled[(*key, scenario)]["canaryml"]
        value = sum(flags) / len(flags)
        targets.add_row(
            f"ref 300, window 1000: {scenario} >= {100 * goal:.0f}%",
            rate(flags),
            "",
            "met" if value >= goal else f"MISSED by {100 * (goal - value):.1f} points",
        )
    cell = pooled[(*key, "1 feature +0.25 sd")]
    theirs = cell.get("alibi-detect")
    if theirs:
        n_peer = len(theirs)
        # Same windows: the peers saw the first --peer-trials windows of each seed's cell.
        ours_same = [
            f
            for c in cells
            if (c.part, c.name, c.reference_rows, c.window, c.scenario)
            == (*key, "1 feature +0.25 sd")
            for f in c.flags["canaryml"][: args.peer_trials]
        ]
        a, b = sum(ours_same) / len(ours_same), sum(theirs) / n_peer
        targets.add_row(
            "ref 300, window 1000: 1 feature +0.25 sd, more often than alibi KS",
            f"{100 * a:.1f}% ({len(ours_same)})",
            f"alibi KS {100 * b:.1f}% ({n_peer}, same windows)",
            "met" if a > b else "MISSED",
        )
    else:
        targets.add_row(
            "1 feature +0.25 sd, more often than alibi KS",
            rate(cell["canaryml"]),
            "alibi-detect not run",
            "not measured",
        )
    console.print(targets)

    tails = Table(
        title="Why G with Williams' correction: per-feature null rejections at 3.3e-4, "
        f"observed / nominal ({args.calibration} tables each)"
    )
    for column in ("reference", "window", "Pearson X2", "G", "G, Williams"):
        tails.add_column(column, justify="right")
    for n, m, ratios in calibration(args.calibration, np.random.default_rng(5)):
        tails.add_row(
            str(n), str(m), *(f"{ratios[k]:.2f}" for k in ("Pearson X2", "G", "G, Williams"))
        )
    console.print(tails)
    console.print(f"drift_test cost: {cost_per_call():.0f} us per call (30 features x 11 bins)")
    for peer, s in seconds.items():
        console.print(f"{peer}: {s:.0f} s for its windows (in its own environment)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trials", type=int, default=100, help="no-drift windows per cell and seed"
    )
    parser.add_argument("--drift-trials", type=int, default=50, help="windows per drift scenario")
    parser.add_argument(
        "--peer-trials", type=int, default=5, help="of those, how many the peers see"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--windows-per-reference",
        type=int,
        default=10,
        help="independent data: a new reference every N windows",
    )
    parser.add_argument(
        "--peers", choices=["all", "alibi-detect", "evidently", "none"], default="all"
    )
    parser.add_argument(
        "--calibration", type=int, default=200_000, help="tables per size, tail check"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few windows per cell, to try it out"
    )
    parser.add_argument(
        "--request-rows",
        type=int,
        default=0,
        help=f"windows arrive in requests of N rows, {SAMPLE_ROWS} of each binned as a server "
        "does (0: one request, every row binned); canaryml and the PSI gate only",
    )
    args = parser.parse_args()
    if args.request_rows and args.peers != "none":
        parser.error("--request-rows needs --peers none (the peers see whole windows)")
    if args.quick:
        args.trials, args.drift_trials, args.peer_trials, args.calibration = 30, 15, 5, 20_000
    start = time.monotonic()
    index: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="canaryml-drift-") as tmp:
        folder = Path(tmp)
        cells = independent(args, folder, index) + real(args, folder, index)
        print(f"canaryml and the PSI gate: {time.monotonic() - start:.0f} s", file=sys.stderr)
        seconds = run_peers(args, folder, index, cells) if args.peers != "none" else {}
    report(cells, args, seconds)
    print(f"total {time.monotonic() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
