"""Renders docs/api-reference.md from the CRD, so the reference can never disagree with the schema.

    python -m batchline_tools.apidocs crds/llmdeployment.yaml > docs/api-reference.md
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml


def _type(node: Mapping[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    if node.get("type") == "array":
        return f"[]{_type(node.get('items', {}))}"
    if node.get("type") == "object" and "additionalProperties" in node:
        return f"map[string]{_type(node['additionalProperties'])}"
    return str(node.get("type", ""))


def _constraints(node: Mapping[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    if "minimum" in node or "maximum" in node:
        parts.append(f"{node.get('minimum', '')}..{node.get('maximum', '')}")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    for rule in node.get("x-kubernetes-validations", []):
        parts.append(rule["message"])
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _rows(node: Mapping[str, Any], path: str, required: set[str]) -> Iterator[str]:
    for key, sub in (node.get("properties") or {}).items():
        field = f"{path}.{key}"
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
        req = " (required)" if key in required else ""
        desc = _cell(" ".join(str(sub.get("description", "")).split()))
        yield f"| `{field}`{req} | {_type(sub)} | {default} | {desc} | {_cell(_constraints(sub))} |"
        items = sub.get("items", {})
        child = items if sub.get("type") == "array" and items.get("type") == "object" else sub
        yield from _rows(child, f"{field}[]" if child is items else field, set(child.get("required", [])))


def render(crd: Mapping[str, Any]) -> str:
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    names = crd["spec"]["names"]
    lines = [
        f"# {names['kind']} API reference ({crd['spec']['group']}/{version['name']})",
        "",
        "Generated from `crds/llmdeployment.yaml` by `python -m batchline_tools.apidocs`; do not edit by hand.",
        f"Short name `{names['shortNames'][0]}`; `kubectl explain {names['shortNames'][0]}.spec` shows the same text.",
        "",
        " ".join(schema["description"].split()),
        "",
        "Object-wide rules: " + "; ".join(r["message"] for r in schema.get("x-kubernetes-validations", [])),
        "",
    ]
    for section in ("spec", "status"):
        node = schema["properties"][section]
        lines += [f"## {section}", "", " ".join(node["description"].split()), ""]
        rules = [r["message"] for r in node.get("x-kubernetes-validations", [])]
        if rules:
            lines += ["Cross-field rules:", "", *(f"- {m}" for m in rules), ""]
        lines += ["| field | type | default | description | constraints |", "| --- | --- | --- | --- | --- |"]
        lines += list(_rows(node, section, set(node.get("required", []))))
        lines.append("")
    columns = version.get("additionalPrinterColumns", [])
    lines += ["## kubectl get columns", "", "| column | from | shown |", "| --- | --- | --- |"]
    lines += [f"| {c['name']} | `{c['jsonPath']}` | {'-o wide' if c.get('priority') else 'always'} |" for c in columns]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "crds/llmdeployment.yaml")
    sys.stdout.write(render(yaml.safe_load(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
