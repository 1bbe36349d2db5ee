"""The bundled demo catalog: 6,764 Amazon ESCI products (Apache-2.0; see NOTICE here)."""

from __future__ import annotations

from pathlib import Path

DEMO_CATALOG = Path(__file__).with_name("esci_us_products.jsonl.gz")
DEMO_INDEX = "demo"
