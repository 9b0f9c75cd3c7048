"""Figures over seeds and the claim rule (guided_diffusion/evaluation/seeds.py)."""

from guided_diffusion.evaluation import seeds


def test_compare_rule():
    assert seeds.compare([1.0, 1.2], [3.0, 3.2], higher_is_better=False) == "better"
    assert seeds.compare([1.0, 1.2], [3.0, 3.2], higher_is_better=True) == "worse"
    assert seeds.compare([1.0, 3.0], [2.0, 4.0], higher_is_better=True) == "tie"  # 1 apart, spread 2.8
    assert seeds.compare([1.0], [3.0, 3.2], higher_is_better=False) is None


def test_cells_show_mean_and_spread_over_seeds():
    assert seeds.cell([1.0, 3.0]) == "2 ± 1.4"
    assert seeds.cell([0.2, 0.2, 0.2]) == "0.2 ± 0"  # seeds that agree: round-off (3e-17) is no spread
    assert seeds.cell([0.5, None]) == "0.5" and seeds.cell([None]) == ""
    assert seeds.mean_std([0.9, 0.91]) == "0.905 ± 0.0071" and seeds.mean_std([0.9]) == "0.9 (1 seed)"


def test_a_claim_needs_every_comparison_beyond_the_spread():
    assert seeds.all_better(["better", "better"]) == "confirmed"
    assert seeds.all_better(["better", "tie"]) == "not resolved"
    assert seeds.all_better(["better", None]) == "not resolved"  # a side with one seed
    assert seeds.all_better(["better", "worse"]) == "not confirmed"
    assert seeds.all_better([]) == "not resolved"
    assert seeds.mean([None, 1.0, 3.0]) == 2.0 and seeds.mean([None]) is None


def test_equivalence_within_a_tolerance_or_the_spread():
    # 0.5 worse: inside 10% of 10 (1.0), whichever direction is better
    assert seeds.within_tolerance([10.4, 10.6], [10.0, 10.0], 0.1, higher_is_better=False) is True
    assert seeds.within_tolerance([9.4, 9.6], [10.0, 10.0], 0.1, higher_is_better=True) is True
    assert seeds.within_tolerance([12.0, 12.2], [10.0, 10.0], 0.1, higher_is_better=False) is False  # 2.1 > 1.0
    assert seeds.within_tolerance([12.0, 16.0], [10.0, 10.0], 0.1, higher_is_better=False) is False  # 4 > spread 2.8
    assert seeds.within_tolerance([5.0, 30.0], [10.0, 10.0], 0.1, higher_is_better=False) is True  # 7.5 < spread 17.7
    assert seeds.within_tolerance([1.0], [10.0, 10.0], 0.1, higher_is_better=False) is None
