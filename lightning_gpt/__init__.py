"""lightning-gpt: train a GPT from scratch and turn it into a chat model, with PyTorch Lightning."""
