"""A small kustomize-compatible renderer for the manifests under k8s/ (no binary, offline).

It supports exactly what those manifests use, with kustomize's semantics:
- `resources`: YAML files (several documents each) and directories holding a
  kustomization.yaml, rendered recursively;
- `components` (kind `Component`): rendered after `resources`, their own resources added
  and their patches applied to everything accumulated so far;
- `patches`, from `path` or inline `patch`: strategic-merge patches (a document naming
  `apiVersion`/`kind`/`metadata.name`), and JSON 6902 patches (a list of operations, with a
  `target`). The strategic merge follows Kubernetes' merge keys for the lists used here
  (containers and env by `name`, container ports by `containerPort`, Service ports by
  `port`, volume mounts by `mountPath`, ...); other lists are
  replaced; `null` deletes a key; `$patch: delete` deletes a resource or a list element;
- `namespace` (namespaced kinds only), `labels` (`pairs`, `includeSelectors`,
  `includeTemplates`), `images` (`name`, `newName`, `newTag`, `digest`), `replicas`.

Anything else in a kustomization.yaml is refused, so a manifest can never use a feature
this renderer would silently ignore.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "json6902", "render", "strategic_merge"]

Resource = dict[str, Any]

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "patches",
    "namespace",
    "labels",
    "images",
    "replicas",
}
# Kinds that live outside namespaces (those the manifests may use).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
# patchMergeKey of the Kubernetes API for the lists that the manifests patch. A list not
# named here is replaced whole by a patch, as for an atomic list.
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "imagePullSecrets": ("name",),
    "tolerations": ("key",),
}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}


class KustomizeError(ValueError):
    """A kustomization this renderer cannot (or refuses to) render."""


def render(directory: Path | str) -> list[Resource]:
    """Render the kustomization in `directory` into a list of resources."""
    return _render(Path(directory), expect_kind="Kustomization")


def _load_yaml_documents(path: Path) -> list[Resource]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _render(directory: Path, *, expect_kind: str) -> list[Resource]:
    file = directory / "kustomization.yaml"
    if not file.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    (spec,) = _load_yaml_documents(file)
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{file}: unsupported field(s) {sorted(unknown)}")
    kind = spec.get("kind", "Kustomization")
    if kind != expect_kind:
        raise KustomizeError(f"{file}: kind {kind}, expected {expect_kind}")

    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources.extend(_render(path, expect_kind="Kustomization"))
        else:
            resources.extend(_load_yaml_documents(path))
    for entry in spec.get("components", []):
        resources = _apply_component(resources, directory / entry)
    _check_unique(resources, file)

    resources = _apply_patches(resources, spec.get("patches", []), directory)
    for entry in spec.get("replicas", []):
        _find(resources, kind=None, name=entry["name"], kinds=WORKLOAD_KINDS)["spec"][
            "replicas"
        ] = entry["count"]
    for resource in resources:
        for label_set in spec.get("labels", []):
            _add_labels(resource, label_set)
        for image in spec.get("images", []):
            _set_image(resource, image)
        if "namespace" in spec and resource["kind"] not in CLUSTER_SCOPED:
            resource.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return resources


def _apply_component(resources: list[Resource], directory: Path) -> list[Resource]:
    file = directory / "kustomization.yaml"
    (spec,) = _load_yaml_documents(file)
    if spec.get("kind") != "Component":
        raise KustomizeError(f"{file}: a component must be kind Component")
    unknown = set(spec) - {"apiVersion", "kind", "resources", "patches"}
    if unknown:
        raise KustomizeError(f"{file}: unsupported field(s) in a component {sorted(unknown)}")
    resources = copy.deepcopy(resources)
    for entry in spec.get("resources", []):
        resources.extend(_load_yaml_documents(directory / entry))
    return _apply_patches(resources, spec.get("patches", []), directory)


def _check_unique(resources: list[Resource], file: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for r in resources:
        key = (r["kind"], r["metadata"].get("namespace", ""), r["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{file}: {key} appears twice")
        seen.add(key)


def _find(
    resources: list[Resource],
    *,
    kind: str | None,
    name: str,
    kinds: set[str] | None = None,
) -> Resource:
    found = [
        r
        for r in resources
        if r["metadata"]["name"] == name
        and (kind is None or r["kind"] == kind)
        and (kinds is None or r["kind"] in kinds)
    ]
    if len(found) != 1:
        raise KustomizeError(f"{len(found)} resources match kind {kind or kinds} name {name}")
    return found[0]


def _apply_patches(
    resources: list[Resource], patches: list[dict[str, Any]], directory: Path
) -> list[Resource]:
    for entry in patches:
        unknown = set(entry) - {"path", "patch", "target"}
        if unknown or ("path" in entry) == ("patch" in entry):
            raise KustomizeError(f"patch entry {entry}: give exactly one of path or patch")
        text = (
            (directory / entry["path"]).read_text(encoding="utf-8")
            if "path" in entry
            else entry["patch"]
        )
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        if len(documents) == 1 and isinstance(documents[0], list):
            target = entry.get("target")
            if not target or "name" not in target or "kind" not in target:
                raise KustomizeError("a JSON 6902 patch needs a target with kind and name")
            resource = _find(resources, kind=target["kind"], name=target["name"])
            resources[resources.index(resource)] = json6902(resource, documents[0])
            continue
        if "target" in entry:
            raise KustomizeError("targeted strategic-merge patches are not supported")
        for patch in documents:
            resource = _find(resources, kind=patch["kind"], name=patch["metadata"]["name"])
            if patch.get("$patch") == "delete":
                resources.remove(resource)
            else:
                resources[resources.index(resource)] = strategic_merge(resource, patch)
    return resources


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """Merge `patch` into `base` (a copy) as a Kubernetes strategic-merge patch would."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if key.startswith("$"):
                raise KustomizeError(f"unsupported directive {key}")
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = _strip_directives(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        keys = _merge_key(field, base + patch)
        if keys is None:
            return _strip_directives(patch)
        merged_list = copy.deepcopy(base)
        for item in patch:
            ident = tuple(item.get(k) for k in keys)
            index = next(
                (
                    i
                    for i, old in enumerate(merged_list)
                    if tuple(old.get(k) for k in keys) == ident
                ),
                None,
            )
            if item.get("$patch") == "delete":
                if index is None:  # kustomize ignores this; a typo should not pass
                    raise KustomizeError(f"{field}: nothing to delete matches {item}")
                del merged_list[index]
            elif index is None:
                merged_list.append(_strip_directives(item))
            else:
                merged_list[index] = strategic_merge(merged_list[index], item)
        return merged_list
    return _strip_directives(patch)


def _merge_key(field: str, items: list[Any]) -> tuple[str, ...] | None:
    if not all(isinstance(item, dict) for item in items):
        return None
    if field == "ports":
        # The API's patchMergeKey: containerPort for a container's, port for a Service's.
        return ("containerPort",) if any("containerPort" in i for i in items) else ("port",)
    return MERGE_KEYS.get(field)


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        if any(k.startswith("$") for k in value):
            raise KustomizeError(f"a directive in new content has nothing to act on: {value}")
        return {k: _strip_directives(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def json6902(resource: Resource, operations: list[dict[str, Any]]) -> Resource:
    """Apply RFC 6902 operations (add, remove, replace, test) to a copy of `resource`."""
    doc = copy.deepcopy(resource)
    for op in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            raise KustomizeError("JSON 6902: the whole document cannot be a target")
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del parent[index]
            elif kind == "replace":
                parent[index] = copy.deepcopy(op["value"])
            elif kind == "test":
                if parent[index] != op["value"]:
                    raise KustomizeError(f"JSON 6902 test failed at {op['path']}")
            else:
                raise KustomizeError(f"unsupported JSON 6902 op {kind}")
            continue
        if kind in ("remove", "replace", "test") and last not in parent:
            raise KustomizeError(f"JSON 6902 {kind}: {op['path']} does not exist")
        if kind in ("add", "replace"):
            parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[last]
        elif kind == "test":
            if parent[last] != op["value"]:
                raise KustomizeError(f"JSON 6902 test failed at {op['path']}")
        else:
            raise KustomizeError(f"unsupported JSON 6902 op {kind}")
    return doc


def _pod_template(resource: Resource) -> Resource | None:
    if resource["kind"] in WORKLOAD_KINDS:
        template: Resource = resource["spec"]["template"]
        return template
    return None


def _add_labels(resource: Resource, label_set: dict[str, Any]) -> None:
    unknown = set(label_set) - {"pairs", "includeSelectors", "includeTemplates"}
    if unknown:
        raise KustomizeError(f"labels: unsupported field(s) {sorted(unknown)}")
    pairs = label_set["pairs"]
    resource.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    selectors = label_set.get("includeSelectors", False)
    template = _pod_template(resource)
    if template is not None and (selectors or label_set.get("includeTemplates", False)):
        template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if not selectors:
        return
    if template is not None:
        resource["spec"]["selector"].setdefault("matchLabels", {}).update(pairs)
    elif resource["kind"] == "Service":
        resource["spec"].setdefault("selector", {}).update(pairs)
    elif resource["kind"] in ("PodDisruptionBudget", "NetworkPolicy"):
        key = "selector" if resource["kind"] == "PodDisruptionBudget" else "podSelector"
        resource["spec"][key].setdefault("matchLabels", {}).update(pairs)


def _set_image(resource: Resource, image: dict[str, Any]) -> None:
    unknown = set(image) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise KustomizeError(f"images: unsupported field(s) {sorted(unknown)}")
    template = _pod_template(resource)
    if template is None:
        return
    spec = template["spec"]
    for container in spec.get("initContainers", []) + spec["containers"]:
        name, tag, digest = split_image(container["image"])
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{name}@{image['digest']}"
            continue
        tag = image.get("newTag", tag)
        ref = name + (f":{tag}" if tag else "")
        container["image"] = ref + (f"@{digest}" if digest and "newTag" not in image else "")


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """`registry/name:tag@sha256:...` → (`registry/name`, tag or None, digest or None)."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    name, tag = ref, None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1 :]
    return name, tag, digest
