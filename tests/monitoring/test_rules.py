"""The alert rules: valid (promtool check rules), every rule's promtool unit tests pass, and
every alert has a case that fires it and one where it stays silent."""
import yaml

from _promtool import run_promtool
from trainer.monitoring.prometheus import RULES_FILE, RULES_TEST_FILE


def _alerts() -> list[str]:
    return [r["alert"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"] if "alert" in r]


def test_rules_file_is_valid(promtool):
    proc = run_promtool(promtool, "check", "rules", str(RULES_FILE))
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_promtool_unit_tests_pass(promtool):
    proc = run_promtool(promtool, "test", "rules", str(RULES_TEST_FILE), cwd=RULES_TEST_FILE.parent)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_promtool_unit_tests_fail_when_a_threshold_moves(promtool, tmp_path):
    """The unit tests can fail: with the pending threshold raised far, its case no longer fires."""
    text = RULES_FILE.read_text()
    assert "> 180" in text
    (tmp_path / "rules.yaml").write_text(text.replace("> 180", "> 100000"))
    (tmp_path / "rules_test.yaml").write_text(RULES_TEST_FILE.read_text())
    proc = run_promtool(promtool, "test", "rules", "rules_test.yaml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "TrainerJobPendingTooLong" in proc.stdout.decode() + proc.stderr.decode()


def test_every_alert_has_a_firing_and_a_silent_case():
    cases = [c for t in yaml.safe_load(RULES_TEST_FILE.read_text())["tests"] for c in t.get("alert_rule_test", [])]
    expected = set(_alerts())
    assert expected == {"TrainerJobPendingTooLong", "TrainerJobRestartingRepeatedly", "TrainerGpuIdle",
                        "TrainerCheckpointWritesFailing", "TrainerTrackingBacklogGrowing", "TrainerPromotionFailures"}
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert fires == expected, f"no firing case for {expected - fires}"
    assert silent == expected, f"no silent case for {expected - silent}"


def test_every_alert_says_what_it_means_and_what_to_do():
    for g in yaml.safe_load(RULES_FILE.read_text())["groups"]:
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
            assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
