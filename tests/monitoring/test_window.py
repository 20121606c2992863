"""One monitoring window, pure (pipelines/monitoring/window.py): the label-shift rule."""

from __future__ import annotations

import pytest

from pipelines.monitoring.window import label_shift


@pytest.mark.unit
def test_label_shift_needs_both_a_large_ratio_and_a_significant_z() -> None:
    shifted, ratio, z = label_shift(
        positives=240, rows=10_000, reference_rate=0.008, reference_rows=20_000, ratio=1.5, z_min=4
    )
    assert shifted and ratio == pytest.approx(3.0) and z > 4
    # the same rate moved by 25 %: significant with these sizes? not large enough either way
    assert not label_shift(100, 10_000, 0.008, 20_000, 1.5, 4)[0]
    # a tripled rate on a tiny window is noise
    assert not label_shift(3, 125, 0.008, 20_000, 1.5, 4)[0]
    assert label_shift(10, 10_000, 0.008, 20_000, 1.5, 4)[0]  # fraud falling to an eighth is a shift too
