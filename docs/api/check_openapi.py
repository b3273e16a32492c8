"""Checks recorded server API answers against the OpenAPI document.

usage: check_openapi.py OPENAPI.json ANSWERS.json

ANSWERS.json is a list of {"path", "status", "body"}. The document itself must be valid
OpenAPI 3.0; each answer's body must match the schema the document gives its path and status;
a path the document lacks (other than through /api/{method}) or a status it does not list for
that path is an error. Needs openapi-spec-validator (which brings openapi-schema-validator).
"""
import json
import sys

from openapi_spec_validator import validate
from openapi_schema_validator import OAS30Validator


def main():
    spec = json.load(open(sys.argv[1]))
    answers = json.load(open(sys.argv[2]))
    validate(spec)
    problems = []
    for a in answers:
        path, status, body = a["path"], str(a["status"]), a["body"]
        item = spec["paths"].get(path) or spec["paths"]["/api/{method}"]
        responses = item["post"]["responses"]
        resp = responses.get(status)
        if resp is None:
            problems.append(f"{path}: status {status} is not in the document")
            continue
        if "$ref" in resp:
            resp = spec["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
        schema = resp["content"]["application/json"]["schema"]
        # The schema with the document's components beside it, so its $refs resolve.
        validator = OAS30Validator({**schema, "components": spec["components"]})
        for e in validator.iter_errors(body):
            problems.append(f"{path} {status}: {e.message} in {json.dumps(body)[:200]}")
    for p in problems:
        print(p)
    print(f"{len(answers)} answers checked, {len(problems)} problems")
    sys.exit(1 if problems else 0)


main()
