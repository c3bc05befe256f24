#!/usr/bin/env python3
"""Smoke test of a deployed relcert-service (standalone: Python 3 standard library only).

    python smoke_test.py --url http://127.0.0.1:8080 [--golden golden.json] [--wait-s 120]

Checks that /health/ready, /health/live and /v2/health/ready answer 200, that every
packaged model's metadata (GET /v2/models/{name}, the Open Inference Protocol) names the
certified version and input tensor, then sends every golden request of golden.json (fixed
inputs with the answers the certified models gave at package time): for every model through
POST /v2/models/{name}/infer, and for the example models also on their named endpoints. Each
answer is compared: numbers within the tolerance (1e-4); the model_version, the method, the
output's name, datatype and shape exactly. Prints one line per check and exits 0 when all
pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_GOLDEN = Path(__file__).resolve().with_name("golden.json")


def _request(url, payload=None, timeout=10.0):
    """(status, parsed JSON or text) of a GET (payload None) or a JSON POST."""
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=data,
        method="GET" if payload is None else "POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    text = body.decode("utf-8", errors="replace")
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def _numbers(value, classes):
    """A flat list of floats from a number, a list, or a {class: probability} mapping."""
    if isinstance(value, dict):
        if classes and set(value) == set(classes):
            return [float(value[c]) for c in classes]
        return [float(value[k]) for k in sorted(value)]
    if isinstance(value, list | tuple):
        out = []
        for item in value:
            out.extend(_numbers(item, classes))
        return out
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return [float(value)]


def compare(expected, actual, tolerance, classes=()):
    """The differences between an expected and an actual answer (empty when they agree)."""
    if not isinstance(actual, dict):
        return [f"answer is not a JSON object: {actual!r}"]
    problems = []
    for key, want in expected.items():
        if key not in actual:
            problems.append(f"{key} missing from the answer")
            continue
        got = actual[key]
        if key == "model_version" or isinstance(want, str):
            if str(got) != str(want):
                problems.append(f"{key} is {got!r}, expected {want!r}")
            continue
        try:
            want_values, got_values = _numbers(want, classes), _numbers(got, classes)
        except (TypeError, ValueError) as exc:
            problems.append(f"{key}: {exc}")
            continue
        if len(want_values) != len(got_values):
            problems.append(f"{key} has {len(got_values)} values, expected {len(want_values)}")
            continue
        worst = max(
            (abs(w - g) if math.isfinite(g) else math.inf)
            for w, g in zip(want_values, got_values, strict=True)
        )
        if worst > tolerance:
            problems.append(f"{key} differs by {worst:.3g} (> {tolerance:g}): got {got!r}")
    return problems


def compare_v2(expected, actual, tolerance):
    """The differences between an expected and an actual Open Inference Protocol answer."""
    if not isinstance(actual, dict):
        return [f"answer is not a JSON object: {str(actual)[:200]!r}"]
    problems = [
        f"{key} is {actual.get(key)!r}, expected {expected[key]!r}"
        for key in ("model_name", "model_version", "id")
        if key in expected and actual.get(key) != expected[key]
    ]
    outputs = {o.get("name"): o for o in actual.get("outputs") or [] if isinstance(o, dict)}
    for want in expected.get("outputs", []):
        got = outputs.get(want["name"])
        if got is None:
            problems.append(f"output {want['name']!r} missing from the answer")
            continue
        for key in ("datatype", "shape"):
            if got.get(key) != want[key]:
                problems.append(
                    f"output {want['name']} {key} is {got.get(key)!r}, expected {want[key]!r}"
                )
        problems += [
            f"output {want['name']} {problem}"
            for problem in compare({"data": want["data"]}, {"data": got.get("data")}, tolerance)
        ]
    return problems


def _wait_ready(base, wait_s, timeout):
    deadline = time.monotonic() + wait_s
    while True:
        try:
            status, _ = _request(base + "/health/ready", timeout=timeout)
            if status == 200 or time.monotonic() >= deadline:
                return
        except OSError:
            if time.monotonic() >= deadline:
                return
        time.sleep(2.0)


def _metadata_problems(model, metadata):
    """What a model metadata answer gets wrong: the version, the input tensor."""
    if not isinstance(metadata, dict):
        return [f"answer is not a JSON object: {str(metadata)[:200]!r}"]
    problems = []
    version = model.get("version")
    if version is not None and version not in (metadata.get("versions") or []):
        problems.append(f"versions are {metadata.get('versions')!r}, expected {version!r}")
    expected_input = model.get("input")
    inputs = metadata.get("inputs") or [None]
    if expected_input is not None and inputs[0] != expected_input:
        problems.append(f"input is {inputs[0]!r}, expected {expected_input!r}")
    return problems


def run(base, golden, timeout=10.0, wait_s=0.0, out=sys.stdout):
    """Run every check against `base`; returns the number of failed checks."""
    base = base.rstrip("/")
    tolerance = float(golden.get("tolerance", 1e-4))
    models = golden.get("models", {})
    failures = 0
    total = 0

    def report(ok, what, detail=""):
        nonlocal failures, total
        total += 1
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {what}{': ' + detail if detail else ''}", file=out)

    if wait_s > 0:
        _wait_ready(base, wait_s, timeout)
    for path in ("/health/ready", "/health/live", "/v2/health/ready"):
        try:
            status, _ = _request(base + path, timeout=timeout)
            report(status == 200, f"GET {path}", f"HTTP {status}")
        except OSError as exc:
            report(False, f"GET {path}", f"no answer ({exc})")
    for name, model in sorted(models.items()):
        what = f"GET /v2/models/{name}"
        try:
            status, metadata = _request(f"{base}/v2/models/{name}", timeout=timeout)
        except OSError as exc:
            report(False, what, f"no answer ({exc})")
            continue
        problems = _metadata_problems(model, metadata) if status == 200 else [f"HTTP {status}"]
        report(not problems, what, "; ".join(problems) or f"version {model.get('version')}")
    for case in golden.get("cases", []):
        what = f"POST {case['endpoint']} [{case['id']}]"
        classes = models.get(case.get("model"), {}).get("class_names") or ()
        try:
            status, answer = _request(base + case["endpoint"], case["request"], timeout)
        except OSError as exc:
            report(False, what, f"no answer ({exc})")
            continue
        if status != 200:
            report(False, what, f"HTTP {status}: {str(answer)[:200]}")
            continue
        if case.get("protocol") == "v2":
            problems = compare_v2(case["expected"], answer, tolerance)
        else:
            problems = compare(case["expected"], answer, tolerance, classes)
        report(not problems, what, "; ".join(problems) or "matches the certified answer")
    verdict = "PASSED" if failures == 0 else "FAILED"
    print(f"smoke test {verdict}: {total - failures} of {total} checks passed", file=out)
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL of the service, e.g. http://host:80")
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="golden.json path")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument(
        "--wait-s", type=float, default=0.0, help="wait up to this long for /health/ready first"
    )
    args = parser.parse_args(argv)
    try:
        golden = json.loads(args.golden.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"FAIL  cannot read golden requests {args.golden}: {exc}", file=sys.stderr)
        return 1
    return 1 if run(args.url, golden, args.timeout, args.wait_s) else 0


if __name__ == "__main__":
    sys.exit(main())
