"""bench.experiments.layout_ab's layout strings: sessions x threads, optionally with preferred batch sizes."""

from __future__ import annotations

import pytest

from bench.experiments.layout_ab import layout_name, parse_layouts


def test_layouts_parse_with_and_without_preferred_batch_sizes():
    layouts = parse_layouts("1x2, 2x1/4+8,1x2/4")
    assert layouts == [(1, 2, ()), (2, 1, (4, 8)), (1, 2, (4,))]
    assert [layout_name(layout) for layout in layouts] == ["1x2", "2x1/4+8", "1x2/4"]


@pytest.mark.parametrize("text", ["", "1x0", "0x2", "2", "1x2/0", "1x2/a", "axb"])
def test_malformed_layouts_are_refused_with_the_expected_form(text):
    with pytest.raises(ValueError, match="SESSIONSxTHREADS"):
        parse_layouts(text)
