#!/usr/bin/env python3
"""Rewrites deploy/k8s/base/prometheus-rules.yaml from deploy/prometheus/alerts.yml (verbatim)."""
import pathlib

root = pathlib.Path(__file__).resolve().parent.parent
alerts = (root / "prometheus/alerts.yml").read_text()
target = root / "k8s/base/prometheus-rules.yaml"
head = target.read_text().split("  ringcast-alerts.yml: |\n")[0]
body = "".join("    " + l if l.strip() else "\n" for l in alerts.splitlines(keepends=True))
target.write_text(head + "  ringcast-alerts.yml: |\n" + body)
