"""The alert rules, checked by Prometheus's own tool: ``promtool check rules`` (syntax,
PromQL, templates) and ``promtool test rules`` (rules_test.yml: input series and the
alerts they must and must not raise). ``scripts/test.sh`` installs Debian's ``prometheus``
package, which ships promtool; without it these tests fail, they are not skipped."""

from __future__ import annotations

import shutil
import subprocess

from tests.observability.helpers import RULES, RULES_TEST, alert_rules

EXPECTED_ALERTS = {
    "GeminiMeterBudgetAt80Percent",
    "GeminiMeterBudgetExhausted",
    "GeminiMeterBudgetBurnRate",
    "GeminiMeterUpstreamErrorRatio",
    "GeminiMeterWriterFailing",
    "GeminiMeterJournalFilling",
    "GeminiMeterUnpricedModel",
    "GeminiMeterUnmeteredRoute",
}


def _promtool(*args: str) -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: install Debian's prometheus package (scripts/test.sh)"
    done = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_checks_the_rules():
    out = _promtool("check", "rules", str(RULES))
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in out


def test_promtool_unit_tests_of_the_rules_pass():
    out = _promtool("test", "rules", str(RULES_TEST))
    assert "SUCCESS" in out


def test_the_rules_cover_what_the_issue_asks_for():
    assert {name for name, _ in alert_rules()} == EXPECTED_ALERTS
    tested = RULES_TEST.read_text()
    for name in EXPECTED_ALERTS:
        # each alert is expected to fire somewhere in the unit tests
        assert f"alertname: {name}\n        exp_alerts:\n          - " in tested, name
