"""Cross-entropy and learning-rate schedules against hand-computed values."""

import math

import pytest
import torch

from lmforge.losses import IGNORE_INDEX, cross_entropy_sum
from lmforge.train.schedule import lr_at


def test_cross_entropy_sum_by_hand():
    """V=2. Row 0: logits [0, 0], target 0 -> -log(1/2) = ln 2.
    Row 1: logits [ln 3, 0], target 1 -> p(1) = 1/(3+1) -> -log(1/4) = ln 4.
    Row 2 is ignored. Sum = ln 2 + ln 4 = ln 8 = 2.0794, count = 2."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [5.0, -5.0]]])
    targets = torch.tensor([[0, 1, IGNORE_INDEX]])
    loss, n = cross_entropy_sum(logits, targets)
    assert n.item() == 2
    assert loss.item() == pytest.approx(math.log(8), abs=1e-6)


def test_cosine_schedule_by_hand():
    """peak 1, warmup 10 of 110 steps, floor 0.1: step 0 -> 0.1, step 9 -> 1.0,
    middle of the decay (step 60) -> 0.1 + 0.9 * 0.5 = 0.55, last step (110) -> 0.1."""
    kw = dict(peak=1.0, total=110, warmup=10, schedule="cosine", min_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)
    assert lr_at(110, **kw) == pytest.approx(0.1)


def test_wsd_schedule_by_hand():
    """100 steps, decay over the last 20%: flat at peak until step 79, then linear to the floor."""
    kw = dict(peak=2.0, total=100, warmup=0, schedule="wsd", min_ratio=0.0, decay_fraction=0.2)
    assert lr_at(0, **kw) == 2.0 and lr_at(79, **kw) == 2.0
    assert lr_at(89, **kw) == pytest.approx(1.0)   # 10 of 20 decay steps done
    assert lr_at(99, **kw) == pytest.approx(0.0)
