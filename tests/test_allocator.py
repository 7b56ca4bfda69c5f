"""gcnn.allocator.retain_freed_memory: a large tensor freed and allocated again reuses mapped pages (few page
faults) instead of faulting fresh ones in; the environment can turn it off. Each case runs in a fresh process, as the
setting is process-wide."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
import torch
from gcnn.allocator import retain_freed_memory
applied = retain_freed_memory()
def faults_of_a_48_mb_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(12 * 2**20)  # 48 MB (above glibc's 32 MB heap ceiling), written: every page touched
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_48_mb_tensor()  # the first one maps its pages in either way
again = [faults_of_a_48_mb_tensor() for _ in range(8)]
print(json.dumps({"applied": applied, "again": again, "twice": retain_freed_memory()}))
"""


def probe(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env}, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_a_freed_large_tensor_leaves_its_pages_mapped_for_the_next():
    retained = probe(GCNN_RETAIN_MEMORY="1")
    default = probe(GCNN_RETAIN_MEMORY="0")
    assert retained["applied"] and retained["twice"]
    assert not default["applied"] and not default["twice"]
    pages = 48 * 2**20 // 4096
    # the default maps and unmaps such a tensor every time: a fault per page, each of the 8 times
    assert all(n > pages // 2 for n in default["again"]), default
    # retained, the pages are reused (glibc still hands some requests fresh memory: at least half are fault-free)
    assert sum(n < pages // 20 for n in retained["again"]) >= 4, retained


def test_the_command_line_retains_freed_memory(monkeypatch):
    import gcnn.allocator as allocator
    from gcnn.cli import main

    calls = []
    monkeypatch.setattr(allocator, "retain_freed_memory", lambda: calls.append(1) or True)
    assert main(["archs"]) == 0
    assert calls == [1]
