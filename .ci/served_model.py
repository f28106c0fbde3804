"""Which model a running API serves, checked from the host (standard library only): .ci/compose's rollback stages.

python3 .ci/served_model.py http://127.0.0.1:8000 MODEL_ID
    /model's id, and the X-Model-Id of a /generate and of an /encode answer, are MODEL_ID.
python3 .ci/served_model.py http://127.0.0.1:8000 MODEL_ID --wait 60
    The same after a reload: first /generate again and again until /model says MODEL_ID (at most 60 s), each answer
    a 200 from the model that served before or from MODEL_ID.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import NoReturn

from smoke import check, multipart, request, tiny_png


def call(url: str, body: bytes | None = None, content_type: str = "") -> tuple[int, str, bytes]:
    """GET (or POST with a body): the status, the X-Model-Id header and the body."""
    return request("POST" if body is not None else "GET", url, body, content_type or None, header="X-Model-Id")


def fail(what: str, seen: object) -> NoReturn:
    check(what, False, seen)  # prints what was expected and what was seen, and exits 1
    sys.exit(1)


def served_id(base: str) -> str:
    status, _, body = call(f"{base}/model")
    if status != 200:
        fail("GET /model -> 200", f"{status} {body[:200]!r}")
    return str(json.loads(body)["id"])


def generate(base: str) -> tuple[int, str]:
    """POST /generate: its status and X-Model-Id."""
    status, model_id, _ = call(f"{base}/generate", json.dumps({"digit": 3, "n": 4}).encode(), "application/json")
    return status, model_id


def wait_for(base: str, expected: str, timeout_s: float) -> None:
    previous = served_id(base)
    answers: Counter[str] = Counter()
    start = time.monotonic()
    while (now := served_id(base)) != expected:
        if time.monotonic() - start > timeout_s:
            fail(
                f"/model says {expected} within {timeout_s:g} s",
                f"still {now} (a refused reload keeps the old model: the api's log says why)",
            )
        status, model_id = generate(base)
        if status != 200:
            fail("POST /generate while reloading -> 200", f"{status} after {dict(answers)}")
        if model_id not in (previous, expected):
            fail(f"X-Model-Id while reloading is {previous} or {expected}", model_id)
        answers[model_id] += 1
        time.sleep(0.2)
    elapsed = time.monotonic() - start
    seen = f"/generate meanwhile, all 200: {dict(answers)}"
    if previous == expected:
        check(f"reloaded to {expected}", True, "it served already when the wait began")
    else:
        check(f"reloaded to {expected}", True, f"from {previous} in {elapsed:.1f} s; {seen}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("model_id")
    parser.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait for a reload, at most S seconds")
    args = parser.parse_args()
    base = args.base.rstrip("/")
    if not base.startswith(("http://127.0.0.1:", "http://localhost:")):
        sys.exit("served_model.py only talks to 127.0.0.1")

    if args.wait:
        wait_for(base, args.model_id, args.wait)
    now = served_id(base)
    if now != args.model_id:
        fail(f"GET /model id is {args.model_id}", now)
    status, model_id = generate(base)
    if (status, model_id) != (200, args.model_id):
        fail(f"POST /generate -> 200 with X-Model-Id {args.model_id}", f"{status} {model_id!r}")
    data, ctype = multipart({"digit": "1"}, {"file": ("one.png", tiny_png(), "image/png")})
    status, model_id, body = call(f"{base}/encode", data, ctype)
    if (status, model_id) != (200, args.model_id):
        fail(f"POST /encode -> 200 with X-Model-Id {args.model_id}", f"{status} {model_id!r} {body[:200]!r}")
    if json.loads(body).get("model_id") != args.model_id:
        fail(f"POST /encode's JSON model_id is {args.model_id}", body[:200])
    check(f"{args.model_id} serves: /model's id, /generate's and /encode's X-Model-Id", True)


if __name__ == "__main__":
    main()
