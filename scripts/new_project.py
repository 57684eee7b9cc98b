#!/usr/bin/env python
"""Turn this template into your own project: rename the package, its console scripts and every reference.

    python scripts/new_project.py mylab            # src/normlab -> src/mylab, normlab-train -> mylab-train, ...
    python scripts/new_project.py mylab --dry-run  # list what would change, change nothing

Every text file of the checkout (``git ls-files`` in a git repository, otherwise every file outside
caches, virtual environments and run outputs) has ``normlab`` replaced by the new name, ``Normlab``
and ``NORMLAB`` by its capitalised and upper-case forms; then ``src/normlab`` is moved to ``src/NAME``
(and ``src/hydra_plugins/normlab_sweepers`` to ``src/hydra_plugins/NAME_sweepers``).
The name is written back into this script too, so it can rename again later. Afterwards reinstall
(``pip install -e ".[dev]"``): the old console scripts belong to the old package.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import keyword
import re
import subprocess
import sys
from pathlib import Path

OLD = "normlab"
ROOT = Path(__file__).resolve().parents[1]
# Top-level folders never rewritten outside git: version control, environments, run outputs, datasets.
SKIP_DIRS = {".git", ".venv", "venv", "outputs", "multirun", "data", "lightning_logs", "build", "dist"}


def spellings(old: str, new: str) -> dict[str, str]:
    """The forms of the name that are replaced: ``normlab``, ``Normlab``, ``NORMLAB``."""
    return {old: new, old.capitalize(): new.capitalize(), old.upper(): new.upper()}


def name_problem(name: str, root: Path = ROOT) -> str | None:
    """Why ``name`` cannot be the new package name, or ``None`` when it can."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        return f"NAME={name!r} must be a lower-case Python identifier (letters, digits, underscores; a letter first)"
    if keyword.iskeyword(name):
        return f"NAME={name!r} is a Python keyword; choose another name"
    if name == OLD:
        return f"the package is already called {name!r}"
    pattern = ignored_by(f"src/{name}", root)
    if pattern:
        return f"NAME={name!r} matches {pattern!r} in .gitignore, so git would ignore the package; choose another name"
    if (root / name).exists() or name in SKIP_DIRS:
        return f"NAME={name!r} is a top-level folder of the repository; choose another name"
    if importlib.util.find_spec(name) is not None:
        return f"NAME={name!r} is already an importable module here and would be shadowed; choose another name"
    return None


def ignored_by(rel: str, root: Path) -> str | None:
    """The ``.gitignore`` pattern that matches ``rel`` or one of its folders, else ``None``.

    Covers the patterns a project's ``.gitignore`` holds (names, globs, a leading or trailing ``/``);
    negations (``!``) are not followed, which can only refuse a name too many.
    """
    try:
        lines = (root / ".gitignore").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    parts = rel.split("/")
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith(("#", "!")):
            continue
        pattern = line.strip("/")
        anchored = line.startswith("/") or "/" in pattern
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatchcase(prefix, pattern) or (
                not anchored and fnmatch.fnmatchcase(parts[depth - 1], pattern)
            ):
                return line
    return None


def project_files(root: Path) -> list[Path]:
    """The files to rewrite: tracked and not-ignored files in a git checkout, else a walk of ``root``."""
    if (root / ".git").exists():
        listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        out = subprocess.run(listing, cwd=root, check=True, capture_output=True, text=True).stdout
        return sorted({root / p for p in out.split("\0") if p and (root / p).is_file()})
    return sorted(p for p in root.rglob("*") if p.is_file() and not _skipped(p.relative_to(root)))


def _skipped(rel: Path) -> bool:
    """Caches anywhere; environments, outputs and datasets at the root only (``src/normlab/data`` is code)."""
    caches = any(part.endswith((".egg-info", "_cache", "__pycache__")) for part in rel.parts)
    return caches or rel.parts[0] in SKIP_DIRS


def rewritten(text: str, forms: dict[str, str]) -> str:
    pattern = re.compile("|".join(re.escape(old) for old in forms))
    return pattern.sub(lambda m: forms[m.group(0)], text)


def rename(root: Path, new: str, dry_run: bool = False) -> list[Path]:
    """Rewrite every reference to the old name under ``root`` and move the package; return the changed files."""
    forms = spellings(OLD, new)
    changed = []
    for path in project_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary files hold no references
            continue
        new_text = rewritten(text, forms)
        if new_text != text:
            changed.append(path)
            if not dry_run:
                path.write_text(new_text, encoding="utf-8")
    if not dry_run:  # src/normlab, and src/hydra_plugins/normlab_sweepers (deepest first)
        folders = [p for p in (root / "src").rglob(f"*{OLD}*") if p.is_dir()]
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            folder.rename(folder.with_name(folder.name.replace(OLD, new)))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the new package name, e.g. mylab (gives mylab-train, import mylab)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to rename (default: this one)")
    parser.add_argument("--dry-run", action="store_true", help="list the files that would change, change nothing")
    args = parser.parse_args(argv)

    root = args.root.resolve()
    problem = name_problem(args.name, root)
    if problem is None and not (root / "src" / OLD).is_dir():
        problem = f"no package at {root / 'src' / OLD}; pass --root <the checkout>"
    if problem:
        print(f"new_project: error: {problem}", file=sys.stderr)
        return 2

    changed = rename(root, args.name, dry_run=args.dry_run)
    verb = "would rewrite" if args.dry_run else "rewrote"
    print("\n".join(f"  {p.relative_to(root)}" for p in changed))
    print(f"{verb} {len(changed)} files; src/{OLD} -> src/{args.name}")
    if not args.dry_run:
        print(f'next: pip install -e ".[dev]" && {args.name}-train trainer.max_steps=50')
    return 0


if __name__ == "__main__":
    sys.exit(main())
