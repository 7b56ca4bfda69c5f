"""benchmarks/bench_fastpath.py runs end to end with --smoke and writes a complete dated report."""

import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def fastpath(tmp_path_factory):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_fastpath

        out = tmp_path_factory.mktemp("results")
        yield out, bench_fastpath.main(["--smoke", "--repeats", "1", "--warmup", "0", "--out-dir", str(out)])
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_writes_a_dated_report(fastpath):
    out, result = fastpath
    stem = sorted(out.glob("*-fastpath.json"))[-1].with_suffix("")
    assert json.loads(stem.with_suffix(".json").read_text()) == result
    assert stem.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    markdown = stem.with_suffix(".md").read_text()
    assert result["command"] in markdown and result["table_markdown"] in markdown
    assert len(result["machine"]["commit"]) == 40 and result["machine"]["torch"] == torch.__version__
    assert result["smoke"] is True and result["benchmark"] == "fastpath"


def test_evaluation_against_the_reference_and_the_peak(fastpath):
    evaluation = fastpath[1]["evaluation"]
    assert set(evaluation["models"]) == {"gcnn", "reference"}
    for m in evaluation["models"].values():
        for precision in ("fp32", "bf16"):
            r = m[precision]
            assert r["tokens_per_s"] > 0 and r["fraction_of_peak"] > 0 and r["ratio_to_reference"] > 0
    assert evaluation["models"]["reference"]["bf16"]["ratio_to_reference"] == 1.0
    assert evaluation["matmul_peak"]["bf16"]["flops_per_s"] > 0


def test_generation_modes_bandwidth_and_bound(fastpath):
    result = fastpath[1]
    assert set(result["generation"]) == {"1", "2"}
    sizes = result["weight_bytes_per_token"]
    assert sizes["fp32"]["bytes"] == 2 * sizes["bf16"]["bytes"] > sizes["int8"]["bytes"] > 0
    for threads in result["generation"].values():
        assert threads["read_bandwidth_bytes_per_s"] > 0
        modes = threads["modes"]
        assert set(modes) == {"gcnn fp32 cache", "gcnn bf16 cache", "gcnn int8 cache", "reference fp32 window"}
        for r in modes.values():
            assert r["decode_tokens_per_s"] > 0 and r["tokens_per_s"] > 0
            assert r["bandwidth_bound_tokens_per_s"] == pytest.approx(
                threads["read_bandwidth_bytes_per_s"] / r["weight_bytes_per_token"], rel=1e-3
            )
        assert modes["reference fp32 window"]["ratio_to_reference"] == 1.0
        assert modes["gcnn fp32 cache"]["same_tokens_as_fp32"] is True


def test_profile_of_a_training_step(fastpath):
    profile = fastpath[1]["profile"]
    for name in ("gcnn", "reference"):
        r = profile[name]
        assert r["step_seconds_median"] > 0 and 0 < r["matmul_share_of_self_cpu"] <= 1
        assert r["top_ops"] and all(o["self_cpu_ms"] >= 0 for o in r["top_ops"])
    assert profile["reference_seconds_over_gcnn_seconds_at_peak"] > 0
