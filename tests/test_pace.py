"""The time left that progress lines report: one slow first step must not skew it."""

from lorainbox.trainers.pace import Pace


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_slow_first_step_does_not_skew_the_time_left_or_the_speed() -> None:
    clock = Clock()
    pace = Pace(0, 1000, clock)
    clock.now += 100.0  # the first step compiles for 100 s
    pace.add(500)
    for _ in range(9):  # then a second a step
        clock.now += 1.0
        pace.add(500)
    rate, eta = pace.report(10)
    assert rate == 500.0
    assert eta == 990.0  # a second a step after the first, 990 steps left


def test_the_first_report_after_one_step_uses_that_step() -> None:
    clock = Clock()
    pace = Pace(0, 10, clock)
    clock.now += 4.0
    pace.add(100)
    assert pace.report(1) == (25.0, 36.0)


def test_a_resumed_run_counts_from_its_own_start_and_nothing_before_a_step() -> None:
    clock = Clock()
    pace = Pace(600, 1000, clock)
    assert pace.eta(600) is None
    clock.now += 30.0
    pace.add(1)
    clock.now += 10.0
    for _ in range(9):
        pace.add(1)
    assert pace.eta(610) == 10.0 / 9 * 390


def test_reports_only_start_the_clock_at_the_first_report() -> None:
    """mlx-lm's callback sees reports, not steps: the second report measures from the first."""
    clock = Clock()
    pace = Pace(0, 100, clock)
    clock.now += 50.0
    _, first = pace.report(10)
    assert first == 5.0 * 90
    clock.now += 10.0
    _, second = pace.report(20)
    assert second == 1.0 * 80
