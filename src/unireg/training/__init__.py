"""Training: data synthesis, pre-training and training of UniReg models."""
