"""The OpenAPI 3.1 description of the live console's JSON API (served at ``/openapi.json``).

The document is a package data file, ``nightcore/dashboard/data/openapi.json``; only its
``info.version`` is filled in when it is served.
"""

from __future__ import annotations

import json
from typing import Any

from nightcore.dashboard.assets import read_data


def schema(version: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(read_data("openapi.json"))
    doc["info"]["version"] = version
    return doc
