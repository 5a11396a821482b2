"""What ``compile`` asks of the autotune cache, made cheap (session 64): an entry's stored
spec key and a module's code are remembered instead of rebuilt thousands of times, with
the same results (a compile of LAUD-ResNet-101 spent ~0.9 s building spec keys and
~1.1 s tokenizing the same modules again)."""

import json

import pytest

from laudtriton.ops.spec import BlockSpec
from laudtriton.tune import keys
from laudtriton.tune.cache import stored_spec_key

SPEC = BlockSpec(in_channels=64, width=64, out_channels=256, stride=1, downsample=True,
                 in_hw=(56, 56), mode="spatial", granularity=4)


def test_stored_spec_key_is_the_spec_key():
    """As stored in a cache file (``in_hw`` a list), in any key order, and without the
    fields that have defaults (an older entry's): the key ``BlockSpec.from_dict`` gives."""
    d = json.loads(json.dumps(SPEC.to_dict()))
    assert stored_spec_key(d) == SPEC.key()
    assert stored_spec_key(dict(reversed(list(d.items())))) == SPEC.key()
    old = {k: v for k, v in d.items() if k not in ("batch", "dtype", "channel_groups")}
    assert stored_spec_key(old) == BlockSpec.from_dict(old).key() == SPEC.key()
    other = {**d, "batch": 3}
    assert stored_spec_key(other) != SPEC.key()
    assert stored_spec_key(other) == SPEC.with_(batch=3).key()


def test_stored_spec_key_refuses_what_from_dict_refuses():
    """Not remembered as a key: the same error each time."""
    for _ in range(2):
        with pytest.raises(TypeError):
            stored_spec_key({**SPEC.to_dict(), "bogus": 1})
        with pytest.raises(ValueError, match="stride"):
            stored_spec_key({**SPEC.to_dict(), "stride": 0})


def test_code_of_is_remembered_by_its_text():
    """The same text gives the same bytes, computed once; another text its own."""
    src = 'def f():\n    """Doc."""\n    return 1  # one\n'
    keys.code_of.cache_clear()
    first = keys.code_of(src)
    assert first == b"def f():\n    return 1"
    assert keys.code_of(src) is first
    assert keys.code_of.cache_info().hits == 1
    assert keys.code_of(src + "x = 2\n") == b"def f():\n    return 1\nx = 2"
