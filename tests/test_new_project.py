"""Starting a project from the template: a renamed copy installs into a fresh environment and works."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NEW = "demolab"


def repo_files() -> list[str]:
    """What a clone of this checkout would hold: tracked files plus new ones that are not ignored."""
    listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    out = subprocess.run(listing, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return [p for p in out.split("\0") if p and (REPO / p).is_file()]


def fresh_venv(path: Path) -> Path:
    """A virtual environment without this project, seeing the third-party packages installed here.

    The installed packages are made visible with a path entry, the offline equivalent of installing
    the requirements again. A path entry is not a site directory, so the ``.pth`` file of this
    project's editable install there is not read: the old package stays invisible.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    where = [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    purelib = Path(subprocess.run(where, check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "_template_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def run(*cmd: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_renamed_copy_installs_trains_and_passes_its_tests(tmp_path):
    project = tmp_path / "project"
    for name in repo_files():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, project / name)

    preview = run(sys.executable, "scripts/new_project.py", NEW, "--dry-run", cwd=project).stdout
    assert "pyproject.toml" in preview and (project / "src" / "normlab").is_dir()  # listed, not changed
    run(sys.executable, "scripts/new_project.py", NEW, cwd=project)
    assert (project / "src" / NEW).is_dir() and not (project / "src" / "normlab").exists()
    leftovers = [
        str(p.relative_to(project))
        for p in project.rglob("*")
        if p.is_file() and "normlab" in p.read_bytes().decode("utf-8", "ignore").lower()
    ]
    assert not leftovers

    python = fresh_venv(tmp_path / "venv")
    old = subprocess.run([python, "-c", "import normlab.train"], capture_output=True)
    assert old.returncode != 0, "the fresh environment can import the template's own package"
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet"]
    run(*pip, "--no-deps", "--no-build-isolation", "--no-index", project, cwd=tmp_path)
    where = run(python, "-c", f"import {NEW}.train as m; print(m.__file__)", cwd=tmp_path).stdout
    assert where.startswith(str(tmp_path / "venv"))  # the wheel's copy, not the source tree
    sweepers = run(python, "-c", f"import hydra_plugins.{NEW}_sweepers.grid as m; print(m.__file__)", cwd=tmp_path)
    assert sweepers.stdout.startswith(str(tmp_path / "venv"))  # the wheel ships the renamed Hydra plugins

    trained = run(tmp_path / "venv" / "bin" / f"{NEW}-train", "trainer.max_steps=20", "hydra.run.dir=run", cwd=tmp_path)
    assert f"{NEW}: finished 20 steps" in trained.stdout
    assert list((tmp_path / "run").glob("events.out.tfevents*"))

    # Its own tests of config composition and the config print, importing the renamed package.
    selected = ["tests/test_config.py", "tests/test_console.py", "-k", "compose or tree"]
    tests = run(python, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *selected, cwd=project)
    assert " passed" in tests.stdout and "failed" not in tests.stdout


@pytest.mark.parametrize(
    ("name", "reason"),
    [("My-Lab", "lower-case Python identifier"), ("class", "keyword"), ("torch", "already an importable module")],
)
def test_unusable_names_are_refused_in_one_line(tmp_path, name, reason):
    (tmp_path / "src" / "normlab").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, REPO / "scripts" / "new_project.py", name, "--root", tmp_path], capture_output=True, text=True
    )
    assert proc.returncode == 2 and reason in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert (tmp_path / "src" / "normlab").is_dir()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        *((n, f"matches '{n}/' in .gitignore") for n in ("outputs", "build", "dist", "multirun", "lightning_logs")),
        *((n, "is a top-level folder of the repository") for n in ("data", "conf", "src", "tests")),
    ],
)
def test_names_git_ignores_or_top_level_folders_are_refused(name, reason):
    proc = subprocess.run(
        [sys.executable, REPO / "scripts" / "new_project.py", name, "--dry-run"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and reason in proc.stderr and len(proc.stderr.splitlines()) == 1
