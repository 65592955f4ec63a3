"""TensorBoard with the curves grouped for reading: each metric's train, validation and test values side by side
(`loss/train`, `loss/val`, `loss/test`), and no `hp_metric` placeholder."""

from __future__ import annotations

from lightning.pytorch.loggers import TensorBoardLogger

STAGES = ("train", "val", "test")
# Names that the stage rule would misread.
TAGS = {
    "train_eval_loss": "loss/train_eval",  # the training sample scored like validation (no dropout)
    "train_val_gap": "loss/val_minus_train_eval",
}


def tensorboard_tag(name: str) -> str:
    """The tag a logged metric gets: `<stage>_<metric>` becomes `<metric>/<stage>`, so that TensorBoard puts a
    metric's stages in one section (`val_loss` -> `loss/val`, `val_rewards/accuracies` ->
    `rewards/accuracies/val`, `train_rewards/chosen` -> `rewards/chosen/train`); names without a stage stay as they are
    (`tokens_seen`, `learning_rate/decayed`). The throughput monitor's `train/...` and `validate/...` are its own."""
    if name in TAGS:
        return TAGS[name]
    stage, _, metric = name.partition("_")
    return f"{metric}/{stage}" if stage in STAGES and metric else name


class TensorBoard(TensorBoardLogger):
    """Lightning's TensorBoardLogger, with tags renamed by `tensorboard_tag` and `default_hp_metric` off (its -1
    placeholder is not a metric). Metrics keep their names everywhere else (callbacks monitor `val_loss`).
    Same arguments as TensorBoardLogger."""

    def __init__(self, *args, default_hp_metric: bool = False, **kwargs) -> None:
        super().__init__(*args, default_hp_metric=default_hp_metric, **kwargs)

    def log_metrics(self, metrics, step: int | None = None) -> None:
        super().log_metrics({tensorboard_tag(name): value for name, value in metrics.items()}, step)
