"""The catalog document the gateway publishes to its devices: its schema name and content digest.

``gateway.catalog_export`` builds the document, ``device.catalog_cache`` validates and caches it (the
format is described there). Both sides compute :func:`content_digest` here, so they agree on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

DOC_SCHEMA: Final = "spd-device-catalog/1"
_UNSIGNED: Final = ("version", "digest", "generated_at")


def content_digest(doc: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of the document without its version, digest and timestamp."""
    content = {k: v for k, v in doc.items() if k not in _UNSIGNED}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
