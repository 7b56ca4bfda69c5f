"""benchmarks/gpu_check.sh's benchmark in its CPU fallback (--smoke): every part runs and reports, so the script is
ready when a GPU is lent (the GPU numbers themselves are in benchmarks/results/ once measured)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_gpu():
    sys.path.insert(0, str(BENCHMARKS))
    import bench_gpu

    yield bench_gpu
    sys.path.remove(str(BENCHMARKS))


def test_smoke_run_measures_every_part(bench_gpu, tmp_path, capsys):
    result = bench_gpu.main(["--smoke", "--repeats", "1", "--out-dir", str(tmp_path), "--threads", "1"])
    capsys.readouterr()
    assert result["smoke"] and result["settings"]["device"] == "cpu"
    train = result["training"]["models"]
    assert set(train) == {"gcnn-8", "gcnn-14", "reference"}
    for name, m in train.items():
        for precision in ("bf16", "fp16"):
            assert m[precision]["tokens_per_s"] > 0 and 0 < m[precision]["fraction_of_peak"], (name, precision)
    assert train["reference"]["bf16"]["ratio_to_reference"] == 1.0 and train["gcnn-14"]["bf16"]["ratio_to_reference"] is None
    table4 = result["table4"]["models"]
    assert set(table4) == {"lstm-2048", "gcnn-9", "gcnn-8b"}
    assert all(m[p]["responsiveness_tokens_per_s"] > 0 for m in table4.values() for p in ("fp32", "bf16"))
    assert result["generation"]["generated"] == result["generation"]["new_tokens"]  # greedy, no end marker
    assert result["ddp"]["ok"] and result["ddp"]["backend"] == "gloo"
    written = json.loads(next(tmp_path.glob("*-gpu-smoke.json")).read_text())
    assert written["table_markdown"] == result["table_markdown"] and "One DDP step over gloo: ok" in written["table_markdown"]


def test_gpu_check_script_refuses_clearly_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the script would run the real check")
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "no CUDA GPU visible" in proc.stderr and "--smoke" in proc.stderr
    assert not list(tmp_path.iterdir())
