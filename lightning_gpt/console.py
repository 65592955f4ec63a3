"""What the console shows: the project's own INFO messages (init_from loaded, a token cache reused or built, SFT
padding waste), and not Lightning's advertising tips or a deprecation warning that Lightning itself triggers."""

from __future__ import annotations

import logging
import os
import sys
import warnings

PACKAGES = ("lightning_gpt", "data_modules", "callbacks")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes (a caller may have replaced it since: pytest's capture,
    a redirect), not to the one there was when the handler was made."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one line in the project's voice: its message only, without the path and line of the
    (often library) code it was raised from, nor that source line."""
    text = str(message).strip().splitlines()
    print(f"lightning-gpt: warning: {text[0] if text else category.__name__}", file=file or sys.stderr)


def configure_console() -> None:
    """For the console script only (a library import changes no logging). Calling it twice changes nothing more."""
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if not any(getattr(h, "_lightning_gpt", False) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))  # as Lightning's own lines look
            handler._lightning_gpt = True
            logger.addHandler(handler)
    # Lightning's rank-zero messages (fabric's and pytorch's) include one-line adverts for its cloud services.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        rank_zero = logging.getLogger(name)
        if _not_a_tip not in rank_zero.filters:
            rank_zero.addFilter(_not_a_tip)
    # Raised inside Lightning's own pytree helper with torch 2.13, once per run; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning's, for an epoch of fewer batches than log_every_n_steps (a small corpus): the training modules log
    # each optimizer step themselves, by global step, so nothing is lost.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
    # Lightning's, on every resume into the run's own checkpoint folder (before_fit refuses a fresh run there).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.showwarning = one_line_warning
    # datasets' "Generating train split" bars: the caches' own lines say what is read and encoded.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
