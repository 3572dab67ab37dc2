"""Shared fixtures: the TFDS data dir (``$TFDS_DATA_DIR``, else ``../shared/data/tensorflow_datasets``)."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def data_dir() -> str:
    path = os.environ.get("TFDS_DATA_DIR") or str(REPO.parent / "shared" / "data" / "tensorflow_datasets")
    if not os.path.isdir(os.path.join(path, "mnist")):
        pytest.fail(
            f"TFDS data not found in {path}: set TFDS_DATA_DIR to a directory holding prepared "
            f"mnist/ and cifar10/ (README, 'Tests')"
        )
    return path


@pytest.fixture(scope="session")
def tfds_dir() -> str:
    return data_dir()


# Test files, slowest first (seconds each on a 2-core Zen 3 VM with two xdist workers, 2026-12-07:
# export ~1,800, trainer ~1,100, multiprocess ~670, faults ~600, models ~550, variants ~430, the rest
# < 300). With `--dist loadfile --no-loadscope-reorder` (README's test command) the workers take whole
# files in this order, so no slow file is left to run alone at the end.
SLOWEST_FIRST = (
    "test_export.py",
    "test_trainer.py",
    "test_multiprocess.py",
    "test_faults.py",
    "test_models.py",
    "test_variants.py",
    "test_multidevice.py",
    "test_bench.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Orders the collected tests file by file as ``SLOWEST_FIRST`` (other files after, in their order)."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)
