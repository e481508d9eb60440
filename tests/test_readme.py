"""The README's example runs on every backend and gives the same numbers."""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np

from conftest import TESTED

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def example_code():
    text = README.read_text()
    section = text[text.index("## Ten lines"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_example_is_ten_lines_of_code():
    lines = [l for l in example_code().splitlines() if l.strip() and not l.startswith("import")]
    assert len(lines) <= 10


def test_example_gives_the_same_numbers_on_every_backend(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(example_code())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(README.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("OPENBLAS_THREAD_TIMEOUT", None)    # the example's own import order decides it
    outputs = {}
    for backend in TESTED:
        run = subprocess.run([sys.executable, str(script), backend], capture_output=True,
                             text=True, timeout=300, env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert "Warning" not in run.stderr, run.stderr     # (BlasSpinWarning on cpu)
        name, rest = run.stdout.strip().split(" ", 1)
        assert name == backend
        shape = rest[:rest.index(")") + 1]
        values = np.array([float(v) for v in rest[rest.index("[") + 1:rest.index("]")].split()])
        outputs[backend] = (shape, values)
    reference = outputs["cpu"]
    for backend, (shape, values) in outputs.items():
        assert shape == reference[0] == "(512, 64)"
        np.testing.assert_allclose(values, reference[1], atol=2e-4, err_msg=backend)
