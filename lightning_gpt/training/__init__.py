"""What training runs: one LightningModule per objective (language model, DPO, reward model) on a shared base, the
losses as pure functions, the optimizer and schedule, and the TensorBoard logger the configs name."""

from lightning_gpt.training.base import TrainingModule
from lightning_gpt.training.dpo import DPOModule
from lightning_gpt.training.language_model import GPTModule
from lightning_gpt.training.reward_model import RewardModule
from lightning_gpt.training.tensorboard import TensorBoard

__all__ = ["DPOModule", "GPTModule", "RewardModule", "TensorBoard", "TrainingModule"]
