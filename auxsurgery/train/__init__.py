"""Training: the joint objective, the fine-tuning engine, adversarial training and DDP.

    from auxsurgery.train import TrainConfig, finetune
    result = finetune(aux_model, train_data, val_data, TrainConfig(epochs=10, out_dir="runs/x"))
"""
from auxsurgery.train.adversarial import (
    TrainingMethod,
    adversarial_preset,
    get_training_method,
    list_training_methods,
    register_training_method,
)
from auxsurgery.train.config import AdversarialConfig, TrainConfig, paper_config
from auxsurgery.train.engine import FinetuneResult, StepInfo, finetune
from auxsurgery.train.meter import NonFiniteLossError
from auxsurgery.train.objective import HeadAccuracy, head_losses, joint_loss
from auxsurgery.train.signals import TrainingInterrupted
from auxsurgery.train.start import starting_model
from auxsurgery.train.validation import evaluate

__all__ = [
    "AdversarialConfig",
    "FinetuneResult",
    "HeadAccuracy",
    "NonFiniteLossError",
    "StepInfo",
    "TrainConfig",
    "TrainingInterrupted",
    "TrainingMethod",
    "adversarial_preset",
    "evaluate",
    "finetune",
    "get_training_method",
    "head_losses",
    "joint_loss",
    "list_training_methods",
    "paper_config",
    "register_training_method",
    "starting_model",
]
