"""hadolint on the Dockerfiles; checkov's Kubernetes checks on every rendered scenario.

A finding that stays on purpose is suppressed in place, on the object, with its reason
(``checkov.io/skipN: CKV_...=<reason>`` annotations). checkov runs from a virtualenv of
its own (scripts/checkov creates .venv-checkov on first use): its pins clash with ours.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.charts.rendering import ROOT, render_scenario, scenarios

DOCKERFILES = sorted(ROOT.glob("Dockerfile*"))


def _hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    return str(found) if found.exists() else shutil.which("hadolint") or "hadolint"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_are_clean_under_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hadolint ignore" not in dockerfile.read_text(), "no hadolint finding is ignored"


def test_rendered_manifests_are_clean_under_checkov(tmp_path: Path) -> None:
    for scenario in scenarios():
        docs = [m.doc for m in render_scenario(scenario)]
        target = tmp_path / f"{scenario.chart}-{scenario.name}.yaml"
        target.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    result = subprocess.run(
        [
            str(ROOT / "scripts" / "checkov"),
            *("--framework", "kubernetes", "--directory", str(tmp_path)),
            "--skip-download",  # no network: no guideline links
            *("--compact", "--output", "json"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.stdout.strip(), result.stderr[-3000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({Path(c['file_path']).name})"
        for report in reports
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    skipped = [c for report in reports for c in report["results"]["skipped_checks"]]
    assert skipped, "the known findings are suppressed, not absent"
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} has no reason"
    assert result.returncode == 0, result.stderr[-3000:]
