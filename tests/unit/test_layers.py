"""Layer contracts (docs/architecture.md), checked on the real import graph.

Each check imports modules in a fresh interpreter and inspects ``sys.modules``, so a
transitive import is caught too, not only a direct one.
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "kith"
CRYPTO_LIBS = ("cryptography", "vodozemac", "argon2", "_argon2_cffi_bindings", "sqlcipher3", "nacl")
IO_LIBS = ("asyncio", "socket", "websockets", "picows", "redis", "selectors", "threading")
INTERFACES = ("kith.cli", "kith.tui", "kith.web")


def _modules_of(package: str) -> list[str]:
    root = SRC / package.removeprefix("kith.").replace(".", "/")
    names = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout))


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_protocol_core_is_sans_io() -> None:
    loaded = _loaded_after_import(_modules_of("kith.protocol"))
    assert not (_top(loaded) & set(IO_LIBS)), sorted(_top(loaded) & set(IO_LIBS))
    assert not (_top(loaded) & set(CRYPTO_LIBS)), "protocol must reach crypto only via kith.crypto"


def test_relay_core_is_sans_io() -> None:
    loaded = _loaded_after_import(["kith.relay.core"])
    assert not (_top(loaded) & set(IO_LIBS)), sorted(_top(loaded) & set(IO_LIBS))


def _direct_imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_only_crypto_imports_crypto_libraries() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.is_relative_to(SRC / "crypto"):
            continue
        for name in _direct_imports(path):
            if name.split(".")[0] in CRYPTO_LIBS:
                offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert not offenders, offenders


BELOW_INTERFACES = ["kith.protocol", "kith.crypto", "kith.relay", "kith.vault", "kith.client"]


@pytest.mark.parametrize("package", BELOW_INTERFACES)
def test_nothing_below_the_interfaces_imports_them(package: str) -> None:
    loaded = _loaded_after_import(_modules_of(package))
    prefixes = tuple(i + "." for i in INTERFACES)
    bad = sorted(m for m in loaded if m in INTERFACES or m.startswith(prefixes))
    assert not bad, bad
