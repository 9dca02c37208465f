"""Training: loss, optimiser, train state, jitted steps, the loop, export and the CLI."""

from allegro_jax.io.model import load_model, save_model
from allegro_jax.train.config import TrainConfig, load_config
from allegro_jax.train.loop import NonFiniteLossError, train_and_evaluate
from allegro_jax.train.state import TrainState, create_train_state
from allegro_jax.train.step import make_eval_step, make_train_step

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "TrainState",
    "create_train_state",
    "load_config",
    "load_model",
    "make_eval_step",
    "make_train_step",
    "save_model",
    "train_and_evaluate",
]
