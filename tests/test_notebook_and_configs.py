"""The Colab notebook's code cells run on CPU with the smoke config; every config builds."""

import importlib
import json
import pathlib

import jax
import pytest
from flax import nnx

from irnet_jax.train_state import build_model

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem not in ("__init__", "default", "common"))


def notebook_code_cells():
    nb = json.loads((REPO / "notebooks" / "colab_tpu.ipynb").read_text())
    return [("".join(c["source"]), c["metadata"].get("tags", [])) for c in nb["cells"] if c["cell_type"] == "code"]


def python_lines(source: str) -> str:
    """The cell without IPython shell (!) and magic (%) lines, which need Colab."""
    return "\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("!", "%")))


def test_notebook_cells_train_the_smoke_config_on_cpu(tfds_dir, tmp_path):
    cells = notebook_code_cells()
    assert sum("parameters" in tags for _, tags in cells) == 1
    namespace: dict = {}
    for source, tags in cells:
        exec(compile(python_lines(source), "colab_tpu.ipynb", "exec"), namespace)
        if "parameters" in tags:  # what papermill would inject: the smoke config, on CPU
            namespace.update(
                REPO_DIR=str(REPO),
                CONFIG_NAME="smoke",
                WORKDIR=str(tmp_path / "nb"),
                REQUIRE_ACCELERATOR=False,
                OVERRIDES={"data_dir": tfds_dir, "num_train_steps": 120, "log_every_steps": 40},
            )
    assert namespace["summary"]["final_test_accuracy"] > 0.9  # 120 steps of the smoke run reach ~0.96
    assert namespace["eval_result"]["val_accuracy"] == pytest.approx(namespace["summary"]["best_val_accuracy"])


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_every_field_is_overridable(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    flat = json.loads(config.to_json())

    def walk(d, prefix=""):
        for k, v in d.items():
            assert v is not None, f"{name}: field {prefix}{k} defaults to None (not overridable from the CLI)"
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(flat)
    model = jax.eval_shape(lambda: nnx.split(build_model(config, nnx.Rngs(0)))[1])
    assert len(jax.tree.leaves(model)) > 0


def test_experiment_configs_exist():
    expected = {
        "vgg_small_cifar10",
        "alexnet_cifar10",
        "resnet20_cifar10",
        "resnet20_1w32a_cifar10",
        "resnet18_cifar10",
        "vgg_small_mnist",
        "alexnet_mnist",
        "resnet20_mnist",
        "resnet20_1w32a_mnist",
        "resnet18_mnist",
        "mnistnet_mnist",
        "smoke",
    }
    assert expected <= set(CONFIGS)


@pytest.mark.parametrize(
    "name,base",
    [("irnet_resnet20_1w1a_cifar10", "resnet20_cifar10"), ("irnet_vgg_small_1w1a_cifar10", "vgg_small_cifar10")],
)
def test_irnet_configs_are_the_official_recipe(name, base):
    """The official mechanics (README, "The official recipe"); everything else as the project's config."""
    official = importlib.import_module(f"configs.{name}").get_config().to_dict()
    own = importlib.import_module(f"configs.{base}").get_config().to_dict()
    expected = {"validation_size": 0, "lr_per_epoch": True, "ede_per_epoch": True, "normalization": "imagenet"}
    assert {k: official[k] for k in expected} == expected
    assert {k: v for k, v in official.items() if k not in expected} == {
        k: v for k, v in own.items() if k not in expected
    }
