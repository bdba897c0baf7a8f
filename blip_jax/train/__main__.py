"""python -m blip_jax.train --config experiments/demo.py[:variant] --workdir DIR [--config.key=value ...]

Trains (or resumes) the experiment in DIR. See README.md and blip_jax/train/trainer.py.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from blip_jax.train.trainer import train

config_flags.DEFINE_config_file("config", None, "experiment config file, optionally with :variant", lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, metrics, TensorBoard events and the resolved config")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; --verbosity=0 brings it back
    logging.set_verbosity(logging.WARNING)
  train(flags.FLAGS.config, flags.FLAGS.workdir)


def run():
  """Console entry point (`blip-jax-train`)."""
  app.run(main)


if __name__ == "__main__":
  run()
