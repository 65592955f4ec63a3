"""configs/fsdp.yaml cannot run on a CPU (Lightning's FSDP needs CUDA); this checks that its strategy section builds
the strategy it means, through the same jsonargparse types the CLI uses. configs/multi_gpu.yaml (DDP) runs for real
in tests/test_real_configs.py, in two CPU processes."""

from pathlib import Path

import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy
from torch.distributed.fsdp import ShardingStrategy

from lightning_gpt.model import Block

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def strategy_of(config: str) -> Strategy:
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy | str)
    trainer = yaml.safe_load((CONFIGS / config).read_text())["trainer"]
    return parser.instantiate_classes(parser.parse_object({"strategy": trainer["strategy"]})).strategy


def test_fsdp_config_shards_each_transformer_block():
    strategy = strategy_of("fsdp.yaml")
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}  # a ModuleWrapPolicy over Block
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD and strategy._state_dict_type == "full"


def test_multi_gpu_config_is_ddp():
    strategy = strategy_of("multi_gpu.yaml")
    assert isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs["gradient_as_bucket_view"] is True
