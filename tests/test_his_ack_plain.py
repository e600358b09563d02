"""The plain-ACK reading (``str.split``) gives what python-hl7's reading gives, on every ACK it accepts.

:func:`gateway.his.ack.parse_ack` reads the usual answer — MSH and one MSA, no escapes in the MSA — by
splitting it, and everything else with python-hl7. Here both readings meet the same generated ACKs:
random delimiters, codes (known and not), control ids and texts holding every delimiter, spaces at the
ends, CR, LF and CRLF between segments, and ACKs with one segment too few or too many.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.his.ack import (
    AckCode,
    AckError,
    _ack_header,
    _library_ack,
    _plain_ack,
    build_ack,
    parse_ack,
)

_DELIMITERS = "|^~\\&#!$%*+/:;<=>?@_{}"


@st.composite
def encodings(draw: st.DrawFn) -> str:
    """A field separator and four distinct encoding characters (MSH-1, MSH-2)."""
    chars = draw(st.permutations(_DELIMITERS))
    return "".join(chars[:5])


def _text(tokens: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(tokens), max_size=8).map("".join)


@st.composite
def acks(draw: st.DrawFn) -> str:
    enc = draw(encodings())
    sep = enc[0]
    e = enc[3]
    # values that hold the delimiters themselves and escape sequences (known, hex, formatting, unknown)
    every = [*"AZaz09 -._", *enc, *(f"{e}{x}{e}" for x in ("F", "S", "T", "R", "E", "X41", "XE4B8AD", ".br", "Q"))]
    code = draw(st.one_of(st.sampled_from([c.value for c in AckCode]), _text(list("ACERZ "))))
    msh9 = draw(st.sampled_from(["ACK", f"ACK{enc[1]}P03{enc[1]}ACK", "ADT", "", f"ACK{enc[2]}X"]))
    msh = sep.join(["MSH", enc[1:], "HIS", "HOSP", "SPD", "H1", "20250101105320", "", msh9,
                    draw(_text(every)), "P", "2.5"])
    msa = sep.join(["MSA", code, draw(_text(every)), draw(_text(every))][:draw(st.integers(1, 4))])
    segments = [msh, msa]
    if draw(st.booleans()):
        segments.insert(draw(st.integers(1, 2)), draw(st.sampled_from(
            [f"ERR{sep}{sep}{sep}207{enc[1]}Application internal error", "ZZZ", f"MSA{sep}AA{sep}X1"])))
    if draw(st.booleans()):
        segments = [msh]  # no MSA at all
    end = draw(st.sampled_from(["\r", "\n", "\r\n"]))
    return end.join(segments) + draw(st.sampled_from(["", end, "  " + end]))


def _library(text: str) -> object:
    segments, chars, _ = _ack_header(text)
    try:
        return _library_ack(segments, chars, "utf-8")
    except AckError as err:
        return ("refused", err.reason)


@settings(max_examples=400, deadline=None)
@given(acks())
@example(build_ack("MSH|^~\\&|SPD|H1|HIS|HOSP|20250101||DFT^P03|C1|P|2.5\r", AckCode.AA, "ok  ",
                   control_id="A1"))
@example("MSH|^~\\&|HIS|HOSP|SPD|H1|20250101105320||ACK^P03^ACK|A0001234|P|2.5\rMSA|AA| C1 |a~b^c&d  \r")
def test_the_plain_reading_agrees_with_python_hl7(text: str) -> None:
    segments, chars, msh = _ack_header(text)
    plain = _plain_ack(segments, chars, msh)
    if plain is not None:  # taken: the library reads the same
        assert plain == _library(text)
        assert parse_ack(text) == plain
    else:  # left to the library: parse_ack is the library's reading
        want = _library(text)
        if isinstance(want, tuple):
            with pytest.raises(AckError) as refused:
                parse_ack(text)
            assert refused.value.reason == want[1]
        else:
            assert parse_ack(text) == want


def test_the_usual_answers_take_the_plain_reading() -> None:
    for code in (AckCode.AA, AckCode.CA):
        ack = build_ack("MSH|^~\\&|SPD|H1|HIS|HOSP|20250101||DFT^P03|C7|P|2.5\r", code, "booked", control_id="H9")
        segments, chars, msh = _ack_header(ack)
        assert _plain_ack(segments, chars, msh) is not None
    refusal = build_ack("MSH|^~\\&|SPD|H1|HIS|HOSP|20250101||DFT^P03|C7|P|2.5\r", AckCode.AE, "no such patient")
    segments, chars, msh = _ack_header(refusal)
    assert _plain_ack(segments, chars, msh) is None  # its ERR segment is read by the library
    assert parse_ack(refusal).error == "207 Application internal error: no such patient"
