"""The CLI's one progress bar (scan, audit verify)."""

from __future__ import annotations

import io

from pangate.cli.progress import Progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_and_the_last_frame_is_the_total():
    out, clock = io.StringIO(), Clock()
    p = Progress("scanning", 4_000_000, stream=out, clock=clock, width=10)
    p.add(1_000_000)  # first update draws
    p.add(1_000_000)  # same instant: not redrawn
    assert out.getvalue() == "\rscanning [##        ]  25% 1.0/4.0 MB"
    clock.now += 0.15
    p.suffix = "2 files"
    p.add(2_000_000)
    assert out.getvalue().endswith("\rscanning [##########] 100% 4.0/4.0 MB 2 files")
    p.end()
    assert out.getvalue().endswith("100% 4.0/4.0 MB 2 files\n")


def test_callback_form_and_empty_input():
    out = io.StringIO()
    p = Progress("verifying", stream=out, clock=Clock())
    p(500, 1000)  # as verify_log calls it
    assert p.done == 500 and p.total == 1000 and " 50%" in out.getvalue()
    empty = Progress("verifying", 0, stream=io.StringIO())
    empty.end()
    assert " 100% " in empty.stream.getvalue()  # nothing to do is done, not 0 % forever


def test_disabled_draws_nothing_and_clear_only_after_a_frame():
    out = io.StringIO()
    p = Progress("scanning", 10, enabled=False, stream=out)
    p.add(5)
    p.clear()
    p.end()
    assert out.getvalue() == ""
    on = Progress("scanning", 10, stream=out, clock=Clock())
    on.clear()
    assert out.getvalue() == ""  # no bar yet: nothing to blank
    on.add(1)
    on.clear()
    assert out.getvalue().endswith("\r\x1b[K")
