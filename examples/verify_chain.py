"""Re-verify a conversation's hash chain over the HTTP API, with nothing of threadlog's code.

    THREADLOG_API_KEY=<key> python examples/verify_chain.py http://127.0.0.1:8000 <conversation-id>

(an auditor's key, or the owner's).
Exit status 0 and "intact up to position N", or 1 naming the first broken position.
The canonical encoding is described in docs/audit.md.
"""

import hashlib
import json
import os
import sys
import urllib.request
from typing import Any


def canonical_hash(event: dict[str, Any]) -> str:
    document = {k: v for k, v in event.items() if k not in ("hash", "global_position", "erased")}
    # Content is hashed as stored: sealed with its owner's key (docs/erasure.md).
    document["data"] = {**event["data"], **document.pop("sealed", {})}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def main(base: str, conversation: str) -> int:
    if not base.startswith(("http://", "https://")):
        print("the base URL must be http:// or https://")
        return 2
    previous, after = "0" * 64, 0
    while True:
        url = f"{base}/v1/conversations/{conversation}/events?after={after}"
        headers = {"Accept": "application/json", "X-API-Key": os.environ["THREADLOG_API_KEY"]}
        request = urllib.request.Request(url, headers=headers)  # noqa: S310
        with urllib.request.urlopen(request) as answer:  # noqa: S310 (scheme checked)
            page = json.load(answer)
        for event in page["items"]:
            if event["position"] != after + 1:
                print(f"broken at position {after + 1}: missing")
                return 1
            if event["prev_hash"] != previous or canonical_hash(event) != event["hash"]:
                print(f"broken at position {event['position']}")
                return 1
            previous, after = event["hash"], event["position"]
        if page["next"] is None:
            print(f"intact up to position {after}")
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
