"""GenerateSamples: text samples of the model at each validation, in TensorBoard's text tab as markdown."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks import GenerateSamples
from callbacks.text_samples import markdown_sample
from data_modules import WikiText103
from tests.conftest import tiny_module, trainer


def test_samples_callback_logs_text_to_tensorboard(wikitext_dir, tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    dm = WikiText103(path=str(wikitext_dir), block_size=32, batch_size=4, num_workers=0)
    samples = GenerateSamples(prompts=["The cat", "A dog"], max_new_tokens=6)
    logger = TensorBoardLogger(tmp_path, name="tb")
    run = trainer(tmp_path, 4, [samples], logger=logger, limit_val_batches=2, val_check_interval=4)
    run.fit(tiny_module(dm), dm)
    assert len(samples.last_samples) == 2 and all(samples.last_samples)
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    assert {"samples/0/text_summary", "samples/1/text_summary"} <= set(events.Tags()["tensors"])


def test_samples_render_as_markdown_with_their_line_breaks():
    from tensorboard.plugin_util import markdown_to_safe_html  # what TensorBoard's text tab does with them

    html = markdown_to_safe_html(markdown_sample("Write a list.", "Here:\n- one *big*\n- two\nDone."))
    assert "<strong>Write a list.</strong>" in html and "<em>big</em>" in html  # markdown, not a code block
    assert "Here:<br" in html and "- two<br" in html and "<pre>" not in html  # each line on its own line
