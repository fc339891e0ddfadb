"""The proxy blanks the lab token out of streamed text bodies wherever chunk boundaries fall."""

from hypothesis import given
from hypothesis import strategies as st

from workspaces.proxy import TokenScrubber

TOKEN = "Zq8-tok3n_VALUE"
pieces = st.lists(st.one_of(st.text(alphabet='abc {}":,<>\n', max_size=12), st.just(TOKEN)), max_size=30)


@given(pieces=pieces, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_token_never_survives_any_chunking(pieces, cuts):
    body = "".join(pieces).encode()
    bounds = sorted({c for c in cuts if c <= len(body)} | {0, len(body)})
    scrubber = TokenScrubber(TOKEN)
    out = b"".join(scrubber.feed(body[a:b]) for a, b in zip(bounds, bounds[1:])) + scrubber.flush()
    assert out == body.replace(TOKEN.encode(), b"")
    assert TOKEN.encode() not in out
