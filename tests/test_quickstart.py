"""The README's quickstart runs as written."""

import ast
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


@pytest.mark.slow  # a fresh interpreter
def test_quickstart_runs_and_classifies():
    script = REPO_ROOT / "examples" / "quickstart.py"
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    result = ast.literal_eval(completed.stdout.strip().splitlines()[-1])
    assert sorted(r["label"] for r in result) == ["a blue circle", "a photo of a dog", "a red square"]
    assert abs(sum(r["score"] for r in result) - 1) < 1e-5


def test_readme_quickstart_is_the_script():
    readme = (REPO_ROOT / "README.md").read_text()
    body = (REPO_ROOT / "examples" / "quickstart.py").read_text().split('"""', 2)[2].strip()
    assert body in readme
