"""The GPU acceptance script (``benchmarks/gpu_check.py``): its CPU dry run, its refusal without CUDA, and the full
run on a CUDA device (marked ``gpu``: skipped with the reason "no CUDA device" where there is none)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch

from easyedit_liveedit.toyworld.layout import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "benchmarks" / "gpu_check.py"
STAGES = 8


def run_script(args: list[str], cache, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, str(SCRIPT), *args, "--cache", str(cache), "--out", str(tmp_path / "out")]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)


def stage_lines(stdout: str) -> list[str]:
    """The per-stage lines (progress bars may share a line's start: keep what follows their last carriage return)."""
    lines = [line.split("\r")[-1] for line in stdout.splitlines()]
    return [line for line in lines if re.match(r"[1-8] .* (ok|FAILED) +\d+\.\d s", line)]


@pytest.mark.slow
def test_the_cpu_dry_run_passes_every_stage(small_world, tmp_path):
    done = run_script(["--device", "cpu", "--tiny"], small_world.layout.root.parent, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = stage_lines(done.stdout)
    assert [line[0] for line in lines] == [str(i) for i in range(1, STAGES + 1)], done.stdout
    assert all(" ok " in line for line in lines), lines
    assert f"{STAGES}/{STAGES} stages passed" in done.stdout


def test_without_cuda_the_full_check_refuses_with_status_2(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().out


@pytest.mark.gpu
def test_the_full_check_passes_on_a_cuda_device(small_world, tmp_path):
    done = run_script(["--device", "cuda"], small_world.layout.root.parent, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{STAGES}/{STAGES} stages passed" in done.stdout
