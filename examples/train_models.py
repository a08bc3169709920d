"""Train the example models on scikit-learn's bundled breast-cancer data and package them.

    python examples/train_models.py --out build/models

writes, under --out: train.csv (the reference, with its `target` column), test.csv (rows to
send as traffic), stable.joblib / canary.joblib / bad.joblib, and a packaged artifact folder
for each (stable/, canary/, bad/). The code lives in the package
(`canaryml_cli.demo.example_models`), so that `canaryml demo` has the same models after a plain
`pip install`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from canaryml_cli.demo.example_models import NAME, TARGET, train

__all__ = ["NAME", "TARGET", "train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/models"))
    train(parser.parse_args().out)


if __name__ == "__main__":
    main()
