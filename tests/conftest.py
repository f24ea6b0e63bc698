"""Shared test set-up.  The tests are grouped by layer (isa/, emu/, compiler/{frontend,ir,
passes,backend}/, workflows/, e2e/); every test under e2e/ is marked slow, so
`pytest -m "not slow"` runs the fast subset.  Helper modules (randblocks, randmodels,
test_emu_util) live in this folder; every test folder is on sys.path."""
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
for d in [HERE, *sorted(p for p in HERE.rglob("*") if p.is_dir() and p.name != "data"
                        and "__pycache__" not in p.parts)]:
    sys.path.insert(0, str(d))          # a test may import another's helpers by name


def pytest_collection_modifyitems(config, items):
    e2e = HERE / "e2e"
    for item in items:
        if e2e in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
