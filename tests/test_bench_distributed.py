"""The distributed suite: its worker in one process, its allreduce model, its table."""

import math

import pytest

from fastbp.benchmarks import distributed as suite


def test_worker_alone_reports_a_step_without_allreduce():
    result = suite.worker((6, 5, 3), 8, "float64", "numpy", steps=2)
    assert result["ranks"] == 1 and result["allreduce_s"] == 0
    assert result["steps_per_s"] > 0 and result["step_s"] > 0
    assert result["gradient_bytes"] == (6 * 5 + 5 + 5 * 3 + 3) * 8


def test_ring_and_tree_allreduce_follow_the_alpha_beta_model():
    nbytes, p, bw, lat = 8e6, 8, 1e10, 1e-5
    assert suite.ring_allreduce_s(nbytes, p, bw, lat) == pytest.approx(2 * 7 / 8 * 8e6 / 1e10 + 14e-5)
    assert suite.tree_allreduce_s(nbytes, p, bw, lat) == pytest.approx(2 * 7 / 8 * 8e6 / 1e10 + 6e-5)
    assert suite.ring_allreduce_s(nbytes, 1, bw, lat) == 0


def test_projection_marks_where_the_global_batch_limits():
    group = {"shape": "a", "dtype": "float64", "batch": 256,
             "runs": {"1": {"step_s": 0.01, "gradient_bytes": 6_500_000}}}
    rows = suite.projection(group)["rows"]
    assert [r["ranks"] for r in rows] == list(suite.PROJECTED_RANKS)
    assert [r["batch_limited"] for r in rows] == [p > 256 for p in suite.PROJECTED_RANKS]
    efficiencies = [r["efficiency"] for r in rows]
    assert efficiencies == sorted(efficiencies, reverse=True) and 0 < efficiencies[-1] < 1
    assert rows[0]["compute_s"] == pytest.approx(0.01 / 8)
    assert math.isclose(rows[-1]["compute_s"], 0.01 / 256)  # one sample per rank at the least


def test_table_of_a_skipped_run_says_why():
    assert "skipped (mpi4py is not installed" in suite.table(
        {"skipped": 'mpi4py is not installed (pip install "fastbp[mpi]")'})
