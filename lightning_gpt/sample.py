"""The built-in sample data (lightning_gpt/sample_data/): a tiny real sample of each dataset the training stages
read, in the hub's layout, so that a smoke run works on a fresh clone, offline. `--data.path sample` names it: each
DataModule that has one (its `sample` attribute) reads its own dataset's folder there."""

from __future__ import annotations

from pathlib import Path

from lightning_gpt.errors import UserInputError

SAMPLE = "sample"  # the --data.path value that names the built-in sample
SAMPLE_ROOT = Path(__file__).resolve().parent / "sample_data"


def sample_folder(dataset: str) -> Path:
    """The sample of hub dataset `dataset` ("Salesforce/wikitext"): a folder `datasets.load_dataset` reads."""
    return SAMPLE_ROOT / dataset


def resolve_sample(path: str, dataset: str | None) -> str:
    """`path`, with the keyword `sample` replaced by the folder of `dataset`'s sample (left as it is where there is
    none: `check_sample` then says so, outside the CLI's constructor, which would bury the error)."""
    if path == SAMPLE and dataset is not None:
        return str(sample_folder(dataset))
    return path


def check_sample(path: str, owner: str) -> None:
    """Refuses `--data.path sample` for a DataModule (`owner`) that has no built-in sample."""
    if path == SAMPLE:
        raise UserInputError(
            f"--data.path sample: {owner} has no built-in sample (there is one for WikiText103, UltraChat200k and "
            "UltraFeedback); pass --data.path DIR (a folder of your files, or a dataset in the hub's layout) or a hub "
            "dataset id."
        )
