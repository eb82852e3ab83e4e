"""tools.calibration: the edge of normal is where the calibrated score crosses 0.5."""

import pytest

from tools.calibration import Calibrator


def test_edge_is_the_raw_score_calibrated_to_one_half():
    cal = Calibrator.fit([0.9, 1.0, 1.1, 1.3])
    assert cal(cal.edge) == pytest.approx(0.5)
    assert cal(cal.edge + 0.01) > 0.5 > cal(cal.edge - 0.01)
    assert cal.edge == pytest.approx(cal.center + 3.0 * cal.spread)
