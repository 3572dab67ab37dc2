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
