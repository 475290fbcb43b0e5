"""Checks of the deployment files (Dockerfile, k8s/ manifests, Grafana dashboard).

Each check returns the list of problems it found (empty: fine), so a test can assert
both that the real files pass and that a deliberately broken one is caught.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.support.kustomize import WORKLOAD_KINDS, split_image

__all__ = [
    "DASHBOARD_METRICS",
    "Dockerfile",
    "check_dashboard",
    "check_dockerfile",
    "check_workload",
    "container_env",
    "cpu_cores",
    "find",
    "image_problems",
    "media_server",
    "parse_dockerfile",
    "pod_specs",
]

# The metric names /metrics exports (the names the dashboard may use, all of them).
DASHBOARD_METRICS = {
    "broadcast_streams",
    "broadcast_sessions",
    "broadcast_joins_total",
    "broadcast_join_failures_total",
    "broadcast_ingress_bytes_total",
    "broadcast_ingress_packets_total",
    "broadcast_egress_bytes_total",
    "broadcast_egress_packets_total",
    "broadcast_nacks_total",
    "broadcast_retransmits_total",
    "broadcast_plis_total",
    "broadcast_layer_switches_total",
    "broadcast_join_seconds",
    "broadcast_forward_delay_seconds",
    "broadcast_event_loop_lag_seconds",
    "broadcast_cpu_ratio",
    "broadcast_viewers",
    "broadcast_relay_upstreams",
    "broadcast_registry_up",
}
HISTOGRAMS = {
    "broadcast_join_seconds",
    "broadcast_forward_delay_seconds",
    "broadcast_event_loop_lag_seconds",
}


# --- Kubernetes workloads -------------------------------------------------------------


def pod_specs(resources: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) for every workload among `resources`."""
    for r in resources:
        if r["kind"] in WORKLOAD_KINDS:
            yield r, r["spec"]["template"]["spec"]


def find(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name), None)


def media_server(resources: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The broadcast Deployment and its broadcast container."""
    deployment = find(resources, "Deployment", "broadcast")
    assert deployment is not None
    spec = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "broadcast"]
    return deployment, container


def container_env(
    resources: list[dict[str, Any]], container: dict[str, Any], field_refs: dict[str, str]
) -> dict[str, str]:
    """The environment the container starts with, as the kubelet builds it.

    `field_refs`: the values the downward API gives each `fieldPath`.
    """
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = find(resources, "ConfigMap", source["configMapRef"]["name"])
            assert cm is not None, f"ConfigMap {source['configMapRef']['name']} missing"
            env.update(cm.get("data", {}))
        else:
            secret = find(resources, "Secret", source["secretRef"]["name"])
            assert secret is not None, f"Secret {source['secretRef']['name']} missing"
            for key, value in secret.get("data", {}).items():
                env[key] = base64.b64decode(value).decode()
            env.update(secret.get("stringData", {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], var["value"])
        else:
            env[var["name"]] = field_refs[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def image_problems(image: str) -> list[str]:
    _, tag, digest = split_image(image)
    if digest is None and (tag is None or tag == "latest"):
        return [f"image {image!r} is not pinned: give a version tag (not latest) or a digest"]
    return []


def check_workload(workload: dict[str, Any], *, media_server: bool) -> list[str]:
    """Problems of one Deployment/DaemonSet; `media_server`: it runs broadcast itself."""
    where = f"{workload['kind']}/{workload['metadata']['name']}"
    spec = workload["spec"]["template"]["spec"]
    pod_sc = spec.get("securityContext", {})
    problems: list[str] = []
    if media_server:
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace < 600:
            problems.append(f"{where}: terminationGracePeriodSeconds {grace} < 600 cuts drains")
    for c in spec.get("initContainers", []) + spec["containers"]:
        at = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        problems += [f"{at}: {p}" for p in image_problems(c["image"])]
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                problems.append(f"{at}: no {probe}")
        resources = c.get("resources", {})
        for part in ("requests", "limits"):
            for res in ("cpu", "memory"):
                if res not in resources.get(part, {}):
                    problems.append(f"{at}: no {part}.{res}")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot", False)):
            problems.append(f"{at}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{at}: runs as uid 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{at}: readOnlyRootFilesystem is not true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{at}: capabilities do not drop ALL")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        if seccomp.get("type") != "RuntimeDefault":
            problems.append(f"{at}: seccompProfile is not RuntimeDefault")
        if media_server:
            if "startupProbe" not in c:
                problems.append(f"{at}: no startupProbe")
            if "preStop" not in c.get("lifecycle", {}):
                problems.append(f"{at}: no preStop hook (endpoints keep sending new sessions)")
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if "/tmp" not in mounts:
                problems.append(f"{at}: no writable /tmp on a read-only root filesystem")
    return problems


# --- Dockerfile -----------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: list[Stage]


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions of a Dockerfile per stage; `FROM` images with ARG defaults resolved."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], ""), words[0])
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=image, name=alias))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(args=args, stages=stages)


def _exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    ok = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    return value if ok else None


def _env_pairs(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if len(words) == 2 and "=" not in words[0]:  # legacy `ENV KEY value`
        return {words[0]: words[1]}
    return dict(w.split("=", 1) for w in words)


def check_dockerfile(text: str, *, settings_fields: set[str]) -> list[str]:
    """The image rules: multi-stage, pinned bases, non-root, exec form, health, ports."""
    df = parse_dockerfile(text)
    problems: list[str] = []
    if len(df.stages) < 2:
        problems.append("multi-stage: fewer than two FROM")
    if not df.stages:
        return problems
    names = {s.name for s in df.stages if s.name}
    for stage in df.stages:
        if stage.image not in names:
            problems += [f"FROM: {p}" for p in image_problems(stage.image)]
        for args in stage.all("ADD"):
            if re.search(r"(^|\s)(https?|ftp)://", args):
                problems.append(f"ADD of a URL ({args}): download in a RUN with a checksum")
        for args in stage.all("RUN"):
            if "pip install" in args and "--no-cache-dir" not in args:
                problems.append(f"pip install without --no-cache-dir: {args}")
            if "apt-get install" in args and "rm -rf /var/lib/apt/lists" not in args:
                problems.append(f"apt lists not removed: {args}")
    final = df.stages[-1]
    users = final.all("USER")
    if not users:
        problems.append("final stage: no USER (runs as root)")
    elif users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"final stage: USER {users[-1]} is root")
    elif not users[-1].split(":")[0].isdigit():
        problems.append(f"final stage: USER {users[-1]} is not numeric (runAsNonRoot)")
    for keyword in ("ENTRYPOINT", "CMD"):
        found = final.all(keyword)
        if not found:
            problems.append(f"final stage: no {keyword}")
        elif _exec_form(found[-1]) is None:
            problems.append(f"final stage: {keyword} {found[-1]} is not exec (JSON) form")
    health = final.all("HEALTHCHECK")
    if not health:
        problems.append("final stage: no HEALTHCHECK")
    else:
        command = health[-1].split("CMD", 1)[-1].strip()
        if _exec_form(command) is None:
            problems.append("HEALTHCHECK CMD is not exec (JSON) form")
        if "127.0.0.1:8080/healthz" not in command:
            problems.append("HEALTHCHECK does not ask http://127.0.0.1:8080/healthz")
    exposed = {p.lower() for args in final.all("EXPOSE") for p in args.split()}
    exposed = {p if "/" in p else p + "/tcp" for p in exposed}
    for port in ("8080/tcp", "8189/udp"):
        if port not in exposed:
            problems.append(f"final stage: EXPOSE {port} missing")
    env: dict[str, str] = {}
    for args in final.all("ENV"):
        env.update(_env_pairs(args))
    if env.get("PYTHONUNBUFFERED") != "1":
        problems.append("final stage: ENV PYTHONUNBUFFERED=1 missing")
    if env.get("BROADCAST_UDP_PORT") != "8189":
        problems.append("final stage: ENV BROADCAST_UDP_PORT=8189 missing")
    for key in env:
        if key.startswith("BROADCAST_") and key[len("BROADCAST_") :].lower() not in settings_fields:
            problems.append(f"ENV {key} is not a setting")
    return problems


# --- Grafana dashboard ----------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def check_dashboard(dashboard: dict[str, Any]) -> list[str]:
    """Metric names, PromQL functions and the data source variable of a dashboard."""
    problems: list[str] = []
    variables = dashboard.get("templating", {}).get("list", [])
    if not any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in variables):
        problems.append("no Prometheus data source variable")
    if dashboard.get("schemaVersion", 0) < 36:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')} is too old")
    used: set[str] = set()
    for panel in _panels(dashboard.get("panels", [])):
        if panel.get("type") == "row":
            continue
        title = panel.get("title", "?")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"panel {title}: data source is not ${{datasource}}")
        if not panel.get("targets"):
            problems.append(f"panel {title}: no query")
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            for match in re.finditer(r"\bbroadcast_\w+", expr):
                name = match[0]
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                metric = base if base in HISTOGRAMS else name
                used.add(metric)
                if metric not in DASHBOARD_METRICS:
                    problems.append(f"panel {title}: unknown metric {name}")
                before = expr[: match.start()]
                in_rate = re.search(r"(rate|increase)\(\s*$", before) is not None
                if name.endswith("_total") and not in_rate:
                    problems.append(f"panel {title}: counter {name} outside rate()/increase()")
                if metric in HISTOGRAMS:
                    if name != metric + "_bucket" or "histogram_quantile" not in expr:
                        problems.append(f"panel {title}: histogram {name} needs quantiles")
                    elif not in_rate:
                        problems.append(f"panel {title}: {name} outside rate()")
    for missing in sorted(DASHBOARD_METRICS - used):
        problems.append(f"metric {missing} has no panel")
    return problems
