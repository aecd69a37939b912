"""The benchmark suite's measuring tools: peak memory, growth exponents and the README writer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
suite = pytest.importorskip("suite")


def test_growth_exponent_recovers_a_power_law():
    sizes = [10, 20, 40, 80]
    assert suite.growth_exponent(sizes, [3.0 * s**1.5 for s in sizes]) == pytest.approx(1.5, abs=1e-12)


def test_cpu_peak_memory_sees_a_temporary_and_its_quadratic_growth():
    def work(n):
        def fn():
            a = torch.ones(n, n)  # 4 n^2 bytes, freed before the next one is made
            del a
            b = torch.ones(n, 2)
            return b

        return fn

    sizes = [256, 512, 1024]
    peaks = [suite.peak_memory(work(n), torch.device("cpu")) for n in sizes]
    for n, peak in zip(sizes, peaks, strict=True):
        assert 4 * n * n <= peak <= 4 * n * n + 64 * n  # the matrix, plus the small tensor and allocator slack
    assert suite.growth_exponent(sizes, peaks) == pytest.approx(2.0, abs=0.02)


def test_write_readme_replaces_only_its_section(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n", encoding="utf-8")
    monkeypatch.setattr(suite, "README", readme)
    suite.write_readme("first")
    suite.write_readme("second")
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\nintro\n")
    assert text.count(suite.BEGIN) == 1 and "second" in text and "first" not in text


def test_table_formats_numbers_and_strings(capsys):
    table = suite.Table("t", ["a", "b"])
    table.add("x", 1234.5678)
    assert table.rows == [["x", "1.23e+03"]]
    assert table.markdown().splitlines()[-1] == "| x | 1.23e+03 |"
    assert "| a | b |" in capsys.readouterr().out
