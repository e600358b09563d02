"""The cabinet's camera: a UDI read off a frame links the item to the patient like a scanner line does."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zxingcpp")
pytest.importorskip("cv2")

from hw_sim.cabinet import SimCabinet
from hw_sim.camera import Level, SymbolKind, render_scene, write_image_sequence
from hw_sim.udi_gen import make_udi

pytestmark = pytest.mark.skipif(shutil.which("zint") is None, reason="frames are rendered by zint")


def test_camera_read_datamatrix_becomes_a_consume_event(tmp_path: Path) -> None:
    udi = make_udi(gtin="06954321000017", lot="L2211", serial="CAM000001",
                   expiry=dt.date.today() + dt.timedelta(days=400))
    rng = np.random.default_rng(3)
    item = render_scene(SymbolKind.GS1_DATAMATRIX, udi, rng, Level.CLEAN).frame
    blank = np.full_like(item, 200)
    # 3 s of an empty view (the nurse shows the wristband to the scanner first), then the item label
    pattern = write_image_sequence([blank] * 30 + [item] * 10, tmp_path / "frames")
    cab = SimCabinet(tmp_path / "cab", extra_toml=f"""
[cabinet.camera]
enabled = true
device = "{pattern}"
decoder = "zxingcpp"
symbologies = ["GS1_DATAMATRIX"]
fps_limit = 10
""")
    cab.start()
    try:
        cab.agent.scan_text("ZY2026000042")  # the patient's wristband, from the cabinet's scanner
        ev = cab.wait_event("consume", timeout_s=15)
        assert ev is not None, [e.kind for e in cab.events()]
        assert ev.body["admission"] == "ZY2026000042"
        assert "CAM000001" in ev.body["udi"] and ev.body["udi"].startswith("]d2")
    finally:
        cab.stop()

