"""The chart's README says what the chart does: its RBAC table is the rules the templates render, in both
watch modes, and its settings table names every variable the operator container gets."""

from __future__ import annotations

import re

from tests.chart.chart import CHART, Manifest, env, of_kind, render

README = (CHART / "README.md").read_text()
NAMESPACED = CHART / "ci" / "namespaced-values.yaml"
# (API group, resource, verb, restricted to named objects)
Grant = tuple[str, str, str, bool]


def _table(header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with `header`, as lists of cells."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def documented_grants() -> set[Grant]:
    grants = set()
    for group, resources, verbs, _why in _table("| API group | resources | verbs |"):
        api_group = "" if group == "core" else group.strip("`")
        # "patch (only `name`)" is restricted to named objects; other notes in parentheses are not verbs.
        verbs = re.sub(r"\(([^)]*)\)", lambda m: "(only)" if m.group(1).startswith("only ") else "", verbs)
        for resource in re.findall(r"`([a-z/]+)`", resources):
            for item in re.split(r"[,;]", verbs):
                verb = item.split()[0]
                grants.add((api_group, resource, verb, "(only)" in item))
    return grants


def rendered_grants(manifests: list[Manifest]) -> set[Grant]:
    roles = of_kind(manifests, "ClusterRole") + of_kind(manifests, "Role")
    return {(group, resource, verb, bool(rule.get("resourceNames")))
            for role in roles for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_rbac_table_is_what_the_chart_grants_in_both_modes() -> None:
    granted = rendered_grants(render()) | rendered_grants(render([NAMESPACED]))
    documented = documented_grants()
    assert documented - granted == set(), "the README lists rights the chart does not grant"
    assert granted - documented == set(), "the chart grants rights the README does not list"


def test_rbac_table_parser_sees_a_stale_row() -> None:
    """The check above can fail: a row for `patch` on llmdeployments (granted once, no longer) is caught."""
    assert ("batchline.dev", "llmdeployments", "patch", False) not in rendered_grants(render())
    assert ("batchline.dev", "llmdeployments", "list", False) in documented_grants()
    assert ("", "configmaps", "patch", True) in documented_grants()


def test_settings_table_names_every_variable_the_chart_sets() -> None:
    documented = set(re.findall(r"`(BATCHLINE_[A-Z_]+)`", README))
    rendered = {name for name in env(render([NAMESPACED])) if name.startswith("BATCHLINE_")}
    passed_through = {"BATCHLINE_LATENCY_QUERY", "BATCHLINE_EXAMPLE_SETTING"}  # prometheus.queryTemplates, operator.env
    assert rendered - passed_through <= documented, rendered - passed_through - documented
