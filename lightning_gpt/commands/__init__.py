"""One module per command (`lightning-gpt NAME`): its DESCRIPTION, `add_arguments(parser)` and `run(args)`, with only
light imports at the top, so that `--help` answers at once; lightning_gpt/__main__.py dispatches to them."""
