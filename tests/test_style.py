"""The tree stays formatted and lint-clean under the project's ruff configuration (pyproject.toml)."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff(*args):
  # the ruff installed beside this interpreter first: an unactivated venv's PATH may hold a pyenv shim
  # that finds no ruff
  beside = os.path.join(os.path.dirname(sys.executable), "ruff")
  exe = beside if os.path.exists(beside) else shutil.which("ruff")
  return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_formatted():
  r = _ruff("format", "--check", ".")
  assert r.returncode == 0, r.stdout + r.stderr


def test_lint_clean():
  r = _ruff("check", ".")
  assert r.returncode == 0, r.stdout + r.stderr
