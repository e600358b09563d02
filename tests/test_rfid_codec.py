"""Golden-byte tests of the R2000 serial protocol codec: decoding, encoding, resynchronisation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device.hal.rfid.r2000 import (
    Ack,
    Command,
    ErrorCode,
    ErrorFrame,
    FastSwitchRoundEnd,
    FirmwareVersion,
    InventoryRoundEnd,
    R2000Codec,
    RawFrame,
    TagRead,
    checksum,
    encode_customized_session_target_inventory,
    encode_fast_switch_ant_inventory,
    encode_get_firmware_version,
    encode_real_time_inventory,
    encode_reset,
    encode_round_end,
    encode_set_work_antenna,
    encode_tag_read,
    pc_for_epc,
)

DATA = Path(__file__).parent / "data" / "r2000_frames.hex"


def load_golden() -> dict[str, bytes]:
    frames: dict[str, bytes] = {}
    for line in DATA.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, *hex_bytes = line.split()
        frames[name] = bytes.fromhex("".join(hex_bytes))
    return frames


GOLDEN = load_golden()
CAPTURED_EPC = bytes.fromhex("000000000070022110424067")


def test_checksum_is_twos_complement_of_byte_sum() -> None:
    assert checksum(bytes.fromhex("a003ff72")) == 0xEC
    assert checksum(b"") == 0


def test_captured_tag_read_decodes_epc_antenna_rssi_and_channel() -> None:
    assert R2000Codec().feed(GOLDEN["reader_tag_read"]) == [
        TagRead(
            epc=CAPTURED_EPC,
            antenna=1,
            rssi_dbm=0x48 - 129,
            pc=bytes.fromhex("3000"),
            freq_idx=0xE8 >> 2,
            cmd=Command.REAL_TIME_INVENTORY,
            address=0x01,
        )
    ]


def test_captured_round_end_decodes_antenna_read_rate_and_total() -> None:
    assert R2000Codec().feed(GOLDEN["reader_round_end"]) == [
        InventoryRoundEnd(antenna=1, read_rate=32, total_read=1, cmd=Command.REAL_TIME_INVENTORY, address=0xFF)
    ]


def test_captured_firmware_version_answer_decodes() -> None:
    assert R2000Codec().feed(GOLDEN["reader_firmware_version_1_0"]) == [FirmwareVersion(1, 0, address=0xFF)]


def test_success_code_is_an_ack_and_other_codes_are_errors() -> None:
    codec = R2000Codec()
    frames = codec.feed(
        GOLDEN["reader_set_work_antenna_ok"]
        + GOLDEN["reader_inventory_antenna_missing"]
        + GOLDEN["reader_fast_switch_ant2_missing"]
    )
    assert frames == [
        Ack(Command.SET_WORK_ANTENNA, address=0x01),
        ErrorFrame(Command.REAL_TIME_INVENTORY, ErrorCode.ANTENNA_MISSING, address=0x01),
        ErrorFrame(Command.FAST_SWITCH_ANT_INVENTORY, ErrorCode.ANTENNA_MISSING, antenna=2, address=0x01),
    ]
    assert frames[1].name == "antenna_missing"  # type: ignore[union-attr]


def test_fast_switch_summary_decodes_total_and_duration() -> None:
    assert R2000Codec().feed(GOLDEN["reader_fast_switch_end"]) == [
        FastSwitchRoundEnd(total_read=300, duration_ms=1000, address=0x01)
    ]


@pytest.mark.parametrize(
    ("name", "packet"),
    [
        ("host_get_firmware_version", encode_get_firmware_version()),
        ("host_real_time_inventory_x1", encode_real_time_inventory(1)),
        ("host_reset", encode_reset()),
        ("host_set_work_antenna_1", encode_set_work_antenna(1)),
        ("host_set_work_antenna_4", encode_set_work_antenna(4)),
        ("host_session_target_s1_a_x1", encode_customized_session_target_inventory(session=1, target=0, repeat=1)),
        ("host_fast_switch_4_antennas", encode_fast_switch_ant_inventory([(1, 1), (2, 1), (3, 1), (4, 1)])),
    ],
)
def test_command_encoders_reproduce_golden_host_packets(name: str, packet: bytes) -> None:
    assert packet == GOLDEN[name]


def test_host_packets_split_back_into_raw_frames() -> None:
    assert R2000Codec().feed_raw(GOLDEN["host_set_work_antenna_4"]) == [
        RawFrame(0xFF, Command.SET_WORK_ANTENNA, b"\x03")
    ]


def test_garbage_before_a_frame_is_skipped_and_counted() -> None:
    codec = R2000Codec()
    frames = codec.feed(b"\x00\x13\xa0\x01\x55" + GOLDEN["reader_tag_read"])
    assert [f.epc for f in frames if isinstance(f, TagRead)] == [CAPTURED_EPC]
    assert codec.stats.garbage_bytes == 5
    assert codec.stats.frames == 1


def test_frame_split_across_feeds_is_assembled() -> None:
    codec = R2000Codec()
    packet = GOLDEN["reader_tag_read"]
    for i in range(len(packet) - 1):
        assert codec.feed(packet[i : i + 1]) == []
    assert codec.pending == len(packet) - 1
    frames = codec.feed(packet[-1:])
    assert len(frames) == 1 and isinstance(frames[0], TagRead)
    assert codec.pending == 0


def test_bad_checksum_is_counted_and_the_next_frame_still_decodes() -> None:
    codec = R2000Codec()
    corrupted = bytearray(GOLDEN["reader_tag_read"])
    corrupted[10] ^= 0x04
    frames = codec.feed(bytes(corrupted) + GOLDEN["reader_round_end"])
    assert frames == [InventoryRoundEnd(1, 32, 1, address=0xFF)]
    assert codec.stats.bad_checksums == 1


def test_false_head_claiming_a_long_frame_does_not_swallow_a_real_one() -> None:
    codec = R2000Codec()
    # 0xA0 0x20 looks like the start of a 34-byte packet that spans the real one.
    stream = b"\xa0\x20" + GOLDEN["reader_round_end"] + GOLDEN["reader_firmware_version_1_0"] + b"\x00" * 20
    frames = codec.feed(stream)
    assert frames == [InventoryRoundEnd(1, 32, 1, address=0xFF), FirmwareVersion(1, 0, address=0xFF)]
    assert codec.stats.bad_checksums == 1


def test_tag_on_antenna_five_uses_the_rssi_high_bit() -> None:
    packet = bytearray(GOLDEN["reader_tag_read"])
    packet[-2] |= 0x80
    packet[-1] = checksum(packet[:-1])
    (tag,) = R2000Codec().feed(bytes(packet))
    assert isinstance(tag, TagRead)
    assert (tag.antenna, tag.rssi_dbm) == (5, 0x48 - 129)


def test_round_end_encoder_matches_golden() -> None:
    assert encode_round_end(InventoryRoundEnd(1, 32, 1, address=0xFF)) == GOLDEN["reader_round_end"]


def test_tag_read_encoder_matches_captured_packet() -> None:
    tag = TagRead(CAPTURED_EPC, 1, 0x48 - 129, bytes.fromhex("3000"), 0xE8 >> 2, address=0x01)
    assert encode_tag_read(tag) == GOLDEN["reader_tag_read"]
    assert pc_for_epc(CAPTURED_EPC) == bytes.fromhex("3000")


@pytest.mark.parametrize("bad", [lambda: encode_set_work_antenna(0), lambda: encode_real_time_inventory(0)])
def test_encoders_refuse_out_of_range_parameters(bad: object) -> None:
    with pytest.raises(ValueError):
        bad()  # type: ignore[operator]


tag_reads = st.builds(
    TagRead,
    epc=st.integers(1, 8).flatmap(lambda words: st.binary(min_size=2 * words, max_size=2 * words)),
    antenna=st.integers(1, 8),
    rssi_dbm=st.integers(-129, -2),
    pc=st.just(b"\x30\x00"),
    freq_idx=st.integers(0, 63),
    address=st.integers(0, 255),
)


@settings(max_examples=150, deadline=None)
@given(
    tags=st.lists(tag_reads, min_size=1, max_size=6),
    noise=st.binary(max_size=6).filter(lambda b: 0xA0 not in b),
    cuts=st.lists(st.integers(0, 200), max_size=5),
)
def test_tag_reads_survive_any_split_and_leading_noise(tags: list[TagRead], noise: bytes, cuts: list[int]) -> None:
    stream = noise + b"".join(encode_tag_read(t) for t in tags)
    codec = R2000Codec()
    frames = []
    last = 0
    for cut in [*sorted(c for c in cuts if c < len(stream)), len(stream)]:
        frames += codec.feed(stream[last:cut])
        last = cut
    assert frames == tags
    assert codec.stats.garbage_bytes == len(noise)
