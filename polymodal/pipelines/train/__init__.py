"""The training wing: a run's `TrainConfig` (`load_config`), the `Trainer` loop, the tasks that
say what a run learns and what "best" means, evaluation with its cross-rank half, the run's
report (epoch line, plot, TensorBoard), optimisers, augmentation, weights in and out. The only
wing that imports the model."""

from .config import TrainConfig, load_config
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "load_config"]
