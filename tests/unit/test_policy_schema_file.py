"""The JSON Schema editors use (policies/policy.schema.json) is the one the code validates with."""

import json
from pathlib import Path

from wardgate.core.policy import policy_json_schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "policies" / "policy.schema.json"


def test_published_schema_matches_the_code():
    published = json.loads(SCHEMA_FILE.read_text())
    assert published == json.loads(json.dumps(policy_json_schema())), (
        "policies/policy.schema.json is stale: regenerate with `wardgate policy schema > policies/policy.schema.json`")
