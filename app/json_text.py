"""JSON text as Assay writes it: characters beyond ASCII kept as they are.

The encoder is made once. `json.dumps` given any option builds a new encoder
on every call, which doubles the cost of encoding a small value, and values
are encoded once per test case and per result.
"""

from __future__ import annotations

import json

dumps = json.JSONEncoder(ensure_ascii=False).encode
