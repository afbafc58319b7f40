"""util/tables.py: ``render``, the one table formatter (plain text for terminals, markdown for reports)."""

from __future__ import annotations

from vanillanet.util.tables import render

ROWS = [["model", "params", "ms"], ["vanillanet_5", "15.5", "1.61"], ["vanillanet_13_x1_5", "127.8", "7.83"]]


def test_plain_text_pads_columns_and_rules_the_header():
    lines = render(ROWS).splitlines()
    assert lines == ["model               params    ms",
                     "--------------------------------",
                     "vanillanet_5          15.5  1.61",
                     "vanillanet_13_x1_5   127.8  7.83"]


def test_left_sets_how_many_columns_are_left_aligned():
    lines = render([["a", "b"], ["long", "long"], ["x", "y"]], left=2).splitlines()
    assert lines[2:] == ["long  long", "x     y   "]
    assert render([["a", "b"], ["long", "x"]], left=0).splitlines()[2] == "long  x"


def test_markdown_is_a_pipe_table_with_the_same_alignment():
    assert render(ROWS, markdown=True).splitlines() == [
        "| model | params | ms |", "| --- | ---: | ---: |", "| vanillanet_5 | 15.5 | 1.61 |",
        "| vanillanet_13_x1_5 | 127.8 | 7.83 |"]


def test_cells_are_converted_to_text():
    assert render([["n", "x"], [1, 2.5]], markdown=True).splitlines()[2] == "| 1 | 2.5 |"
