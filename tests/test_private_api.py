"""No private attribute or module of another library in src/ beyond a short, explained allow-list.

Private names (``obj._name``, ``import pkg._internal``) change without notice between releases. The
scan reads every module of ``src/`` with ``ast``: any ``x._name`` whose ``x`` is not ``self`` or ``cls``
and any import of a module path with a ``_part`` is a use. A new use fails this test until it goes, or
until it is isolated and added below with the reason there is no public way.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# (file under src/normlab, expression) -> why it stays.
ALLOWED = {
    ("tasks.py", "cfg.task._target_"): "a Hydra config key, not an attribute",
    ("diagnostics/parameters.py", "torch._foreach_norm"): "torch's fused multi-tensor ops, no public twin",
    ("diagnostics/parameters.py", "torch._foreach_mul"): "torch's fused multi-tensor ops, no public twin",
    ("diagnostics/parameters.py", "torch._foreach_sub_"): "torch's fused multi-tensor ops, no public twin",
}


def private_uses(root: Path = SRC) -> Counter:
    uses: Counter = Counter()
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix().removeprefix("normlab/")  # and hydra_plugins/...
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    uses[(name, f"{ast.unparse(node.value)}.{node.attr}")] += 1
            elif isinstance(node, ast.Import | ast.ImportFrom):
                modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                uses.update((name, f"import {m}") for m in modules if any(map(_private, m.split("."))))
    return uses


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_use_outside_the_allow_list():
    new = sorted(set(private_uses()) - set(ALLOWED))
    assert not new, f"private names of other libraries in src/ (use a public API, or explain in ALLOWED): {new}"


def test_the_allow_list_has_no_stale_entries():
    stale = sorted(set(ALLOWED) - set(private_uses()))
    assert not stale, f"remove from ALLOWED, these are gone: {stale}"


def test_the_scan_finds_what_it_is_for(tmp_path):
    package = tmp_path / "normlab"
    package.mkdir()
    (package / "m.py").write_text(
        "from hydra._internal.core_plugins import basic_sweeper\n"
        "def f(module, bar):\n"
        "    module._current_fx_name = None\n"
        "    self._fine = bar._get_train_description(0)\n"
    )
    assert set(private_uses(tmp_path)) == {
        ("m.py", "import hydra._internal.core_plugins"),
        ("m.py", "module._current_fx_name"),
        ("m.py", "bar._get_train_description"),
    }
