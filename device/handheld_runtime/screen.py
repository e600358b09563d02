"""The handheld's own display: a console UI (curses) on its terminal, or headless lines when it has none.

Curses comes with Python: nothing to install on the device, and it keeps the
agent small (a Raspberry-Pi-class handheld has little memory; Textual would
bring Rich and asyncio along for a screen of a dozen lines). Type size is
the console font's: ``docs/deploy.md`` sets a 16x32 Terminus font, which
gives about 50 columns by 15 rows on a 7" 800x480 panel, readable at arm's
length. The layout fits 40x12 and uses what it is given.

What the screen shows: the device and department, link state and offline
backlog, who is logged in (or the log-in prompt), the patient in context,
the mode (CHARGE / RETURN), the last verdict in a coloured band with its
sentence, the verdicts before it, and the keys.

Keys: typed text + Enter is a staff id (logged out) or a PIN (when asked);
F1 or ``/`` charge mode, F2 or ``*`` return mode, F10 or ``-`` log out
(``/ * -`` are on every numeric keypad); Esc clears what was typed.

Headless (no terminal, or ``screen = "off"``): one line per verdict and per
link or scanner change on standard output (the journal under systemd).

Either screen runs on the main thread and calls ``beat`` (the
``handheld-screen`` heartbeat, :mod:`device.heartbeat`) once per pass; each
pass waits at most a second for a key or a change, so an idle screen beats.
"""

from __future__ import annotations

import curses
import datetime as dt
import logging
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from device.handheld_runtime.agent import HandheldAgent
from device.handheld_runtime.station import Key, Mode, StationView, Tone, Verdict

log = logging.getLogger(__name__)

_MAX_TYPED = 32


@dataclass(frozen=True, slots=True)
class Link:
    """What the screen shows of the sync: connected to the broker, and events not yet acknowledged."""

    connected: bool
    backlog: int


@dataclass(slots=True)
class Frame:
    """Everything one drawing needs, read from the agent and the sync."""

    device: str
    dept: str
    view: StationView
    link: Link
    scanners: dict[str, str] = field(default_factory=dict)


def frame_lines(f: Frame, width: int, *, now: float | None = None) -> list[tuple[str, str]]:
    """The screen as (style, text) lines; styles: title, ok, refused, info, dim, plain. Pure, so tests read it."""
    now = time.monotonic() if now is None else now
    w = max(20, width)
    v = f.view
    out: list[tuple[str, str]] = []
    link = "LINK OK" if f.link.connected else "OFFLINE"
    backlog = f"TO SEND {f.link.backlog}" if f.link.backlog else "ALL SENT"
    out.append(("title", _two(f"{f.device}  {f.dept}", f"{link}  {backlog}", w)))
    if v.lockdown is not None:
        out.append(("refused", _fit(f"LOCKED DOWN: {v.lockdown}", w)))
    if v.user is None:
        if v.pin_for is not None:
            out.append(("plain", _fit(f"PIN for {v.pin_for}: {'*' * len(v.typed)}", w)))
        else:
            out.append(("plain", _fit("SCAN YOUR BADGE or type staff id + Enter", w)))
            if v.typed:
                out.append(("plain", _fit(f"staff id: {v.typed}", w)))
    else:
        mode = "RETURN MODE" if v.mode is Mode.RETURN else "CHARGE MODE"
        out.append(("plain", _two(f"NURSE {v.user}", mode, w)))
        p = v.patient
        if p is None:
            out.append(("dim", _fit("PATIENT: none - scan the wristband" if v.mode is Mode.CHARGE
                                    else "PATIENT: not needed for returns", w)))
        else:
            left = max(0, round(p.until - now))
            who = "  ".join(x for x in (p.admission, p.initials, p.ward) if x)
            out.append(("plain", _two(f"PATIENT {who}", f"{left // 60}:{left % 60:02d}", w)))
    out.append(("dim", "-" * w))
    if v.verdicts:
        last = v.verdicts[0]
        style = "ok" if last.tone is Tone.OK else "refused" if last.tone is Tone.REFUSED else "info"
        out.append((style, _fit(f" {last.title} ", w).ljust(w)))
        out.extend(("plain", line) for line in _wrap(last.message, w)[:3])
        out.append(("dim", "-" * w))
        for old in v.verdicts[1:]:
            at = dt.datetime.fromtimestamp(old.at).strftime("%H:%M:%S")
            mark = "ok" if old.ok else "NO"
            out.append(("dim", _fit(f"{at} {mark:<2} {old.title}", w)))
    offline = [name for name, state in f.scanners.items() if state != "online"]
    if offline:
        out.append(("refused", _fit(f"SCANNER NOT CONNECTED: {offline[0]}", w)))
    return out


def _fit(text: str, w: int) -> str:
    return text if len(text) <= w else text[: w - 1] + "~"


def _two(left: str, right: str, w: int) -> str:
    gap = w - len(left) - len(right)
    return _fit(left + " " * gap + right, w) if gap >= 1 else _fit(f"{left} {right}", w)


def _wrap(text: str, w: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > w:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(_fit(line, w))
    return lines


class ConsoleScreen:
    """The curses UI on the process's terminal; :meth:`run` blocks until ``stop`` is set."""

    KEYS = {curses.KEY_F1: Key.CHARGE_MODE, curses.KEY_F2: Key.RETURN_MODE, curses.KEY_F10: Key.LOGOUT}
    PAD_KEYS = {ord("/"): Key.CHARGE_MODE, ord("*"): Key.RETURN_MODE, ord("-"): Key.LOGOUT}

    def __init__(self, agent: HandheldAgent, frame: Callable[[], Frame], *,
                 beat: Callable[[], None] = lambda: None) -> None:
        self.agent = agent
        self.frame = frame
        self.beat = beat
        self._typed = ""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        agent.add_listener(self._wake)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def run(self, stop: threading.Event) -> None:
        for name in ("LINES", "COLUMNS"):  # the terminal's real size, not a stale one from the environment
            os.environ.pop(name, None)
        curses.wrapper(self._main, stop)

    def _main(self, scr: curses.window, stop: threading.Event) -> None:
        curses.curs_set(0)
        scr.nodelay(True)
        scr.keypad(True)
        styles = self._styles()
        while not stop.is_set():
            self.beat()
            self._draw(scr, styles)
            ready, _, _ = select.select([sys.stdin, self._wake_r], [], [], 1.0)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            while (ch := scr.getch()) != -1:
                self._key(ch)

    def _key(self, ch: int) -> None:
        if ch in self.KEYS:
            self.agent.key(self.KEYS[ch])
        elif ch in self.PAD_KEYS and not self._typed:
            self.agent.key(self.PAD_KEYS[ch])
        elif ch in (10, 13, curses.KEY_ENTER):
            line, self._typed = self._typed, ""
            self.agent.typed("")
            self.agent.console_line(line)
        elif ch in (curses.KEY_BACKSPACE, 127, 8):
            self._typed = self._typed[:-1]
            self.agent.typed(self._typed)
        elif ch == 27:
            self._typed = ""
            self.agent.typed("")
        elif 32 < ch < 127 and len(self._typed) < _MAX_TYPED:
            self._typed += chr(ch)
            self.agent.typed(self._typed)

    @staticmethod
    def _styles() -> dict[str, int]:
        styles = {"title": curses.A_BOLD | curses.A_REVERSE, "ok": curses.A_BOLD | curses.A_REVERSE,
                  "refused": curses.A_BOLD | curses.A_REVERSE, "info": curses.A_BOLD, "dim": curses.A_DIM,
                  "plain": curses.A_BOLD}
        if curses.has_colors():
            curses.start_color()
            curses.init_pair(1, curses.COLOR_BLACK, curses.COLOR_GREEN)
            curses.init_pair(2, curses.COLOR_WHITE, curses.COLOR_RED)
            curses.init_pair(3, curses.COLOR_BLACK, curses.COLOR_CYAN)
            styles.update(ok=curses.color_pair(1) | curses.A_BOLD, refused=curses.color_pair(2) | curses.A_BOLD,
                          title=curses.color_pair(3) | curses.A_BOLD)
        return styles

    def _draw(self, scr: curses.window, styles: dict[str, int]) -> None:
        try:
            self._paint(scr, styles)
        except curses.error:  # a terminal too small for a line, or resized while drawing: next frame redraws
            log.debug("screen: frame not drawn", exc_info=True)

    def _paint(self, scr: curses.window, styles: dict[str, int]) -> None:
        height, width = scr.getmaxyx()
        lines = frame_lines(self.frame(), width - 1)
        scr.erase()
        for y, (style, text) in enumerate(lines[: height - 1]):
            scr.addstr(y, 0, text[: width - 1], styles.get(style, 0))
        keys = "F1 / charge  F2 * return  F10 - log out"
        scr.addstr(height - 1, 0, keys[: width - 1], curses.A_DIM)
        scr.refresh()


class HeadlessScreen:
    """No display: the same news as lines on standard output (verdicts, link and scanner changes)."""

    def __init__(self, agent: HandheldAgent, frame: Callable[[], Frame], *, out: Callable[[str], None] | None = None,
                 beat: Callable[[], None] = lambda: None) -> None:
        self.agent = agent
        self.frame = frame
        self.out = out or _print
        self.beat = beat

    def run(self, stop: threading.Event) -> None:
        verdicts: queue.Queue[tuple[Verdict, StationView]] = queue.Queue()
        agent = self.agent
        agent.add_verdict_listener(lambda v: verdicts.put((v, agent.station.view)))  # the view as it was told
        link: tuple[bool, bool] | None = None
        scanners: dict[str, str] = {}
        while not stop.is_set():
            self.beat()
            try:
                v, view = verdicts.get(timeout=0.25)
                self._verdict(v, view)
            except queue.Empty:
                pass
            f = self.frame()
            now_link = (f.link.connected, f.link.backlog == 0)
            if now_link != link:
                link = now_link
                self.out(f"{f.device} link {'online' if f.link.connected else 'offline'} backlog={f.link.backlog}")
            for name, state in f.scanners.items():
                if scanners.get(name) != state:
                    self.out(f"{f.device} scanner {name} {state}")
            scanners = dict(f.scanners)


    def _verdict(self, v: Verdict, view: StationView) -> None:
        f = self.frame()
        self.out(f"{f.device} verdict {v.title} | {v.message} | user={view.user or '-'} "
                 f"patient={view.patient.admission if view.patient else '-'} seq={v.seq}")


def _print(line: str) -> None:
    print(line, flush=True)


def choose_screen(setting: str) -> str:
    """``console`` when the agent was started on a terminal (and the setting allows it), else ``headless``."""
    if setting == "off":
        return "headless"
    try:
        tty = sys.stdin.isatty() and sys.stdout.isatty() and bool(os.environ.get("TERM")) \
            and os.environ.get("TERM") != "dumb"
    except (ValueError, OSError):
        tty = False
    return "console" if tty else "headless"
