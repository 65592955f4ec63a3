"""Reading a dataset split through `datasets.load_dataset` (a hub id or a local folder in the hub's layout), with
one clear error that names the flag, the file or the column when the data cannot be read."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from lightning_gpt.errors import UserInputError

log = logging.getLogger(__name__)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host ($HF_ENDPOINT) answers a TCP connection within `timeout` seconds."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextmanager
def offline_unless_hub_reachable() -> Iterator[None]:
    """Offline mode for datasets and huggingface_hub while the hub cannot be reached: a dataset in the local cache
    still loads, and one that is not fails at once, instead of after half a minute of retries."""
    import datasets
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def load_hf_split(path: str, name: str | None, split: str, scratch_dir: str | None = None, flag: str = "--data.path"):
    """One `datasets.load_dataset` call for a hub id or a local folder, with errors that say what to do and name
    `flag`, the option that gave `path`.

    A local folder is converted in `scratch_dir`: datasets' shared cache keys local folders loosely and can
    serve a stale copy (even stale column types) of a folder whose files were replaced.
    """
    import datasets  # heavy; only the processes that read raw data need it

    local = Path(path).expanduser()
    looks_local = path.startswith((".", "/", "~")) or local.exists()
    if looks_local and not local.is_dir():
        raise UserInputError(
            f"{flag} {path}: no such folder. Pass a folder in the Hugging Face hub's layout "
            "(e.g. ../shared/data/hub/Salesforce/wikitext) or a hub dataset id."
        )
    logged: list[str] = []
    try:
        with _datasets_errors_kept(logged):
            if looks_local:
                return datasets.load_dataset(str(local), name, split=split, cache_dir=scratch_dir)
            with offline_unless_hub_reachable():
                return datasets.load_dataset(path, name, split=split)
    except ConnectionError as err:
        raise UserInputError(
            f"could not reach the Hugging Face hub for dataset {path!r} ({err}). Offline, pass a local copy in the "
            f"hub's layout with {flag} DIR (for example a mirror's folder DIR/{path})."
        ) from None
    except datasets.exceptions.DatasetGenerationError as err:
        # Loading one split prepares them all, so the file at fault may belong to another split: find it.
        found = find_bad_data_file(path, name) if looks_local else None
        if found:
            raise UserInputError(f"{flag} {path}: {found}; fix or replace that file.") from None
        cause = err.__cause__ or err
        what = logged[-1] if logged else f"{type(cause).__name__}: {cause}"
        raise UserInputError(
            f"could not read the data files of {flag} {path} ({what}); "
            "check that the files of every split are valid and not empty."
        ) from None
    except ValueError as err:  # unknown split or config name: datasets lists the ones that exist
        raise UserInputError(f"{flag} {path} (config {name!r}, split {split!r}): {err}") from None
    except FileNotFoundError as err:
        raise UserInputError(f"{flag} {path}: {err}") from None


@contextmanager
def _datasets_errors_kept(into: list[str]) -> Iterator[None]:
    """datasets logs the file it failed on, then raises an error that does not name it: keep those lines (the first
    line of each) for the message instead of printing them, so that the user reads one message."""

    def keep(record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        into.append(record.getMessage().split("\n", 1)[0])
        return False

    handlers = list(logging.getLogger("datasets").handlers)
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


_TEXT_SUFFIXES = (".txt", ".json", ".jsonl", ".csv", ".tsv")


def find_bad_data_file(path: str, name: str | None, split: str | None = None) -> str | None:
    """Which data file of a local folder datasets cannot use, and why ("split 'x': file F is empty"), looking at
    one split or all of them; None when no file shows a problem. Only called to explain an error."""
    import datasets

    try:
        with tempfile.TemporaryDirectory() as scratch:  # resolving the data files reads no data
            builder = datasets.load_dataset_builder(str(Path(path).expanduser()), name, cache_dir=scratch)
        data_files = dict(builder.config.data_files or {})
    except Exception:  # explaining an error must not raise another one
        return None
    for split_name, files in data_files.items():
        if split is not None and split_name != split:
            continue
        for file in files:
            try:
                problem = _file_problem(Path(file))
            except OSError:
                continue
            if problem:
                return f"split {split_name!r}: file {file} {problem}"
    return None


def _file_problem(file: Path) -> str | None:
    if file.stat().st_size == 0:
        return "is empty"
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            if pq.ParquetFile(file).metadata.num_rows == 0:
                return "has no rows"
            table = pq.read_table(file)
        except Exception as err:
            return f"cannot be read as parquet ({err})"
        for column in table.column_names:
            try:
                table.column(column).validate(full=True)
            except Exception as err:  # e.g. strings that are not UTF-8
                return f"has invalid values in column {column!r} ({str(err).rsplit(': ', 1)[-1]})"
        return None
    if file.suffix in _TEXT_SUFFIXES:
        with open(file, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as err:
                    return f"is not valid UTF-8 text at line {number} ({err.reason}, byte {err.object[err.start]:#04x})"
    return None
