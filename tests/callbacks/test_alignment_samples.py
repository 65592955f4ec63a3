"""The alignment curves of a DPO run: rewards, KL and entropy of answers sampled for held-out prompts."""

import torch
import torch.nn.functional as F

from callbacks.alignment_samples import sample_metrics
from data_modules.ultrafeedback import answer_rows
from lightning_gpt.chat import END_OF_TURN, chat_tokenizer
from lightning_gpt.generate import SamplingSettings, generate
from lightning_gpt.model import GPT, IGNORE_INDEX, GPTConfig
from lightning_gpt.training.reward_model import RewardModule

TOKENIZER = chat_tokenizer()
END = TOKENIZER.token_id(END_OF_TURN)
SHAPE = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 48, "vocab_size": TOKENIZER.vocab_size}


def tiny_gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**SHAPE)).eval()


def prompts() -> list[list[int]]:
    texts = ["Name a fish.", "What is red?", "Say hi.", "Count to three please.", "Why?"]
    return [[TOKENIZER.eot_id, *TOKENIZER.encode(t)] for t in texts]


def sequence_logp(model: GPT, prompt: list[int], answer: list[int]) -> float:
    """log p(answer | prompt), one token at a time from the full logits."""
    ids = torch.tensor([prompt + answer])
    log_probs = F.log_softmax(model.logits(ids)[0].float(), dim=-1)  # (T, V)
    return sum(float(log_probs[len(prompt) - 1 + i, token]) for i, token in enumerate(answer))


def test_a_policy_equal_to_its_reference_has_no_kl_and_the_reward_is_the_reward_models():
    policy, reference = tiny_gpt(0), tiny_gpt(0)
    torch.manual_seed(1)
    reward = RewardModule(preset="tiny", **SHAPE).eval()
    metrics = sample_metrics(policy, reference, prompts(), END, TOKENIZER.eot_id, 12, reward, batch_size=2, seed=3)
    assert metrics["kl"] == 0.0 and metrics["entropy"] > 0 and 1 <= metrics["length"] <= 13
    answers = generate(policy, prompts(), SamplingSettings(max_new_tokens=12, temperature=1.0, stop_ids=(END,), seed=3))
    answers = [a + [END] if len(a) < 12 else a for a in answers]
    x, y = answer_rows(list(zip(prompts(), answers, strict=True)), TOKENIZER.eot_id)
    with torch.no_grad():
        assert abs(metrics["reward"] - float(reward.rewards(x, y).mean())) < 1e-5
    assert metrics["length"] == float((y != IGNORE_INDEX).sum()) / len(answers)


def test_the_kl_is_the_mean_log_ratio_of_the_sampled_answers_and_no_reward_without_a_reward_model():
    policy, reference = tiny_gpt(0), tiny_gpt(1)
    metrics = sample_metrics(policy, reference, prompts(), END, TOKENIZER.eot_id, 10, None, batch_size=3, seed=5)
    assert "reward" not in metrics
    answers = generate(policy, prompts(), SamplingSettings(max_new_tokens=10, temperature=1.0, stop_ids=(END,), seed=5))
    answers = [a + [END] if len(a) < 10 else a for a in answers]
    pairs = zip(prompts(), answers, strict=True)
    by_hand = [sequence_logp(policy, p, a) - sequence_logp(reference, p, a) for p, a in pairs]
    assert abs(metrics["kl"] - sum(by_hand) / len(by_hand)) < 1e-3
