"""The DataModules' family tree is two levels deep: every dataset's DataModule stands directly on TokenDataModule,
with no mixin, so a reader finds each of its methods in its own file or in data_modules/base.py (what datasets share
beyond the base is composed: tokenizer_setting.py, token_stream.py, chat_encoding.py)."""

import importlib
import inspect
import pkgutil

import lightning as L

import data_modules
from data_modules.base import TokenDataModule


def data_module_classes() -> dict[str, type]:
    """Every LightningDataModule defined in a module of data_modules, exported or not."""
    found = {}
    for info in pkgutil.iter_modules(data_modules.__path__):
        module = importlib.import_module(f"data_modules.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, L.LightningDataModule):
                found[f"{module.__name__}.{name}"] = cls
    return found


def test_every_dataset_module_stands_directly_on_the_one_base():
    classes = data_module_classes()
    assert {cls.__name__ for cls in classes.values()} >= set(data_modules.__all__)
    for name, cls in classes.items():
        expected = (L.LightningDataModule,) if cls is TokenDataModule else (TokenDataModule,)
        assert cls.__bases__ == expected, f"{name} stands on {cls.__bases__}"
