"""Write the JSON Schema of the wire messages, for other clients and MQTT Explorer users.

    python -m shared.jsonschema        # rewrites shared/*.schema.json

A test checks that the committed files are current. Needs pydantic (the hub's extra).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from shared.schema import Meta, MetricsV1

HERE = Path(__file__).parent
SCHEMAS: dict[str, Any] = {"metrics-v1.schema.json": MetricsV1, "meta-v1.schema.json": Meta}


def render(model: Any) -> str:
    """Return the JSON Schema of one message type as stable, pretty JSON text."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(model).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    for name, model in SCHEMAS.items():
        (HERE / name).write_text(render(model))
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
