"""Barcode decoders for camera frames: the Decoder interface, its registry, and the zxing-cpp and pyzbar backends.

Backends are looked up by name and import their library only when built, so a
missing library breaks only its backend, with :class:`DecoderUnavailable`:

* ``zxingcpp`` — :class:`ZxingCppDecoder` on ``zxing-cpp``: linear codes, QR and
  DataMatrix. GS1 DataMatrix is the usual UDI symbol, so this is the default.
* ``pyzbar`` — :class:`PyzbarDecoder` on ``pyzbar`` / ``libzbar0``: linear codes and
  QR, no DataMatrix.

A decoder is built for a set of :class:`Symbology` values and hands exactly that
set to its library, which then does not even look for the others. Results carry
the text as a scanner with AIM identifiers would send it: ``]d2`` + the GS1
element string with GS (``\\x1d``) separators, ready for :func:`device.udi.parse_udi`.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt

from device.hal.pins import HalError
from device.hal.scanner.symbology import Symbology, split_symbology_id

log = logging.getLogger(__name__)

Frame = npt.NDArray[np.uint8]
"""A camera frame: H x W grey, or H x W x 3 BGR as OpenCV delivers it."""

Point = tuple[int, int]


class CameraError(HalError):
    """Root of the camera errors; ``reason`` is a stable code."""

    reason = "camera_error"


class UnknownDecoder(CameraError, LookupError):
    reason = "unknown_decoder"


class DecoderUnavailable(CameraError, ImportError):
    """The decoder's library (or its native part) is not installed."""

    reason = "decoder_unavailable"


class UnsupportedSymbology(CameraError, ValueError):
    """A decoder was asked for a symbology its library cannot read."""

    reason = "unsupported_symbology"


class BadFrame(CameraError, ValueError):
    """A frame that is not an 8-bit grey or BGR image."""

    reason = "bad_frame"


@dataclass(frozen=True, slots=True)
class Decoded:
    """One code found in a frame: text with its AIM identifier, symbology, corners in pixels (clockwise)."""

    text: str
    symbology: Symbology
    corners: tuple[Point, ...]


class Decoder(ABC):
    """Finds codes of the configured symbologies in a frame; one decoder per capture thread."""

    name: ClassVar[str]
    supported: ClassVar[frozenset[Symbology]]

    def __init__(self, symbologies: Iterable[Symbology] | None = None) -> None:
        wanted = frozenset(self.supported if symbologies is None else symbologies)
        if not wanted:
            raise UnsupportedSymbology("no symbology configured")
        unsupported = wanted - self.supported
        if unsupported:
            names = ", ".join(sorted(s.name for s in unsupported))
            raise UnsupportedSymbology(f"the {self.name} decoder cannot read {names}")
        self.symbologies = wanted

    def decode(self, frame: Frame) -> list[Decoded]:
        """Codes of the configured symbologies in ``frame``, in the library's order."""
        found = self._decode(to_grey(frame))
        return [d for d in found if d.symbology in self.symbologies]  # GS1 / non-GS1 variants share a format

    @abstractmethod
    def _decode(self, grey: Frame) -> list[Decoded]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free native resources."""


def to_grey(frame: Frame) -> Frame:
    """The frame as a C-contiguous H x W uint8 image."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3):
        raise BadFrame(f"expected an 8-bit image array, got {getattr(frame, 'dtype', type(frame))!r}")
    if frame.ndim == 3:
        channels = frame.shape[2]
        if channels == 1:
            frame = frame[:, :, 0]
        elif channels in (3, 4):
            cv2 = importlib.import_module("cv2")
            code = cv2.COLOR_BGR2GRAY if channels == 3 else cv2.COLOR_BGRA2GRAY
            frame = cv2.cvtColor(frame, code)
        else:
            raise BadFrame(f"expected 1, 3 or 4 channels, got {channels}")
    return np.ascontiguousarray(frame)


def _import(module: str, backend: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as err:  # pyzbar raises ImportError when libzbar0 is missing
        raise DecoderUnavailable(f"the {backend} decoder needs the {module} library: {err}") from err


def _decoded(text: str, corners: tuple[Point, ...]) -> Decoded:
    return Decoded(text, split_symbology_id(text)[0], corners)


class ZxingCppDecoder(Decoder):
    """zxing-cpp: ``read_barcodes(frame, formats=..., text_mode=Plain)``; the symbology identifier comes
    from the library, FNC1 separators come out as GS."""

    name = "zxingcpp"
    supported = frozenset({
        Symbology.GS1_128, Symbology.CODE128, Symbology.GS1_DATAMATRIX, Symbology.DATAMATRIX, Symbology.GS1_QR,
        Symbology.QR, Symbology.EAN13, Symbology.EAN8, Symbology.CODE39, Symbology.ITF, Symbology.GS1_DATABAR,
        Symbology.PDF417, Symbology.AZTEC,
    })
    _FORMATS: Final[dict[Symbology, tuple[str, ...]]] = {
        Symbology.GS1_128: ("Code128",), Symbology.CODE128: ("Code128",),
        Symbology.GS1_DATAMATRIX: ("DataMatrix",), Symbology.DATAMATRIX: ("DataMatrix",),
        Symbology.GS1_QR: ("QRCode",), Symbology.QR: ("QRCode",),
        Symbology.EAN13: ("EAN13", "UPCA"), Symbology.EAN8: ("EAN8",),
        Symbology.CODE39: ("Code39",), Symbology.ITF: ("ITF",),
        Symbology.GS1_DATABAR: ("DataBar", "DataBarExpanded", "DataBarLimited"),
        Symbology.PDF417: ("PDF417",), Symbology.AZTEC: ("Aztec",),
    }

    def __init__(self, symbologies: Iterable[Symbology] | None = None, *, try_rotate: bool = True,
                 try_downscale: bool = True, try_invert: bool = False) -> None:
        super().__init__(symbologies)
        self._zx = _import("zxingcpp", self.name)
        names = sorted({f for s in self.symbologies for f in self._FORMATS[s]})
        self.formats = tuple(getattr(self._zx.BarcodeFormat, n) for n in names)
        self._options: dict[str, Any] = {
            "try_rotate": try_rotate, "try_downscale": try_downscale, "try_invert": try_invert,
            "text_mode": self._zx.TextMode.Plain,
        }

    def _decode(self, grey: Frame) -> list[Decoded]:
        out = []
        for barcode in self._zx.read_barcodes(grey, formats=self.formats, **self._options):
            pos = barcode.position
            corners = tuple((int(p.x), int(p.y)) for p in (pos.top_left, pos.top_right, pos.bottom_right,
                                                             pos.bottom_left))
            out.append(_decoded(barcode.symbology_identifier + barcode.text, corners))
        return out


class PyzbarDecoder(Decoder):
    """zbar through pyzbar's bindings. zbar's GS1 flag (``zbar_symbol_get_modifiers``, which pyzbar's own
    ``decode()`` drops) tells GS1-128 from Code 128 and GS1 QR from QR."""

    name = "pyzbar"
    supported = frozenset({
        Symbology.GS1_128, Symbology.CODE128, Symbology.GS1_QR, Symbology.QR, Symbology.EAN13, Symbology.EAN8,
        Symbology.CODE39, Symbology.ITF, Symbology.GS1_DATABAR,
    })
    # zbar symbol types (zbar.h)
    _TYPES: Final[dict[Symbology, tuple[int, ...]]] = {
        Symbology.GS1_128: (128,), Symbology.CODE128: (128,), Symbology.GS1_QR: (64,), Symbology.QR: (64,),
        Symbology.EAN13: (13,), Symbology.EAN8: (8,), Symbology.CODE39: (39,), Symbology.ITF: (25,),
        Symbology.GS1_DATABAR: (34, 35),
    }
    # zbar type -> (identifier, identifier when zbar flags GS1)
    _AIM: Final[dict[int, tuple[str, str]]] = {
        128: ("]C0", "]C1"), 64: ("]Q1", "]Q3"), 13: ("]E0", "]E0"), 8: ("]E4", "]E4"), 39: ("]A0", "]A0"),
        25: ("]I0", "]I0"), 34: ("]e0", "]e0"), 35: ("]e0", "]e0"),
    }
    _MOD_GS1: Final = 1  # 1 << ZBAR_MOD_GS1
    _CFG_ENABLE: Final = 0
    _L800: Final = 0x30303859  # fourcc "Y800": 8-bit grey

    def __init__(self, symbologies: Iterable[Symbology] | None = None) -> None:
        super().__init__(symbologies)
        zw = _import("pyzbar.wrapper", self.name)
        self._zw = zw
        self._modifiers: Callable[..., int] = zw.zbar_function(
            "zbar_symbol_get_modifiers", ctypes.c_uint, ctypes.POINTER(zw.zbar_symbol))
        self.types = tuple(sorted({t for s in self.symbologies for t in self._TYPES[s]}))
        self._scanner = zw.zbar_image_scanner_create()
        if not self._scanner:
            raise DecoderUnavailable("zbar could not create an image scanner")
        zw.zbar_image_scanner_set_config(self._scanner, 0, self._CFG_ENABLE, 0)  # 0: every symbology
        for zbar_type in self.types:
            zw.zbar_image_scanner_set_config(self._scanner, zbar_type, self._CFG_ENABLE, 1)

    def _decode(self, grey: Frame) -> list[Decoded]:
        zw = self._zw
        height, width = grey.shape
        image = zw.zbar_image_create()
        try:
            zw.zbar_image_set_format(image, self._L800)
            zw.zbar_image_set_size(image, width, height)
            zw.zbar_image_set_data(image, grey.ctypes.data_as(ctypes.c_void_p), grey.size, None)
            if zw.zbar_scan_image(self._scanner, image) < 0:
                raise BadFrame("zbar refused the image")
            out = []
            symbol = zw.zbar_image_first_symbol(image)
            while symbol:
                out.append(self._symbol(symbol))
                symbol = zw.zbar_symbol_next(symbol)
            return out
        finally:
            zw.zbar_image_destroy(image)

    def _symbol(self, symbol: Any) -> Decoded:
        zw = self._zw
        data = ctypes.string_at(zw.zbar_symbol_get_data(symbol), zw.zbar_symbol_get_data_length(symbol))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        plain, gs1 = self._AIM.get(symbol.contents.type, ("", ""))  # only the types enabled above occur
        aim_id = gs1 if self._modifiers(symbol) & self._MOD_GS1 else plain
        points = tuple((int(zw.zbar_symbol_get_loc_x(symbol, i)), int(zw.zbar_symbol_get_loc_y(symbol, i)))
                       for i in range(zw.zbar_symbol_get_loc_size(symbol)))
        return _decoded(aim_id + text, points)

    def close(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner:
            self._zw.zbar_image_scanner_destroy(scanner)

    def __del__(self) -> None:
        if getattr(self, "_scanner", None):
            try:
                self.close()
            except Exception:  # at interpreter shutdown the ctypes bindings may already be gone
                pass


_DECODERS: dict[str, str | Callable[..., Decoder]] = {
    "zxingcpp": "device.hal.camera.decoders:ZxingCppDecoder",
    "pyzbar": "device.hal.camera.decoders:PyzbarDecoder",
}


def register_decoder(name: str, target: str | Callable[..., Decoder]) -> None:
    """Add a backend: a ``"module:attribute"`` path (imported on first use) or a callable taking ``symbologies``."""
    _DECODERS[name] = target


def decoder_names() -> list[str]:
    return sorted(_DECODERS)


def load_decoder(name: str, symbologies: Iterable[Symbology] | None = None) -> Decoder:
    """Build the decoder registered as ``name`` for ``symbologies`` (None: all it supports)."""
    target = _DECODERS.get(name)
    if target is None:
        raise UnknownDecoder(f"no decoder named {name!r}; known: {', '.join(decoder_names())}")
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        target = getattr(_import(module_name, name), attr)
        assert callable(target)
    return target(symbologies)
