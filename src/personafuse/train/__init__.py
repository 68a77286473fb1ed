"""Training: one flat recipe module per stage (experts SFT, router, preference) plus shared config/metrics."""

from personafuse.train.config import STAGES, TrainConfig, load_train_config

__all__ = ["STAGES", "TrainConfig", "load_train_config"]
