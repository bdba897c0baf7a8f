"""Test setup: 8 simulated CPU devices (set before jax is imported anywhere), float32 matmuls."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Tests that run the trainer several times compile the same programs: a persistent compilation cache
# (per test session; shared with the trainer subprocesses through JAX_COMPILATION_CACHE_DIR) makes the
# repeats cache hits instead of fresh XLA compiles.
_CACHE = tempfile.mkdtemp(prefix="blip_jax_xla_cache_")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: heavy tests (full-size models); run with -m slow")


@pytest.fixture(scope="session")
def devices():
  assert len(jax.devices()) == 8, "tests expect 8 simulated CPU devices"
  return jax.devices()


@pytest.fixture(scope="session")
def baseline(tmp_path_factory):
  """An uninterrupted run of the smoke config through the real CLI, checkpointing every 2 steps."""
  from tests.trainer_runs import cli

  wd = tmp_path_factory.mktemp("baseline")
  rc, out = cli(wd, "--config.checkpoint_every=2", "--config.tensorboard=True")
  assert rc == 0, out
  return wd, out
