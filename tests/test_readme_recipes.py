"""The README's "Use this template" recipes work as written: its model, dataset and diagnostic train together,
and its regression task trains and evaluates through the unchanged entry points.

Each recipe block starts with a comment naming its file. The test writes the Python files as
top-level modules in a temporary folder (``normlab.models.logreg`` becomes ``logreg``, so nothing is
added to the package), the YAML files into a config folder on Hydra's search path, registers the
schema the way the README says, and runs ``train`` on the result.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import open_dict

from helpers import read_scalars
from normlab import config, schemas
from normlab.errors import ConfigError
from normlab.evaluate import evaluate
from normlab.train import train

README = Path(__file__).resolve().parents[1] / "README.md"


def recipe_blocks() -> dict[str, str]:
    """``{path: code}`` of the blocks of the "Use this template" section that name their file."""
    section = README.read_text().split("## Use this template", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+)[^\n]*\n(.*?)```", section, flags=re.S)
    return dict(blocks)


@pytest.fixture
def recipes(tmp_path, monkeypatch) -> Path:
    """Write the recipes under ``tmp_path``; return the config folder to add to the search path."""
    blocks = recipe_blocks()
    modules = {  # src/normlab/models/logreg.py -> normlab.models.logreg
        p[len("src/") : -len(".py")].replace("/", "."): Path(p).stem
        for p in blocks
        if p.endswith(".py") and p != "src/normlab/schemas.py"
    }
    assert set(modules.values()) == {"logreg", "iris", "param_norm", "regressor", "linear"}, sorted(blocks)

    def local(text: str) -> str:
        for dotted, stem in modules.items():
            text = text.replace(dotted, stem)
        return text

    code, conf = tmp_path / "code", tmp_path / "conf"
    for path, text in blocks.items():
        if path.startswith("conf/"):
            target = conf / path.removeprefix("conf/")
        elif path != "src/normlab/schemas.py":
            target = code / Path(path).name
        else:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(local(text))
    monkeypatch.syspath_prepend(str(code))

    namespace = dict(vars(schemas))  # the schema block is written to live in schemas.py
    exec(local(blocks["src/normlab/schemas.py"]), namespace)
    monkeypatch.setitem(config.SCHEMAS["model"], "logreg", namespace["LogisticRegressionSchema"])
    config.register_schemas()
    return conf


def test_readme_model_dataset_and_diagnostic_train_together(recipes, compose_cfg, tmp_path):
    search = f"hydra.searchpath=[file://{recipes}]"
    cfg = compose_cfg(
        [search, "model=logreg", "data=iris", "callbacks=[default,param_norm]", "callbacks.param_norm.every_n_steps=5"]
        + ["trainer.max_steps=20"]
    )
    with open_dict(cfg):
        del cfg["hydra"]  # as Hydra hands the config to the task function
    metrics = train(cfg)

    assert 0.0 <= metrics["test/acc"] <= 1.0
    logged = dict(read_scalars(tmp_path / "run"))
    assert [step for step, _ in logged["diag/param_norm"]] == [5, 10, 15, 20]
    assert all(value > 0 for _, value in logged["diag/param_norm"])


def test_readme_schema_checks_the_new_model_and_mlps_take_the_new_data(recipes, compose_cfg):
    search = f"hydra.searchpath=[file://{recipes}]"
    with pytest.raises(ConfigError, match=r"model\.num_classes=0"):
        config.validate(compose_cfg([search, "model=logreg", "model.num_classes=0"]))

    cfg = compose_cfg([search, "model=baseline_mlp", "data=iris"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (8, 4) and instantiate(cfg.model)(x).shape == (8, 3)


def test_readme_regression_task_trains_and_evaluates_without_touching_the_entry_points(recipes, compose_cfg, tmp_path):
    search = f"hydra.searchpath=[file://{recipes}]"
    cfg = compose_cfg([search, "task=regression", "data=linear", "trainer.max_steps=200", "callbacks=[checkpoint]"])
    with open_dict(cfg):
        del cfg["hydra"]
    metrics = train(cfg)

    assert type(metrics["test/loss"]) is float and "test/acc" not in metrics
    logged = dict(read_scalars(tmp_path / "run"))
    first, last = logged["train/loss"][0][1], logged["train/loss"][-1][1]
    assert last < first / 4, (first, last)  # it learns the linear map
    best = next((tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))

    evaluated = evaluate(compose_cfg([search, f"ckpt_path={best}"], config_name="eval"))
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)
    assert evaluated["val/loss"] < first
