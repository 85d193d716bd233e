"""Every module imports (an undefined name at import time fails here, not in a user's run)."""

import importlib
import pkgutil

import lmforge


def all_modules():
    return sorted(m.name for m in pkgutil.walk_packages(lmforge.__path__, "lmforge."))


def test_every_module_imports():
    names = all_modules()
    assert len(names) > 20
    for name in names:
        if name == "lmforge.__main__":
            continue  # runs the CLI on import
        importlib.import_module(name)
