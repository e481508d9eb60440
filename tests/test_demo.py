"""The README's main job runs and checks its own results."""
import gpumat as gm
from gpumat.__main__ import main


def test_demo_runs_on_every_backend(backend, capsys):
    before = gm.default_backend()
    try:
        assert main(["demo", "--backend", backend, "--size", "96"]) == 0
    finally:
        gm.use(before)
    out = capsys.readouterr().out
    assert f"running on backend '{backend}'" in out
    assert "MISMATCH" not in out and "all results match NumPy" in out


def test_info_lists_every_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("cuda", "opencl", "cpu"):
        assert name in out
