"""Camera barcode scanning: decoder backends (zxing-cpp, pyzbar) and the OpenCV capture loop."""

from device.hal.camera.capture import CameraDisconnected, CameraScanner, CameraStats, Deduplicator, FrameSource
from device.hal.camera.decoders import (
    BadFrame,
    CameraError,
    Decoded,
    Decoder,
    DecoderUnavailable,
    Frame,
    PyzbarDecoder,
    UnknownDecoder,
    UnsupportedSymbology,
    ZxingCppDecoder,
    decoder_names,
    load_decoder,
    register_decoder,
)

__all__ = [
    "BadFrame",
    "CameraDisconnected",
    "CameraError",
    "CameraScanner",
    "CameraStats",
    "Decoded",
    "Decoder",
    "DecoderUnavailable",
    "Deduplicator",
    "Frame",
    "FrameSource",
    "PyzbarDecoder",
    "UnknownDecoder",
    "UnsupportedSymbology",
    "ZxingCppDecoder",
    "decoder_names",
    "load_decoder",
    "register_decoder",
]
