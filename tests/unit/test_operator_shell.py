"""The operator's shell keeps no state it does not need: settings are read when first needed,
and a deleted resource's lock goes with it."""

from __future__ import annotations

import subprocess
import sys

from canaryml_operator import main


def test_importing_the_operator_builds_no_settings() -> None:
    # An invalid setting fails where the settings are used, never at import.
    script = (
        "import canaryml_operator.main as m; "
        "assert m.operator_settings.cache_info().currsize == 0; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={"CANARYML_OPERATOR_WORKERS": "0", "PATH": ""},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def test_a_deleted_resources_lock_is_dropped() -> None:
    lock = main._lock("ml", "iris")
    assert main._lock("ml", "iris") is lock
    main.model_deployment_deleted(body={"metadata": {"namespace": "ml", "name": "iris"}})
    assert ("ml", "iris") not in main._locks
