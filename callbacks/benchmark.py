"""A benchmark during training: BLiMP's accuracy at each validation, logged beside the losses, as build-nanoGPT and
llm.c plot HellaSwag while they pretrain."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L

from callbacks.text_samples import sampling_from
from lightning_gpt.errors import UserInputError
from lightning_gpt.evaluation.blimp import HUB_ID, EncodedBlimp, encode_paradigms, read_paradigms, score_blimp

log = logging.getLogger(__name__)


def beside_data(data_path: str, training_data: str | None) -> str:
    """`data_path` as given, or, for a hub id, its copy in the local mirror that --data.path reads from (a training
    set at ROOT/Salesforce/wikitext finds BLiMP at ROOT/nyu-mll/blimp), so a run on a local mirror scores offline."""
    if Path(data_path).expanduser().is_dir() or training_data is None:
        return data_path
    for root in Path(training_data).expanduser().resolve().parents:
        if (root / data_path).is_dir():
            return str(root / data_path)
    return data_path


class BlimpAccuracy(L.Callback):
    """BLiMP's accuracy (the mean over its paradigms of the share of minimal pairs whose good sentence the model
    finds likelier, as lm-evaluation-harness's `blimp` scores it) after each validation: `val_blimp_acc`
    (TensorBoard: `blimp_acc/val`), and the seconds it took, `val_blimp_seconds`.

    Its cost is `limit` pairs x paradigms short forward passes per validation (see docs/evaluation.md for what it
    costs at the pretraining config's interval).

    Args:
        data_path: BLiMP in the hub's layout: the hub id, or a local copy. A hub id is looked for first in the
            local mirror that --data.path reads (ROOT/nyu-mll/blimp beside ROOT/Salesforce/wikitext). When the hub
            id can be read from neither, the callback says so once and scores nothing; a local folder that cannot
            be read is an error.
        limit: pairs per paradigm (the first ones); None for all (1,000 each).
        batch_size: sentences per forward pass.
    """

    def __init__(self, data_path: str = HUB_ID, limit: int | None = 50, batch_size: int = 64) -> None:
        super().__init__()
        if limit is not None and limit < 1:
            raise UserInputError(f"BlimpAccuracy limit must be a positive integer or null, got {limit}")
        self.data_path, self.limit, self.batch_size = data_path, limit, batch_size
        self.encoded: EncodedBlimp | None = None
        self.last_scores: dict[str, float] = {}
        self.last_seconds = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        tokenizer = getattr(datamodule, "tokenizer", None)
        if stage != "fit" or self.encoded is not None or tokenizer is None:
            return
        path = beside_data(self.data_path, getattr(datamodule, "path", None))
        flag = "BlimpAccuracy data_path"
        try:
            paradigms = read_paradigms(path, self.limit, flag)
        except UserInputError as err:
            if Path(path).expanduser().is_dir() or path.startswith((".", "/", "~")):
                raise
            log.warning("BLiMP is not scored during this run: %s", err)
            return
        self.encoded = encode_paradigms(tokenizer, paradigms)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.encoded is None:
            return
        start = time.perf_counter()
        with sampling_from(trainer, pl_module):
            self.last_scores = score_blimp(pl_module.model, self.encoded, self.batch_size)
        self.last_seconds = time.perf_counter() - start
        pl_module.log("val_blimp_acc", self.last_scores["blimp"], batch_size=1)
        pl_module.log("val_blimp_seconds", self.last_seconds, batch_size=1)
