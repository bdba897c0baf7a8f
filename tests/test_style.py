"""The tree stays formatted and lint-clean under the project's ruff configuration (pyproject.toml)."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff(*args):
  exe = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
  return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_formatted():
  r = _ruff("format", "--check", ".")
  assert r.returncode == 0, r.stdout + r.stderr


def test_lint_clean():
  r = _ruff("check", ".")
  assert r.returncode == 0, r.stdout + r.stderr
