"""Reading hub datasets (data_modules/hf_loading.py): with the hub out of reach, datasets runs offline."""

import datasets
from huggingface_hub import constants

from data_modules.hf_loading import hub_reachable, offline_unless_hub_reachable


def test_an_unreachable_hub_turns_on_offline_mode_and_restores_it(monkeypatch):
    """No HF_HUB_OFFLINE and a hub that refuses connections: datasets runs offline (a cached dataset would still
    load; others fail at once instead of after half a minute of retries); the one line that names --data_path is
    tests/lightning_gpt/commands/test_evaluate_chat.py's."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert not hub_reachable()
    with offline_unless_hub_reachable():
        assert datasets.config.HF_HUB_OFFLINE and constants.HF_HUB_OFFLINE
    assert not constants.HF_HUB_OFFLINE  # restored
