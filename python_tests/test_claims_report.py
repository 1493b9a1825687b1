"""tools/claims_report.py's verdict code (``paired``: paired t, 95 % CI, verdict; ``t_crit``; ``mean_sd``) on
hand-computed numbers. tools/ lives in the source tree only."""
import importlib.util
import math
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "claims_report.py"
pytestmark = pytest.mark.skipif(not TOOL.is_file(), reason="tools/ is in the source tree only")


@pytest.fixture(scope="module")
def cr():
    spec = importlib.util.spec_from_file_location("claims_report", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mean_sd_is_the_sample_sd(cr):
    m, sd = cr.mean_sd([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and sd == pytest.approx(math.sqrt(5 / 3))  # Σ(x−m)² = 5, n−1 = 3
    assert math.isnan(cr.mean_sd([7.0])[1])


def test_significant_difference_with_the_claimed_sign_reproduces(cr):
    # diffs 1,2,3,4: mean 2.5, sd √(5/3) = 1.290994, se = sd/2 = 0.645497, t = 3.872983 > t(3) = 3.182
    p = cr.paired([1.0, 2.0, 3.0, 4.0], +1)
    assert p["n"] == 4 and p["mean"] == 2.5
    assert p["t"] == pytest.approx(3.872983, abs=1e-6) and p["t_crit"] == 3.182
    lo, hi = p["ci95"]  # 2.5 ∓ 3.182 · 0.645497 = 2.5 ∓ 2.053972
    assert lo == pytest.approx(0.446028, abs=1e-6) and hi == pytest.approx(4.553972, abs=1e-6)
    assert p["verdict"] == "reproduces"
    assert cr.paired([1.0, 2.0, 3.0, 4.0], -1)["verdict"] == "does not reproduce (significant, opposite sign)"


def test_significant_but_below_the_floor_is_inconclusive(cr):
    p = cr.paired([1.0, 2.0, 3.0, 4.0], +1, floor=3.0)  # |mean| 2.5 < floor 3
    assert p["verdict"].startswith("inconclusive: consistent over seeds") and "3-SumR" in p["verdict"]
    assert cr.paired([1.0, 2.0, 3.0, 4.0], +1, floor=2.5)["verdict"] == "reproduces"  # |mean| >= floor counts


def test_not_significant(cr):
    # diffs 1,−1,2: mean 2/3, sd √(7/3) = 1.527525, se = 0.881917, t = 0.755929 < t(2) = 4.303
    p = cr.paired([1.0, -1.0, 2.0], +1)
    assert p["t"] == pytest.approx(0.755929, abs=1e-6) and p["t_crit"] == 4.303
    assert p["ci95"][0] == pytest.approx(2 / 3 - 4.303 * 0.881917, abs=1e-5) and p["ci95"][0] < 0 < p["ci95"][1]
    assert p["verdict"] == "inconclusive given the spread"
    assert cr.paired([1.0, -1.0, 2.0], -1)["verdict"] == "does not reproduce (no gain; difference within the spread)"


def test_edge_cases(cr):
    one = cr.paired([5.0], +1)
    assert one["t"] is None and one["ci95"] is None and one["verdict"] == "inconclusive (one seed)"
    same = cr.paired([2.0, 2.0, 2.0], +1)  # no spread: t = inf, CI of width 0
    assert same["t"] == math.inf and same["ci95"] == (2.0, 2.0) and same["verdict"] == "reproduces"
    zero = cr.paired([0.0, 0.0], +1)
    assert zero["t"] == 0.0 and zero["verdict"] == "does not reproduce (no gain; difference within the spread)"
    with pytest.raises(ValueError, match="diffs"):
        cr.paired([], +1)


def test_critical_values_beyond_ten_degrees_of_freedom(cr):
    assert cr.t_crit(3) == 3.182 and cr.t_crit(15) == 2.131 and cr.t_crit(30) == 2.042
    assert cr.t_crit(35) == 2.042 and cr.t_crit(60) == 2.000 and cr.t_crit(500) == 1.960  # conservative between rows
    with pytest.raises(ValueError):
        cr.t_crit(0)
    # 16 diffs with mean 0.5 and sd exactly 1: t = 0.5 / (1/4) = 2.0, above the normal 1.96 but below t(15) = 2.131
    a = math.sqrt(15 / 16)
    diffs = [0.5 + a] * 8 + [0.5 - a] * 8
    p = cr.paired(diffs, +1)
    assert p["sd"] == pytest.approx(1.0) and p["t"] == pytest.approx(2.0)
    assert p["t_crit"] == 2.131 and p["verdict"] == "inconclusive given the spread"
