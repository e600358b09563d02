"""Golden-byte tests of MLLP framing and of HL7 ACK parsing/building (incl. hl7apy validation)."""

from __future__ import annotations

from datetime import datetime

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import given
from hypothesis import strategies as st

from gateway.his.ack import (
    AckCode,
    AckError,
    EncodingCharacters,
    HisAck,
    Hl7Error,
    build_ack,
    escape,
    message_control_id,
    parse_ack,
    unescape,
)
from gateway.his.adapter import HisError
from gateway.his.mllp import MllpDecoder, MllpError, decode_text, frame, frame_text

DFT = (
    "MSH|^~\\&|SPD-EDGE|SITE1|HIS|HOSP|20261123101500||DFT^P03^DFT_P03|A1B2C3D4E50000000042|P|2.5\r"
    "EVN|P03|20261123101500\r"
    "PID|1||ZY2026001234^^^HOSP^IN||张^三||19800101|M\r"
    "PV1|1|I|W301^12^1\r"
    "FT1|1|A1B2C3D4E50000000042||20261123101200|20261123101500|CG|310000123^心脏支架^HOSP|||1|12800.00|12800.00\r"
)
# The same message declaring other encoding characters: field '#', component ':', repetition '*',
# escape '/', subcomponent '%'.
DFT_HASH = DFT.replace("|", "#").replace("^", ":").replace("#:~\\&#", "#:*/%#")
ACK_TIME = datetime(2026, 11, 23, 10, 15, 1)


# -- framing ------------------------------------------------------------------------


def test_frame_wraps_message_in_vt_and_fs_cr() -> None:
    assert frame(b"MSH|^~\\&|A\rMSA|AA|1\r") == b"\x0bMSH|^~\\&|A\rMSA|AA|1\r\x1c\x0d"


def test_frame_text_encodes_chinese_names_as_utf8_by_default() -> None:
    assert frame_text("PID|1||张三") == b"\x0bPID|1||\xe5\xbc\xa0\xe4\xb8\x89\x1c\r"


def test_frame_text_uses_the_given_encoding() -> None:
    assert frame_text("PID|1||张三", "gb18030") == b"\x0bPID|1||\xd5\xc5\xc8\xfd\x1c\r"


def test_frame_refuses_a_payload_containing_block_characters() -> None:
    with pytest.raises(MllpError) as caught:
        frame(b"MSH\x1c\rX")
    assert caught.value.reason == "bad_payload"


def test_frame_text_refuses_characters_the_encoding_cannot_carry() -> None:
    with pytest.raises(MllpError) as caught:
        frame_text("PID|1||张三", "ascii")
    assert caught.value.reason == "unencodable"


def test_decode_text_refuses_invalid_utf8_with_reason() -> None:
    with pytest.raises(MllpError) as caught:
        decode_text(b"MSA|AA|\xe5\xbc")
    assert caught.value.reason == "undecodable"
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, HisError)


def test_garbage_before_a_frame_is_skipped_and_counted() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\r\nnoise\x1c\r\x0bMSA|AA|1\x1c\r") == [b"MSA|AA|1"]
    assert decoder.garbage_bytes == 9
    assert decoder.buffered_bytes == 0


def test_garbage_between_frames_is_skipped() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bA\x1c\r\n\n\x00\x0bB\x1c\r") == [b"A", b"B"]
    assert decoder.garbage_bytes == 3


def test_frame_split_at_every_byte_is_reassembled() -> None:
    wire = b"junk\x0bMSH|^~\\&|\xe5\xbc\xa0\rMSA|AA|1\x1c\r"
    for cut in range(len(wire) + 1):
        decoder = MllpDecoder()
        frames = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
        assert frames == [b"MSH|^~\\&|\xe5\xbc\xa0\rMSA|AA|1"], cut


def test_frame_fed_one_byte_at_a_time_is_reassembled() -> None:
    decoder = MllpDecoder()
    frames: list[bytes] = []
    for byte in b"\x0bMSA|AA|1\x1c\r":
        frames += decoder.feed(bytes([byte]))
    assert frames == [b"MSA|AA|1"]


def test_two_frames_in_one_read_are_both_returned_in_order() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bMSA|CA|1\x1c\r\x0bMSA|AA|1\x1c\r") == [b"MSA|CA|1", b"MSA|AA|1"]


def test_second_frame_split_after_first_complete_one() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bA\x1c\r\x0bB") == [b"A"]
    assert decoder.feed(b"B\x1c") == []
    assert decoder.feed(b"\r") == [b"BB"]


def test_fs_not_followed_by_cr_does_not_end_a_frame() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bA\x1cB\x1c\r") == [b"A\x1cB"]


def test_new_start_block_abandons_a_truncated_frame() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bMSH|trunc") == []
    assert decoder.feed(b"ated\x0bMSA|AA|1\x1c\r") == [b"MSA|AA|1"]
    assert decoder.truncated_frames == 1


def test_oversize_frame_raises_frame_too_large_and_decoder_recovers() -> None:
    decoder = MllpDecoder(max_frame_bytes=10)
    with pytest.raises(MllpError) as caught:
        decoder.feed(b"\x0b" + b"x" * 11)
    assert caught.value.reason == "frame_too_large"
    assert decoder.buffered_bytes == 0
    assert decoder.feed(b"more of the big one\x1c") == []
    assert decoder.feed(b"\r\x0bMSA|AA|1\x1c\r") == [b"MSA|AA|1"]
    assert decoder.oversize_frames == 1


def test_frame_of_exactly_the_limit_is_accepted_even_when_cr_arrives_late() -> None:
    decoder = MllpDecoder(max_frame_bytes=8)
    assert decoder.feed(b"\x0bMSA|AA|1\x1c") == []
    assert decoder.feed(b"\r") == [b"MSA|AA|1"]


def test_complete_oversize_frame_in_one_read_keeps_the_frames_around_it() -> None:
    decoder = MllpDecoder(max_frame_bytes=5)
    with pytest.raises(MllpError) as caught:
        decoder.feed(b"\x0bA\x1c\r\x0b" + b"x" * 6 + b"\x1c\r\x0bB\x1c\r")
    assert caught.value.reason == "frame_too_large"
    assert decoder.feed(b"") == [b"A", b"B"]


def test_decoder_refuses_a_non_positive_limit() -> None:
    with pytest.raises(MllpError) as caught:
        MllpDecoder(max_frame_bytes=0)
    assert caught.value.reason == "bad_limit"


_payloads = st.lists(
    st.binary(min_size=0, max_size=40).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")),
    min_size=1,
    max_size=5,
)


@given(payloads=_payloads, garbage=st.binary(max_size=8).map(lambda b: b.replace(b"\x0b", b"")), data=st.data())
def test_any_chunking_of_framed_payloads_yields_them_in_order(
    payloads: list[bytes], garbage: bytes, data: st.DataObject
) -> None:
    wire = garbage + b"".join(frame(payload) + garbage for payload in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = MllpDecoder()
    received: list[bytes] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        received += decoder.feed(wire[start:cut])
        start = cut
    assert received == payloads


# -- ACK parsing ----------------------------------------------------------------------


def test_parse_ack_reads_code_echo_text_and_his_ref() -> None:
    text = (
        "MSH|^~\\&|HIS|HOSP|SPD-EDGE|SITE1|20261123101501||ACK^P03^ACK|HIS00000001|P|2.5\rMSA|AA|A1B2C3D4E50000000042\r"
    )
    assert parse_ack(text) == HisAck(AckCode.AA, "A1B2C3D4E50000000042", "", "", "HIS00000001")


def test_parse_ack_with_error_segment_summarises_err_3_and_err_8() -> None:
    text = (
        "MSH|^~\\&|HIS|HOSP|SPD-EDGE|SITE1|20261123101501||ACK^P03^ACK|H2|P|2.5\r"
        "MSA|AE|A1B2C3D4E50000000042|收费代码不存在\r"
        "ERR|||204^Unknown key identifier^HL70357|E||||收费代码 310000123 不存在\r"
    )
    ack = parse_ack(text)
    assert ack.code is AckCode.AE
    assert ack.text == "收费代码不存在"
    assert ack.error == "204 Unknown key identifier: 收费代码 310000123 不存在"


def test_parse_ack_reads_a_v24_style_err_1_code() -> None:
    text = "MSH|^~\\&|HIS|H|E|S|20261123||ACK|H3|P|2.4\rMSA|AR|C1|busy\rERR|FT1^1^7^103&Table value not found\r"
    ack = parse_ack(text)
    assert (ack.code, ack.text, ack.error, ack.his_ref) == (AckCode.AR, "busy", "103 Table value not found", "H3")


def test_parse_ack_honours_non_default_encoding_characters_and_escapes() -> None:
    text = (
        "MSH#:*/%#HIS#HOSP#SPD-EDGE#SITE1#20261123101501##ACK:P03:ACK#H4#P#2.5\rMSA#AE#C1#a/F/b/S/c/E/d/T/e/R/f|^~\\&\r"
    )
    ack = parse_ack(text)
    assert ack.code is AckCode.AE
    assert ack.control_id_echo == "C1"
    assert ack.text == "a#b:c/d%e*f|^~\\&"


def test_unescape_resolves_delimiters_hex_and_line_breaks() -> None:
    chars = EncodingCharacters()
    escaped = "\\F\\\\S\\\\T\\\\R\\\\E\\ \\XE5BCA0\\ x\\.br\\y \\H\\bold\\N\\ \\X0D0A\\ \\Q\\ tail\\"
    assert unescape(escaped, chars) == "|^&~\\ 张 x\ny bold \r\n \\Q\\ tail\\"


def test_escape_and_unescape_round_trip() -> None:
    chars = EncodingCharacters(field="#", component=":", repetition="*", escape="/", subcomponent="%")
    value = "line 1\r\nprice: 12#3 /50% *2 张三"
    assert unescape(escape(value, chars), chars) == value
    assert "#" not in escape(value, chars)


def test_parse_ack_tolerates_lf_segment_separators() -> None:
    text = "MSH|^~\\&|HIS|H|E|S|20261123||ACK^P03^ACK|H5|P|2.5\r\nMSA|AA|C9\n"
    assert parse_ack(text).control_id_echo == "C9"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("\r\r", "empty"),
        ("MSA|AA|C1\r", "no_msh"),
        ("MSH|^~|HIS|H|E|S|20261123||ACK|H|P|2.5\rMSA|AA|C1", "bad_encoding_characters"),
        ("MSHa^~\\&aHIS", "bad_encoding_characters"),
        ("MSH|^~\\&|HIS|H|E|S|20261123||DFT^P03^DFT_P03|H|P|2.5\rMSA|AA|C1", "not_an_ack"),
        ("MSH|^~\\&|HIS|H|E|S|20261123||ACK^P03^ACK|H|P|2.5\rERR|||207", "missing_msa"),
        ("MSH|^~\\&|HIS|H|E|S|20261123||ACK^P03^ACK|H|P|2.5\rMSA|OK|C1", "unknown_ack_code"),
        ("MSH|^~\\&|HIS|H|E|S|20261123||ACK^P03^ACK|H|P|2.5\rMSA|AA|", "missing_control_id"),
    ],
)
def test_malformed_ack_is_refused_with_reason(text: str, reason: str) -> None:
    with pytest.raises(AckError) as caught:
        parse_ack(text)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


def test_message_control_id_reads_msh_10() -> None:
    assert message_control_id(DFT) == "A1B2C3D4E50000000042"
    assert message_control_id(DFT_HASH) == "A1B2C3D4E50000000042"
    with pytest.raises(Hl7Error) as caught:
        message_control_id("EVN|P03")
    assert caught.value.reason == "no_msh"


# -- ACK building -----------------------------------------------------------------------


def test_build_ack_swaps_applications_and_echoes_control_id() -> None:
    ack = build_ack(DFT, AckCode.AA, control_id="HIS00000001", timestamp=ACK_TIME)
    assert ack == (
        "MSH|^~\\&|HIS|HOSP|SPD-EDGE|SITE1|20261123101501||ACK^P03^ACK|HIS00000001|P|2.5\r"
        "MSA|AA|A1B2C3D4E50000000042|\r"
    )


def test_build_ack_for_an_error_adds_err_segment_with_escaped_text() -> None:
    ack = build_ack(DFT, "AE", "unknown code 310000123|x", control_id="H2", error_code="204", timestamp=ACK_TIME)
    assert ack == (
        "MSH|^~\\&|HIS|HOSP|SPD-EDGE|SITE1|20261123101501||ACK^P03^ACK|H2|P|2.5\r"
        "MSA|AE|A1B2C3D4E50000000042|unknown code 310000123\\F\\x\r"
        "ERR|||204^Unknown key identifier^HL70357|E||||unknown code 310000123\\F\\x\r"
    )


def test_build_ack_keeps_the_message_encoding_characters() -> None:
    ack = build_ack(DFT_HASH, AckCode.AR, "a#b", control_id="H3", timestamp=ACK_TIME)
    assert ack.startswith("MSH#:*/%#HIS#HOSP#SPD-EDGE#SITE1#20261123101501##ACK:P03:ACK#H3#P#2.5\rMSA#AR#")
    parsed = parse_ack(ack)
    assert (parsed.code, parsed.control_id_echo, parsed.text) == (AckCode.AR, "A1B2C3D4E50000000042", "a#b")


def test_build_ack_gives_each_ack_a_fresh_control_id_by_default() -> None:
    first, second = parse_ack(build_ack(DFT, "AA")), parse_ack(build_ack(DFT, "AA"))
    assert first.his_ref and second.his_ref and first.his_ref != second.his_ref
    assert len(first.his_ref) == 20


def test_build_ack_cuts_msa_3_to_its_hl7_length() -> None:
    ack = parse_ack(build_ack(DFT, "AE", "x" * 300))
    assert ack.text == "x" * 80
    assert ack.error == "207 Application internal error: " + "x" * 250


@pytest.mark.parametrize("code", list(AckCode))
def test_built_acks_pass_hl7apy_strict_validation(code: AckCode) -> None:
    text = "收费代码 310000123 不存在 | ^ & ~ \\"
    ack = build_ack(DFT, code, text, control_id="HIS00000007", timestamp=ACK_TIME)
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert parsed.validate() is True
    assert parsed.msh.msh_9.to_er7() == "ACK^P03^ACK"
    assert parsed.msa.msa_1.value == code.value
    assert parsed.msa.msa_2.value == "A1B2C3D4E50000000042"
    assert [segment.name for segment in parsed.children] == (
        ["MSH", "MSA"] if code in (AckCode.AA, AckCode.CA) else ["MSH", "MSA", "ERR"]
    )


def test_built_ack_with_other_encoding_characters_passes_hl7apy_strict_validation() -> None:
    ack = build_ack(DFT_HASH, AckCode.AE, "a#b", control_id="H9", timestamp=ACK_TIME)
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert parsed.validate() is True
    assert parsed.msa.msa_2.value == "A1B2C3D4E50000000042"


def test_build_ack_copies_the_character_set_and_passes_hl7apy_strict_validation() -> None:
    message = DFT.replace("|P|2.5\r", "|P|2.5||||||UNICODE UTF-8\r", 1)
    ack = build_ack(message, AckCode.AA, control_id="H8", timestamp=ACK_TIME)
    assert ack.split("\r")[0] == (
        "MSH|^~\\&|HIS|HOSP|SPD-EDGE|SITE1|20261123101501||ACK^P03^ACK|H8|P|2.5||||||UNICODE UTF-8"
    )
    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert parsed.validate() is True
    assert parsed.msh.msh_18.value == "UNICODE UTF-8"


def test_build_ack_refuses_a_message_without_msh() -> None:
    with pytest.raises(Hl7Error) as caught:
        build_ack("EVN|P03\r", "AA")
    assert caught.value.reason == "no_msh"
