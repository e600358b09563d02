"""Simulated camera: UDI labels rendered by zint, placed in seeded degraded scenes, served as a frame source.

The symbols come from an encoder independent of the decoders under test: the
``zint`` command-line tool (Debian package ``zint``). Each scene puts one label
on a cluttered background with a seeded mix of scale, rotation, perspective,
blur, sensor noise, brightness/contrast and JPEG loss, graded by :class:`Level`.
:class:`SimCamera` serves frames through ``read() -> (ok, frame)`` /
``release()`` like :class:`cv2.VideoCapture`; :func:`write_image_sequence` writes
them as PNG files that :class:`cv2.VideoCapture` itself opens.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from device.hal.scanner import Symbology
from device.udi import Udi, parse_gs1
from hw_sim.udi_gen import ItemFactory

Image = npt.NDArray[np.uint8]
FRAME_SIZE = (1280, 720)  # width, height: a 720p USB camera
SCENE_TODAY = dt.date(2025, 1, 1)  # fixed, so a seed always gives the same items


class ZintMissing(RuntimeError):
    """The zint encoder is not installed (Debian package ``zint``)."""

    reason = "zint_missing"


class SymbolKind(Enum):
    """What the label carries; the value is zint's symbology name."""

    GS1_DATAMATRIX = "DATAMATRIX"
    GS1_128 = "GS1_128"
    GS1_QR = "QRCODE"
    EAN13 = "EANX"

    @property
    def symbology(self) -> Symbology:
        return _SYMBOLOGY[self]

    @property
    def is_linear(self) -> bool:
        return self in (SymbolKind.GS1_128, SymbolKind.EAN13)


_SYMBOLOGY = {SymbolKind.GS1_DATAMATRIX: Symbology.GS1_DATAMATRIX, SymbolKind.GS1_128: Symbology.GS1_128,
              SymbolKind.GS1_QR: Symbology.GS1_QR, SymbolKind.EAN13: Symbology.EAN13}


def _udi(code: str) -> Udi:
    return parse_gs1(code, today=SCENE_TODAY)


def expected_text(kind: SymbolKind, code: str) -> str:
    """What a decoder must return for ``code`` (a UDI as :func:`hw_sim.udi_gen.make_udi` writes it) in ``kind``."""
    if kind is SymbolKind.EAN13:
        gtin = _udi(code).gtin
        if gtin is None or not gtin.startswith("0"):
            raise ValueError(f"{code!r} has no GTIN-13")
        return "]E0" + gtin[1:]
    data = code[3:] if code.startswith("]") else code
    return kind.symbology.value + data


def zint_data(kind: SymbolKind, code: str) -> str:
    """The ``-d`` argument for zint: AIs in brackets for GS1 symbols, 12 digits for EAN-13."""
    if kind is SymbolKind.EAN13:
        return expected_text(kind, code)[3:15]
    return "".join(f"[{ai}]{value}" for ai, value in _udi(code).elements)


@functools.lru_cache(maxsize=512)
def render_symbol(kind: SymbolKind, code: str, *, scale: float = 1.0) -> Image:
    """The symbol as zint draws it (black on white, quiet zones included), grey; modules are ``2 * scale`` px."""
    zint = shutil.which("zint")
    if zint is None:
        raise ZintMissing("the zint encoder is not installed (apt-get install zint)")
    args = [zint, "-b", kind.value, "--quietzones", f"--scale={scale}", "--direct", "--filetype=PNG",
            "-d", zint_data(kind, code)]
    if kind in (SymbolKind.GS1_DATAMATRIX, SymbolKind.GS1_QR):
        args.insert(3, "--gs1")
    done = subprocess.run(args, capture_output=True, check=False, timeout=10)
    if done.returncode != 0 or not done.stdout:
        raise ValueError(f"zint refused {kind.name} {code!r}: {done.stderr.decode(errors='replace').strip()}")
    image = cv2.imdecode(np.frombuffer(done.stdout, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError("zint output is not an image")
    symbol: Image = np.asarray(image, dtype=np.uint8)
    symbol.setflags(write=False)
    return symbol


@dataclass(frozen=True)
class Degradation:
    """Ranges the scene generator draws from; ``(lo, hi)`` pairs are uniform."""

    module_px: tuple[float, float]  # size of one module in the frame
    rotation_deg: float  # tilt, +- this
    quarter_turns: bool  # also turned by 90/180/270 degrees
    perspective: float  # corner displacement as a fraction of the symbol size
    blur_sigma: tuple[float, float]  # Gaussian blur (defocus), px
    noise_sigma: tuple[float, float]  # sensor noise, grey levels
    brightness: tuple[float, float]  # exposure multiplier
    contrast: tuple[float, float]  # contrast multiplier
    jpeg_quality: int | None  # compression of the delivered frame


class Level(Enum):
    CLEAN = "clean"
    MILD = "mild"
    MODERATE = "moderate"
    HARSH = "harsh"

    @property
    def degradation(self) -> Degradation:
        return _LEVELS[self]


_LEVELS = {
    Level.CLEAN: Degradation((4.0, 5.0), 0.0, False, 0.0, (0.0, 0.0), (0.0, 0.0), (1.0, 1.0), (1.0, 1.0), None),
    Level.MILD: Degradation((3.0, 5.0), 10.0, False, 0.03, (0.0, 0.8), (1.0, 4.0), (0.85, 1.1), (0.85, 1.0), 90),
    Level.MODERATE: Degradation((2.8, 4.5), 20.0, True, 0.05, (0.4, 1.0), (2.0, 6.0), (0.65, 1.15), (0.65, 0.9), 85),
    Level.HARSH: Degradation((2.2, 3.5), 35.0, True, 0.10, (0.8, 1.5), (5.0, 11.0), (0.45, 1.3), (0.45, 0.7), 60),
}


@dataclass(frozen=True)
class Scene:
    """One frame and what is on it."""

    frame: Image  # H x W x 3 BGR
    kind: SymbolKind
    code: str  # the UDI as generated
    expected: str  # what a decoder should read


def _background(rng: np.random.Generator, width: int, height: int) -> npt.NDArray[np.float32]:
    """A shelf-like background: low-frequency shading plus a few dark and light blocks."""
    coarse = rng.uniform(60, 190, size=(6, 8)).astype(np.float32)
    bg = np.asarray(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), dtype=np.float32)
    for _ in range(int(rng.integers(2, 6))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(20, width // 3)), int(rng.integers(5, height // 4))
        cv2.rectangle(bg, (x, y), (x + w, y + h), float(rng.uniform(20, 235)), thickness=-1)
    return bg


def render_scene(kind: SymbolKind, code: str, rng: np.random.Generator, level: Level | Degradation,
                 size: tuple[int, int] = FRAME_SIZE) -> Scene:
    """Place ``code`` rendered as ``kind`` in a frame degraded as ``level`` says, drawing from ``rng``."""
    deg = level.degradation if isinstance(level, Level) else level
    width, height = size
    drawn = render_symbol(kind, code, scale=2.0)  # 4 px modules
    if not kind.is_linear:  # the label around a 2D symbol: a few modules of paper beyond zint's quiet zone
        drawn = np.asarray(cv2.copyMakeBorder(drawn, 12, 12, 12, 12, cv2.BORDER_CONSTANT, value=255), np.uint8)
    dh, dw = drawn.shape
    factor = float(rng.uniform(*deg.module_px)) / 4.0
    angle = float(rng.uniform(-deg.rotation_deg, deg.rotation_deg))
    if deg.quarter_turns:
        angle += 90.0 * int(rng.integers(0, 4))
    theta = math.radians(angle)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], np.float32)
    quad = (np.array([[-dw, -dh], [dw, -dh], [dw, dh], [-dw, dh]], np.float32) * 0.5) @ rot.T
    quad += rng.uniform(-deg.perspective, deg.perspective, size=(4, 2)).astype(np.float32) * max(dw, dh)
    quad *= factor
    margin = 8.0
    extent = quad.max(axis=0) - quad.min(axis=0)
    shrink = min(1.0, (width - 2 * margin) / float(extent[0]), (height - 2 * margin) / float(extent[1]))
    factor *= shrink  # a label too big for the view is held further away
    quad *= shrink
    # area-average down to the frame's scale first (what a lens does); the warp then only tilts and skews
    symbol = cv2.resize(drawn, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA).astype(np.float32)
    symbol *= float(rng.uniform(215, 250)) / 255.0  # paper is never pure white
    sh, sw = symbol.shape
    lo, hi = quad.min(axis=0), quad.max(axis=0)
    cx = float(rng.uniform(margin - lo[0], max(margin - lo[0], width - margin - hi[0])))
    cy = float(rng.uniform(margin - lo[1], max(margin - lo[1], height - margin - hi[1])))
    dst = (quad + np.array([cx, cy], np.float32)).astype(np.float32)
    src = np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(symbol, matrix, (width, height), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.ones_like(symbol), matrix, (width, height), flags=cv2.INTER_LINEAR)
    frame = _background(rng, width, height) * (1.0 - mask) + warped * mask

    contrast = float(rng.uniform(*deg.contrast))
    frame = (frame - 128.0) * contrast + 128.0
    ramp = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :] * float(rng.uniform(-0.15, 0.15))
    frame = frame * float(rng.uniform(*deg.brightness)) * (1.0 + ramp)
    sigma = float(rng.uniform(*deg.blur_sigma))
    if sigma > 0.05:
        frame = cv2.GaussianBlur(frame, (0, 0), sigma)
    noise = float(rng.uniform(*deg.noise_sigma))
    if noise > 0:
        frame = frame + rng.normal(0.0, noise, size=frame.shape).astype(np.float32)
    grey = np.clip(frame, 0, 255).astype(np.uint8)
    if deg.jpeg_quality is not None:
        ok, jpeg = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, deg.jpeg_quality])
        grey = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE) if ok else grey
    bgr: Image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    return Scene(bgr, kind, code, expected_text(kind, code))


def make_scenes(seed: int, count: int, level: Level | Degradation,
                kinds: Sequence[SymbolKind] = tuple(SymbolKind)) -> list[Scene]:
    """``count`` scenes cycling through ``kinds``, each with a fresh item from a seeded :class:`ItemFactory`."""
    rng = np.random.default_rng(seed)
    items = ItemFactory(seed, today=SCENE_TODAY)
    return [render_scene(kinds[i % len(kinds)], items.make_item().udi_text, rng, level) for i in range(count)]


class SimCamera:
    """A frame source shaped like :class:`cv2.VideoCapture`: ``read()``, ``release()``, ``isOpened()``.

    Frames are served in order (``loop`` starts again at the end); after the last one,
    or while :meth:`unplug` is in force, ``read()`` returns ``(False, None)``.
    """

    def __init__(self, frames: Iterable[Image], *, loop: bool = False) -> None:
        self.frames = list(frames)
        self.loop = loop
        self.position = 0
        self.reads = 0
        self._open = True
        self._plugged = True

    @classmethod
    def from_scenes(cls, scenes: Iterable[Scene], *, hold: int = 1, loop: bool = False) -> SimCamera:
        """Each scene's frame ``hold`` times in a row, as a label held in front of the lens."""
        return cls([scene.frame for scene in scenes for _ in range(hold)], loop=loop)

    def isOpened(self) -> bool:
        return self._open

    def read(self) -> tuple[bool, Image | None]:
        self.reads += 1
        if not self._open or not self._plugged:
            return False, None
        if self.position >= len(self.frames):
            if not self.loop or not self.frames:
                return False, None
            self.position = 0
        frame = self.frames[self.position]
        self.position += 1
        return True, frame.copy()

    def release(self) -> None:
        self._open = False

    def unplug(self) -> None:
        self._plugged = False

    def replug(self) -> None:
        self._plugged = True
        self._open = True


def write_image_sequence(frames: Iterable[Image], directory: Path) -> str:
    """Write ``frames`` as lossless PNGs; returns the ``frame_%05d.png`` pattern :class:`cv2.VideoCapture` opens."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        if not cv2.imwrite(str(directory / f"frame_{i:05d}.png"), frame):
            raise OSError(f"cannot write frame {i} to {directory}")
    return str(directory / "frame_%05d.png")
