"""Review of d3cbcf5..126ceb4 (the layout options moved to tune/layout_options.py, one
layout_texts for bench's rows and the CLI): what the move changed for a caller."""

from __future__ import annotations

import argparse

import pytest

from laudtriton.tune.layout_options import check_layout_options


def _args(mode: object, granularity: object, channel_granularity: object
          ) -> argparse.Namespace:
    return argparse.Namespace(model="laud_resnet50", mode=mode, granularity=granularity,
                              channel_granularity=channel_granularity, input_size=None)


@pytest.mark.parametrize("mode,granularity,channel_granularity,says", [
    (3, "4-4-2-1", "1", "--mode '3' unknown"),
    ("spatial", [4, 4, 2, 1], "1", "--granularity '[4, 4, 2, 1]' is not a positive int"),
    ("spatial", [4, 4, 2, 1], "x", "--granularity '[4, 4, 2, 1]' is not a positive int"),
    ("both", "4-4-2-1", [2, 2, 2, 2], "--channel-granularity '[2, 2, 2, 2]' is not a"),
])
def test_check_layout_options_names_the_flag_of_a_value_that_is_not_text(
        mode, granularity, channel_granularity, says):
    """check_layout_options read every value as its text (check_mode, stage_text: str());
    since layout_texts (126ceb4) a list or int reached the model unchecked: mode 3 gave
    the model's "mode '3' unknown ... or per stage" (no flag), a list granularity
    "--granularity '[4, 4, 2, 1]' is malformed", or the --channel-granularity error first."""
    with pytest.raises(ValueError) as e:
        check_layout_options(_args(mode, granularity, channel_granularity))
    assert str(e.value).startswith(says), str(e.value)


def test_check_layout_options_writes_back_numbers_as_text():
    """An int granularity passed (as before 126ceb4), written back as the CLI's text."""
    args = _args("both", 4, 2)
    check_layout_options(args)
    assert (args.mode, args.granularity, args.channel_granularity) == ("both", "4", "2")
