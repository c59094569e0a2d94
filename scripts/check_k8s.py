#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests (the output of `kustomize build` / `kubectl kustomize`).

Usage: check_k8s.py [--kubernetes-version X.Y.Z] NAME=RENDERED.yaml ...

Every built-in object is checked against the Kubernetes OpenAPI schemas that the PyPI package
kubernetes-validate bundles, strictly (an unknown field is an error). KEDA's ScaledObject is a custom
resource those schemas do not cover: it is checked against the small schema below, written from KEDA's
ScaledObject CRD and its redis-streams scaler documentation. Then Relay's own rules: probes, resources,
drains, consumer names, disruption budgets, autoscalers, ingress and secrets, as docs/scaling.md says.
Prints one line per problem and exits 1 if any.
"""
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

SERVICES = {"ingest-api": 8080, "push-gateway": 8081, "persister": 8082}
# Seconds each service takes to stop after SIGTERM (see docker-compose.yml and the Deployments).
DRAIN = {"ingest-api": 10, "push-gateway": 7, "persister": 5}

_STR = {"type": "string"}
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"apiVersion": _STR, "kind": _STR, "name": _STR, "envSourceContainerName": _STR},
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": _STR, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": _STR,
                            "name": _STR,
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                            # KEDA reads every trigger parameter as a string: a bare number is an error.
                            "metadata": {"type": "object", "additionalProperties": _STR},
                        },
                    },
                },
            },
        },
    },
}
# The redis-streams scaler's parameters (KEDA docs, "Redis Streams").
REDIS_STREAMS_KEYS = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "username", "usernameFromEnv",
    "password", "passwordFromEnv", "stream", "consumerGroup", "pendingEntriesCount", "streamLength",
    "lagCount", "activationLagCount", "activationStreamLength", "enableTLS", "unsafeSsl", "databaseIndex",
}

problems = []


def bad(where, msg):
    problems.append(f"{where}: {msg}")


def sleep_seconds(container):
    """The preStop sleep of a container, in seconds (exec sleep or the native sleep action), else 0."""
    pre = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in pre:
        return int(pre["sleep"].get("seconds", 0))
    cmd = (pre.get("exec") or {}).get("command") or []
    if cmd and cmd[0].rsplit("/", 1)[-1] == "sleep" and len(cmd) == 2:
        return float(cmd[1])
    return 0


def check_overlay(label, docs, version):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    for d in docs:
        where = f"{label}: {d['kind']}/{d['metadata']['name']}"
        if d.get("apiVersion", "").startswith("keda.sh/"):
            try:
                jsonschema.validate(d, SCALED_OBJECT)
            except jsonschema.ValidationError as e:
                bad(where, f"{e.message} (at {'/'.join(map(str, e.absolute_path))})")
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            bad(where, f"{e.message} (at {'/'.join(map(str, e.path))})")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            bad(where, f"no schema: {e}")

    deployments = by_kind.get("Deployment", {})
    configmaps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    for name, port in SERVICES.items():
        dep = deployments.get(name)
        where = f"{label}: Deployment/{name}"
        if not dep:
            bad(where, "missing")
            continue
        pod = dep["spec"]["template"]
        labels = pod["metadata"].get("labels", {})
        spec = pod["spec"]
        sc = spec.get("securityContext", {})
        if not sc.get("runAsNonRoot") or not isinstance(sc.get("runAsUser"), int) or sc["runAsUser"] == 0:
            bad(where, "pod does not run as a numeric non-root user")
        c = next((c for c in spec["containers"] if c["name"] == name), None)
        if not c:
            bad(where, f"no container named {name}")
            continue
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                bad(where, f"no {probe}")
        if ((c.get("readinessProbe") or {}).get("httpGet") or {}).get("path") != "/readyz":
            bad(where, "readinessProbe does not test /readyz")
        if ((c.get("livenessProbe") or {}).get("httpGet") or {}).get("path") != "/healthz":
            bad(where, "livenessProbe does not test /healthz (a liveness on /readyz would restart it when Redis is down)")
        res = c.get("resources") or {}
        if not (res.get("requests") or {}).get("cpu") or not (res.get("requests") or {}).get("memory"):
            bad(where, "no cpu and memory requests (the HPAs measure against them)")
        if not (res.get("limits") or {}).get("memory"):
            bad(where, "no memory limit")
        if not any(p.get("containerPort") == port for p in c.get("ports", [])):
            bad(where, f"does not declare containerPort {port}")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        pre = sleep_seconds(c)
        if grace <= pre + DRAIN[name]:
            bad(where, f"terminationGracePeriodSeconds {grace} is not longer than preStop {pre} s + drain {DRAIN[name]} s")
        if name != "persister" and pre <= 0:
            bad(where, "no preStop sleep: requests would still be routed to it after SIGTERM")
        env = {e["name"]: e for e in c.get("env", [])}
        if name == "persister":
            ref = ((env.get("CONSUMER_NAME") or {}).get("valueFrom") or {}).get("fieldRef") or {}
            if ref.get("fieldPath") != "metadata.name":
                bad(where, "CONSUMER_NAME is not the pod's name (downward API metadata.name)")
            if "startupProbe" not in c:
                bad(where, "no startupProbe: migrations at start would meet the liveness probe")
        for e in env.values():
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                s = secrets.get(ref["name"])
                if not s or ref["key"] not in (s.get("data") or {}) | (s.get("stringData") or {}):
                    bad(where, f"env {e['name']} refers to {ref['name']}/{ref['key']}, which the render does not contain")
        for src in c.get("envFrom", []):
            cm = (src.get("configMapRef") or {}).get("name")
            if cm and cm not in configmaps:
                bad(where, f"envFrom ConfigMap {cm} is not in the render")
        if name in ("ingest-api", "persister") and "DATABASE_URL" not in env:
            bad(where, "no DATABASE_URL from the Secret")
        if name in ("ingest-api", "push-gateway") and "API_KEYS" not in env:
            bad(where, "no API_KEYS from the Secret")

        def selects(sel):
            return sel and all(labels.get(k) == v for k, v in sel.items())

        if not any(selects(p["spec"].get("selector", {}).get("matchLabels")) for p in by_kind.get("PodDisruptionBudget", {}).values()):
            bad(where, "no PodDisruptionBudget selects its pods")
        svcs = [s for s in by_kind.get("Service", {}).values() if selects(s["spec"].get("selector"))]
        if not svcs:
            bad(where, "no Service selects its pods")

        hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", {}).values() if h["spec"]["scaleTargetRef"]["name"] == name]
        if name == "persister":
            if hpas:
                bad(where, "has an HPA of its own; KEDA's ScaledObject creates the one it needs")
        elif not any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for h in hpas for m in h["spec"].get("metrics", [])):
            bad(where, "no HPA on CPU")

    stream_key = next((cm["data"].get("STREAM_KEY") for cm in configmaps.values() if "STREAM_KEY" in cm.get("data", {})), "messages")
    scaled = [s for s in by_kind.get("ScaledObject", {}).values() if s["spec"]["scaleTargetRef"]["name"] == "persister"]
    if not scaled:
        bad(label, "no KEDA ScaledObject for the persister")
    for s in scaled:
        where = f"{label}: ScaledObject/{s['metadata']['name']}"
        triggers = [t for t in s["spec"]["triggers"] if t["type"] == "redis-streams"]
        if not triggers:
            bad(where, "no redis-streams trigger")
        for t in triggers:
            m = t["metadata"]
            unknown = set(m) - REDIS_STREAMS_KEYS
            if unknown:
                bad(where, f"redis-streams trigger: unknown parameters {sorted(unknown)}")
            if m.get("consumerGroup") != "persister":
                bad(where, "redis-streams trigger is not on the consumer group `persister`")
            if m.get("stream") != stream_key:
                bad(where, f"redis-streams trigger watches stream {m.get('stream')!r}, the services use {stream_key!r}")
            if not ({"lagCount", "pendingEntriesCount"} & set(m)):
                bad(where, "redis-streams trigger has neither lagCount nor pendingEntriesCount")
            if "lagCount" in m and "activationLagCount" not in m:
                bad(where, "lagCount without activationLagCount (KEDA requires it)")
            if not ({"address", "addressFromEnv", "host", "hostFromEnv"} & set(m)):
                bad(where, "redis-streams trigger has no address")
        lo, hi = s["spec"].get("minReplicaCount", 0), s["spec"].get("maxReplicaCount", 100)
        if lo > hi:
            bad(where, f"minReplicaCount {lo} > maxReplicaCount {hi}")

    backends = {}
    for ing in by_kind.get("Ingress", {}).values():
        ann = ing["metadata"].get("annotations", {})
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                backends[p["path"]] = (p["backend"]["service"]["name"], ann)
                for inside in ("/metrics", "/readyz", "/api/metrics", "/api/readyz"):
                    if ingress_routes(p, ann, inside):
                        bad(label, f"the Ingress path {p['path']!r} exposes {inside} (for Prometheus and the kubelet only)")
    if not any(svc == "ingest-api" for svc, _ in backends.values()):
        bad(label, "no Ingress path to ingest-api")
    ws = backends.get("/ws")
    if not ws or ws[0] != "push-gateway":
        bad(label, "no Ingress path /ws to push-gateway")
    else:
        for a in ("proxy-read-timeout", "proxy-send-timeout"):
            v = ws[1].get(f"nginx.ingress.kubernetes.io/{a}")
            if not v or not re.fullmatch(r"\d+", v) or int(v) < 60:
                bad(label, f"the /ws Ingress lacks a long nginx.ingress.kubernetes.io/{a}")
    if not any(p == "/" and svc == "push-gateway" for p, (svc, _) in backends.items()):
        bad(label, "no Ingress path / (the live page) to push-gateway")


def ingress_routes(path, annotations, uri):
    """Whether ingress-nginx would send `uri` through this Ingress path: a regex (use-regex) matches
    from the start, case-insensitively; Exact matches the path only; Prefix matches whole segments."""
    p, kind = path["path"], path.get("pathType", "Prefix")
    if annotations.get("nginx.ingress.kubernetes.io/use-regex") == "true" and kind == "ImplementationSpecific":
        return re.match(p, uri, re.IGNORECASE) is not None
    if kind == "Exact":
        return uri == p
    return p == "/" or uri == p or uri.startswith(p.rstrip("/") + "/")


def main():
    args = sys.argv[1:]
    version = kubernetes_validate.latest_version()
    if args[:1] == ["--kubernetes-version"]:
        version, args = args[1], args[2:]
    for arg in args:
        label, path = arg.split("=", 1)
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        check_overlay(label, docs, version)
        if not any(p.startswith(f"{label}:") for p in problems):
            kinds = sorted({d["kind"] for d in docs})
            print(f"k8s: {label}: {len(docs)} objects valid against Kubernetes {version} schemas and Relay's rules ({', '.join(kinds)})")
    for p in problems:
        print(f"k8s: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
