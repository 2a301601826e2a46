"""``agileir bench`` / ``agileir compare`` as seen by a user: results on stdout, progress and notes
on stderr, and help that shows each option's default."""

from __future__ import annotations

import pytest

from agileir.cli import main
from agileir.cli.bench import memory_note

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_results_on_stdout_progress_on_stderr(capsys):
    assert main(["bench", "--batch", "1", "--patch", "8", "--infer-size", "8", "--repeats", "1", "--warmup", "0",
                 "--no-peak", "--device", "auto"]) == 0
    captured = capsys.readouterr()
    assert "[bench]" not in captured.out and "ratios agileir-s / swinir-s" in captured.out
    assert "[bench] swinir-s batch 1: activation census" in captured.err
    assert "note" not in captured.err  # batch 1 at patch 8 needs no warning
    from agileir.models.attention import fused

    first = captured.out.splitlines()[0]
    if fused.state() != "on":
        assert first.endswith(f", fused CPU attention kernel {fused.state()}")
    else:  # and which units GSWA's bf16 cascade takes
        engine = fused.cascade_bf16_engine()
        assert first.endswith(", fused CPU attention kernel on (bf16 cascade "
                              + (f"on {engine})" if engine else "off)"))


def test_memory_note_only_for_the_heavy_census():
    note = memory_note([1, 4, 16], 64, "cpu", ["swinir-s", "agileir-s"])
    assert note is not None and "batch-16" in note and "about 12 GB of RAM" in note and "\n" not in note
    assert memory_note([1, 4], 64, "cpu", ["swinir-s", "agileir-s"]) is None
    assert "GPU memory" in memory_note([16, 64], 64, "cuda", ["swinir-s", "agileir-s"])
    assert "more than" in memory_note([16], 64, "cpu", ["swinir-m", "agileir-m"])


@pytest.mark.parametrize("command", ["bench", "compare"])
def test_every_valued_option_has_help_with_its_default(command):
    import argparse

    from agileir.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction)):
            continue
        assert action.help, action.dest
        if action.option_strings:
            assert "default" in action.help, action.option_strings
    if command == "bench":
        device = next(a for a in parser._actions if a.dest == "device")
        assert device.help.startswith("auto (CUDA if available), cpu or cuda")
