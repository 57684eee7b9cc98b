"""The README's normlab commands are real: each composes into a valid config."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from normlab.config import validate

README = Path(__file__).resolve().parents[1] / "README.md"
ENTRY_CONFIG = {"normlab-train": "train", "normlab-eval": "eval"}


def readme_commands() -> list[tuple[str, list[str]]]:
    """(config name, overrides) of every normlab-train/-eval line in the README's bash blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line.split(" #")[0])
            if words and words[0] in ENTRY_CONFIG and "--help" not in words:
                commands.append((ENTRY_CONFIG[words[0]], [w for w in words[1:] if w not in ("-m", "--multirun")]))
    return commands


def first_of_each_sweep(overrides: list[str]) -> list[str]:
    """One job of a multirun: the first value of every sweep override."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [
        f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
        for o in parsed
    ]


def test_the_readme_has_commands():
    assert len(readme_commands()) >= 5


@pytest.mark.parametrize(
    ("config_name", "overrides"), readme_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_readme_command_composes(compose_cfg, config_name, overrides):
    cfg = compose_cfg(first_of_each_sweep(overrides), config_name=config_name)
    validate(cfg)
