"""absl flag parsing for the CLIs that take an ml_collections `--config` (train, evaluate): a bad
`--config.key=value` override is reported in one line naming it, instead of a traceback."""

import sys

from absl import flags


def parse_flags(argv):
  """absl's flag parsing, with a bad `--config.key=value` override reported in one line naming it."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}\nPass --helpfull to see the flags.", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # raised by config_flags overrides
    key = str(e).strip("'\" ")
    given = [a for a in argv if a.startswith("--config.")]
    culprit = next((a for a in given if a.split("=")[0].split(".")[-1] == key), None) or " ".join(given)
    print(
      f"error: bad config override {culprit}: {type(e).__name__}: {e} (no such key, or a wrong type)", file=sys.stderr
    )
    sys.exit(2)
