"""NDJSON for schemathesis, which has no serializer for `application/x-ndjson`.

The OpenAPI document describes an NDJSON body or answer by the schema of one line
(`POST /v1/topics/{topic}/records:stream` takes lines of `NewRecord` and answers lines
of `RecordReport`). A generated body is one value, so it is sent as one line; an answer
is validated line by line only when it has exactly one line, which is what a one-line
body gets back.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson_body(ctx, value):
    return (json.dumps(value) + "\n").encode()


@schemathesis.deserializer("application/x-ndjson")
def ndjson_answer(ctx, response):
    lines = [line for line in response.content.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"expected one NDJSON line for a one-line body, got {len(lines)}")
    return json.loads(lines[0])
