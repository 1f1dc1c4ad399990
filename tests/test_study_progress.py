"""The study's progress in a log (stderr not a terminal): plain lines at most every 30 s and at the end."""

from __future__ import annotations

from lskd_core.study import progress


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_line_progress_is_rate_limited_and_ends_with_the_total(capsys):
    clock = Clock()
    bar = progress._LineBar(total=5, interval=30.0, clock=clock)
    bar.set_postfix_str("student_a0_T1_s0 ep 1/2")
    for dt in (10, 10, 15, 1):  # updates at t = +10, +20, +35 (30 s since the start), +36
        clock.t += dt
        bar.update(1)
    clock.t += 1
    bar.update(1)  # the last run: always reported
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["[study] 3/5 runs done after 35 s; running: student_a0_T1_s0 ep 1/2",
                     "[study] 5/5 runs done after 37 s"]


def test_make_bar_picks_lines_for_a_log_and_nothing_when_disabled():
    # under pytest stderr is captured, i.e. not a terminal
    assert isinstance(progress.make_bar(3, True), progress._LineBar)
    assert type(progress.make_bar(3, False)) is progress._NoBar
