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


def test_line_progress_reports_long_runs_between_finishes(capsys):
    # a 10-minute teacher: no run finishes, but the runner refreshes what is running
    clock = Clock()
    bar = progress._LineBar(total=3, interval=30.0, clock=clock)
    for _ in range(4):  # refreshes at +20, +40, +60, +80 s
        clock.t += 20
        bar.set_postfix_str(f"teacher_a0 ep {int((clock.t - 100) // 20)}/10")
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["[study] 0/3 runs done after 40 s; running: teacher_a0 ep 2/10",
                     "[study] 0/3 runs done after 80 s; running: teacher_a0 ep 4/10"]


def test_fairseq_epochs_are_read_from_the_train_log(tmp_path):
    assert progress.fairseq_epoch_progress(tmp_path) is None
    (tmp_path / "stdout.log").write_text(
        "2026-12-06 | INFO | train_inner | epoch 001:     50 / 127 loss=11.7\n"
        "2026-12-06 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 9.7\n"
        "2026-12-06 | INFO | train | epoch 001 | loss 10.775 | wps 2958.6\n"
        "2026-12-06 | INFO | train_inner | epoch 002:     50 / 127 loss=9.1\n")
    assert progress.fairseq_epoch_progress(tmp_path) == 1
