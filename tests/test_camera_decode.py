"""Camera decoding on frames rendered by zint: UDI round trips, symbology filters, read-rate floors, capture loop."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pytest

from device.hal.camera import (
    BadFrame,
    CameraScanner,
    Decoded,
    PyzbarDecoder,
    UnknownDecoder,
    UnsupportedSymbology,
    ZxingCppDecoder,
    load_decoder,
)
from device.hal.scanner import ScanLine, ScannerState, Symbology
from device.udi import Udi, parse_udi
from hw_sim.camera import (
    SCENE_TODAY,
    Level,
    Scene,
    SimCamera,
    SymbolKind,
    make_scenes,
    render_scene,
    render_symbol,
    write_image_sequence,
)
from hw_sim.udi_gen import ItemFactory

ITEMS = ItemFactory(42, today=SCENE_TODAY)
ITEM = ITEMS.make_item()


def clean_scene(kind: SymbolKind, code: str = ITEM.udi_text, seed: int = 0) -> Scene:
    return render_scene(kind, code, np.random.default_rng(seed), Level.CLEAN)


def side_by_side(*scenes: Scene) -> np.ndarray:
    return np.ascontiguousarray(np.hstack([s.frame for s in scenes]))


def rate(decoder: ZxingCppDecoder | PyzbarDecoder, scenes: list[Scene]) -> float:
    return sum(s.expected in [d.text for d in decoder.decode(s.frame)] for s in scenes) / len(scenes)


def test_zxingcpp_reads_a_gs1_datamatrix_udi_back_to_the_encoded_fields() -> None:
    decoder = ZxingCppDecoder([Symbology.GS1_DATAMATRIX])
    found = decoder.decode(clean_scene(SymbolKind.GS1_DATAMATRIX).frame)
    assert len(found) == 1
    assert found[0].text == ITEM.udi_text  # "]d2" + element string with GS separators, as make_udi wrote it
    assert found[0].symbology is Symbology.GS1_DATAMATRIX
    assert len(found[0].corners) == 4
    udi = parse_udi(found[0].text, today=SCENE_TODAY)
    assert isinstance(udi, Udi)
    assert (udi.gtin, udi.lot, udi.serial, udi.expiry, udi.production) == (
        ITEM.gtin, ITEM.lot, ITEM.serial, ITEM.expiry, ITEM.production)
    assert udi.symbology == "]d2"


def test_zxingcpp_reads_the_bare_zint_symbol_grey_image() -> None:
    grey = np.ascontiguousarray(render_symbol(SymbolKind.GS1_DATAMATRIX, ITEM.udi_text))
    assert [d.text for d in load_decoder("zxingcpp").decode(grey)] == [ITEM.udi_text]


@pytest.mark.parametrize(("kind", "aim_id"), [(SymbolKind.GS1_128, "]C1"), (SymbolKind.GS1_QR, "]Q3"),
                                              (SymbolKind.EAN13, "]E0"), (SymbolKind.GS1_DATAMATRIX, "]d2")])
def test_zxingcpp_reads_each_label_symbol_with_its_identifier(kind: SymbolKind, aim_id: str) -> None:
    scene = clean_scene(kind)
    found = ZxingCppDecoder([kind.symbology]).decode(scene.frame)
    assert [(d.text, d.symbology) for d in found] == [(scene.expected, kind.symbology)]
    assert scene.expected.startswith(aim_id)
    if kind is SymbolKind.EAN13:
        assert scene.expected == "]E0" + ITEM.gtin[1:]
    else:
        udi = parse_udi(found[0].text, today=SCENE_TODAY)
        assert isinstance(udi, Udi) and udi.item_key == (ITEM.gtin, ITEM.serial)


@pytest.mark.parametrize(("kind", "symbology"), [(SymbolKind.GS1_128, Symbology.GS1_128),
                                                 (SymbolKind.GS1_QR, Symbology.GS1_QR),
                                                 (SymbolKind.EAN13, Symbology.EAN13)])
def test_pyzbar_reads_linear_and_qr_with_gs1_identifiers(kind: SymbolKind, symbology: Symbology) -> None:
    scene = clean_scene(kind)
    decoder = load_decoder("pyzbar", [symbology])
    try:
        found = decoder.decode(scene.frame)
    finally:
        decoder.close()
    assert [(d.text, d.symbology) for d in found] == [(scene.expected, symbology)]
    if kind is not SymbolKind.EAN13:
        udi = parse_udi(found[0].text, today=SCENE_TODAY)
        assert isinstance(udi, Udi) and (udi.gtin, udi.lot, udi.serial) == (ITEM.gtin, ITEM.lot, ITEM.serial)


def test_pyzbar_cannot_be_configured_for_datamatrix() -> None:
    with pytest.raises(UnsupportedSymbology) as err:
        PyzbarDecoder([Symbology.GS1_DATAMATRIX, Symbology.GS1_QR])
    assert err.value.reason == "unsupported_symbology" and "GS1_DATAMATRIX" in str(err.value)


def test_zxingcpp_decodes_only_the_configured_symbologies() -> None:
    other = ITEMS.make_item().udi_text
    frame = side_by_side(clean_scene(SymbolKind.GS1_DATAMATRIX), clean_scene(SymbolKind.GS1_QR, other, seed=1))
    both = ZxingCppDecoder([Symbology.GS1_DATAMATRIX, Symbology.GS1_QR])
    assert sorted(d.text for d in both.decode(frame)) == sorted([ITEM.udi_text, "]Q3" + other[3:]])
    qr_only = ZxingCppDecoder([Symbology.GS1_QR])
    assert [str(f) for f in qr_only.formats] == ["QR Code"]  # the filter handed to the library
    assert [d.text for d in qr_only.decode(frame)] == ["]Q3" + other[3:]]
    assert [d.text for d in ZxingCppDecoder([Symbology.GS1_DATAMATRIX]).decode(frame)] == [ITEM.udi_text]
    assert ZxingCppDecoder([Symbology.EAN13]).decode(frame) == []


def test_pyzbar_decodes_only_the_configured_symbologies() -> None:
    frame = side_by_side(clean_scene(SymbolKind.EAN13), clean_scene(SymbolKind.GS1_QR, seed=1))
    decoder = PyzbarDecoder([Symbology.EAN13])
    try:
        assert decoder.types == (13,)
        assert [d.text for d in decoder.decode(frame)] == ["]E0" + ITEM.gtin[1:]]
    finally:
        decoder.close()


def test_gs1_only_configuration_drops_a_plain_qr_of_the_same_format() -> None:
    frame = side_by_side(clean_scene(SymbolKind.GS1_QR))
    assert [d.symbology for d in ZxingCppDecoder([Symbology.QR]).decode(frame)] == []
    assert [d.symbology for d in ZxingCppDecoder([Symbology.QR, Symbology.GS1_QR]).decode(frame)] == [
        Symbology.GS1_QR]


def test_zxingcpp_read_rate_on_moderately_degraded_2d_and_ean_frames_is_at_least_90_percent() -> None:
    scenes = make_scenes(7, 30, Level.MODERATE, [SymbolKind.GS1_DATAMATRIX, SymbolKind.GS1_QR, SymbolKind.EAN13])
    decoder = ZxingCppDecoder([Symbology.GS1_DATAMATRIX, Symbology.GS1_QR, Symbology.EAN13])
    assert rate(decoder, scenes) >= 0.9


def test_pyzbar_read_rate_on_moderately_degraded_qr_and_ean_frames_is_at_least_75_percent() -> None:
    scenes = make_scenes(7, 20, Level.MODERATE, [SymbolKind.GS1_QR, SymbolKind.EAN13])
    decoder = PyzbarDecoder([Symbology.GS1_QR, Symbology.EAN13])
    try:
        assert rate(decoder, scenes) >= 0.75
    finally:
        decoder.close()


@pytest.mark.parametrize("backend", ["zxingcpp", "pyzbar"])
def test_clean_gs1_128_labels_are_all_read(backend: str) -> None:
    scenes = make_scenes(3, 6, Level.CLEAN, [SymbolKind.GS1_128])
    decoder = load_decoder(backend, [Symbology.GS1_128])
    assert rate(decoder, scenes) == 1.0  # type: ignore[arg-type]


def test_harsh_frames_read_worse_than_mild_ones() -> None:
    kinds = [SymbolKind.GS1_DATAMATRIX]
    decoder = ZxingCppDecoder([Symbology.GS1_DATAMATRIX])
    assert rate(decoder, make_scenes(5, 10, Level.HARSH, kinds)) < rate(decoder, make_scenes(5, 10, Level.MILD, kinds))


def test_unknown_backend_and_bad_frames_are_refused() -> None:
    with pytest.raises(UnknownDecoder) as err:
        load_decoder("quagga")
    assert "pyzbar" in str(err.value) and "zxingcpp" in str(err.value)
    with pytest.raises(BadFrame):
        ZxingCppDecoder().decode(np.zeros((4, 4), np.float32))  # type: ignore[arg-type]


def test_held_label_is_delivered_once_per_presentation() -> None:
    scanner = CameraScanner(SimCamera([]), symbologies=[Symbology.GS1_DATAMATRIX], dedupe_window_s=1.0)
    rng = np.random.default_rng(9)
    views = [render_scene(SymbolKind.GS1_DATAMATRIX, ITEM.udi_text, rng, Level.MILD).frame for _ in range(3)]
    delivered = [len(scanner.process_frame(frame, now=t)) for frame, t in zip(views * 2, [0.0, 0.1, 0.2, 0.3,
                                                                                            3.0, 3.1], strict=True)]
    assert delivered == [1, 0, 0, 0, 1, 0]
    assert scanner.stats.frames == 6 and scanner.stats.scans == 2 and scanner.stats.codes_seen == 6
    assert [line.text for line in scanner.scans(idle_timeout_s=0)] == [ITEM.udi_text, ITEM.udi_text]


def test_capture_loop_reads_a_recorded_frame_sequence_through_opencv(tmp_path: Path) -> None:
    second = ITEMS.make_item()
    rng = np.random.default_rng(4)
    frames = [render_scene(SymbolKind.GS1_DATAMATRIX, ITEM.udi_text, rng, Level.MILD).frame for _ in range(4)]
    frames += [render_scene(SymbolKind.GS1_128, second.udi_text, rng, Level.CLEAN).frame for _ in range(3)]
    pattern = write_image_sequence(frames, tmp_path / "frames")
    got: list[ScanLine] = []
    scanner = CameraScanner(pattern, symbologies=[Symbology.GS1_DATAMATRIX, Symbology.GS1_128], fps_limit=None,
                            stop_at_end=True, on_scan=got.append)
    scanner.start()
    try:
        assert scanner.wait_finished(20.0)
    finally:
        scanner.stop()
    assert [(line.text, line.symbology) for line in got] == [
        (ITEM.udi_text, Symbology.GS1_DATAMATRIX), ("]C1" + second.udi_text[3:], Symbology.GS1_128)]
    assert scanner.stats.frames == 7 and scanner.state is ScannerState.STOPPED


def test_capture_loop_respects_the_frame_rate_limit_and_survives_a_failing_callback() -> None:
    camera = SimCamera.from_scenes([clean_scene(SymbolKind.GS1_QR)], hold=1, loop=True)
    calls: list[Decoded | ScanLine] = []

    def on_scan(line: ScanLine) -> None:
        calls.append(line)
        raise RuntimeError("handler bug")

    scanner = CameraScanner(camera, symbologies=[Symbology.GS1_QR], fps_limit=20.0, dedupe_window_s=0.05,
                            on_scan=on_scan)
    scanner.start()
    time.sleep(0.5)
    scanner.stop()
    assert 3 <= scanner.stats.frames <= 12  # about 20 frames/s for 0.5 s, minus decode time
    assert len(calls) >= 2  # the window is shorter than a frame period: each frame is a new presentation


def test_camera_that_cannot_be_opened_stays_offline_until_stopped(tmp_path: Path) -> None:
    scanner = CameraScanner(str(tmp_path / "missing_%05d.png"), backoff_s=(0.02, 0.05))
    scanner.start()
    time.sleep(0.15)
    assert scanner.state is ScannerState.OFFLINE
    scanner.stop()
    assert scanner.state is ScannerState.STOPPED


def test_scene_expectations_follow_the_generated_item() -> None:
    assert clean_scene(SymbolKind.EAN13).expected == "]E0" + ITEM.gtin[1:]
    assert clean_scene(SymbolKind.GS1_128).expected == "]C1" + ITEM.udi_text[3:]
    assert ITEM.expiry > SCENE_TODAY + dt.timedelta(days=300)
