"""Review of e99199d (the CLI's number options read ASCII numbers only, tune.numbers;
\\x1c-\\x1f around a stage are spaces; check_mode keeps the model's reason): the number
parsing the change left on float(), and check_mode's cut of the model's message.
(``python -m laudtriton.kernels.aot`` still reads --jobs and --arch with int(): the
kernels' files key the shipped GPU cache and are left as they are.)"""

from __future__ import annotations

import pytest

from laudtriton.tune.layout_options import check_mode
from laudtriton.tune.numbers import ascii_float
from laudtriton.tune.options import parse_rates

# --- --rates: the one number option where \x1c-\x1f around a number is refused ---------

@pytest.mark.parametrize("text, want", [("0.5\x1c", [0.5]), ("\x1f0.25,0.5", [0.25, 0.5]),
                                        ("0.25,0.5\x1e", [0.25, 0.5])])
def test_rates_takes_the_spaces_the_other_number_options_take(text, want):
    """ascii_float (demo --rate, design --target-rate), parse_stages and int_list take
    \\x1c-\\x1f around a number as spaces (str.strip); parse_rates reads each with float(),
    which does not: `bench --rates $'0.5\\x1c'` is "malformed" while `demo --rate
    $'0.5\\x1c'` runs at 0.5."""
    assert ascii_float(text.split(",")[0]) == want[0]  # what the other options read
    assert parse_rates(text) == want


# --- check_mode: the model's reason cut at the first " ('" or "; accepted" -------------

@pytest.mark.parametrize("text", ["spatial ('x", "spatial-x ('y-layer-layer", "sp; accepted"])
def test_mode_message_names_the_value_as_given(text):
    """check_mode cuts the model's message at " ('" (the accepted list after "has 2
    stages; LAUD-ResNet has 4") and "; accepted", also where they are in the value:
    --mode "spatial ('x" said `--mode "spatial; accepted: ...` (no reason, the value cut,
    its quote left open)."""
    with pytest.raises(ValueError) as e:
        check_mode(text, "--mode")
    assert repr(text) in str(e.value), str(e.value)
