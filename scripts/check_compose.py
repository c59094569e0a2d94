#!/usr/bin/env python3
"""Relay's own rules for docker-compose.yml, over the parsed file: what `docker compose up --scale`
needs, and what the health checks, restarts, dependencies and grace periods must say.

Usage: check_compose.py COMPOSE_FILE [CANONICAL_JSON]
CANONICAL_JSON is `docker compose --profile monitoring config --format json` (anchors, merges and
defaults resolved by Compose itself); without it the YAML file is read with PyYAML, which resolves `<<`
merge keys too. Prints one line per broken rule and exits 1 if any; 0 and a summary otherwise.
"""
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Services run with --scale: each replica must be interchangeable and anonymous.
SCALED = ("ingest-api", "persister", "push-gateway")
# How long each takes to stop after SIGTERM, in seconds (from the code; stop_grace_period must exceed it):
# ingest-api drains requests for SHUTDOWN_GRACE (10 s); the gateway closes clients (≤ 2 s) then stops its
# server (≤ 5 s); the persister commits its batch (bounded well under 5 s); nginx waits
# worker_shutdown_timeout (10 s) for open WebSockets.
DRAIN = {"ingest-api": 10, "push-gateway": 7, "persister": 5, "proxy": 10}
RESTARTS = ("unless-stopped", "always", "on-failure")

problems = []


def bad(msg):
    problems.append(msg)


def seconds(value):
    """A Compose duration ('1m30s', '500ms', '20s') or a number of seconds, in seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    total, s = 0.0, str(value).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise ValueError(f"not a duration: {value!r}")
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    for n, u in parts:
        total += float(n) * scale[u]
    return total


def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return env


def depends(svc):
    d = svc.get("depends_on") or {}
    if isinstance(d, list):
        return {name: "service_started" for name in d}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in d.items()}


def health_test(svc):
    test = (svc.get("healthcheck") or {}).get("test")
    if isinstance(test, list):
        return " ".join(str(t) for t in test)
    return test or ""


def main():
    compose_path = Path(sys.argv[1])
    if len(sys.argv) > 2:
        doc = json.loads(Path(sys.argv[2]).read_text())
    else:
        doc = yaml.safe_load(compose_path.read_text())
    services = doc.get("services") or {}

    for name in SCALED + ("redis", "postgres", "proxy", "prometheus", "grafana"):
        if name not in services:
            bad(f"{name}: no such service")

    for name, svc in services.items():
        hc = svc.get("healthcheck")
        if not hc or hc.get("disable") or not health_test(svc) or health_test(svc).startswith("NONE"):
            bad(f"{name}: no healthcheck")
        if svc.get("restart") not in RESTARTS:
            bad(f"{name}: restart is {svc.get('restart')!r}, not one of {', '.join(RESTARTS)}")
        if name in DRAIN:
            grace = svc.get("stop_grace_period", "10s")  # Compose's default
            if seconds(grace) <= DRAIN[name]:
                bad(f"{name}: stop_grace_period {grace} is not longer than its drain of {DRAIN[name]} s")

    for name in SCALED:
        svc = services.get(name) or {}
        if svc.get("ports"):
            bad(f"{name}: publishes host ports {svc['ports']}: a second replica could not bind them (reach it through the proxy)")
        if svc.get("container_name"):
            bad(f"{name}: container_name {svc['container_name']!r}: --scale needs generated names")
        if svc.get("hostname"):
            bad(f"{name}: fixed hostname {svc['hostname']!r}: every replica would share one consumer name")
        if "CONSUMER_NAME" in env_of(svc):
            bad(f"{name}: sets CONSUMER_NAME: every replica would share it; the host name (container id) is unique")
        if "readyz" not in health_test(svc) and "/usr/local/bin/healthcheck" not in health_test(svc):
            bad(f"{name}: its healthcheck does not test /readyz")
        if name == "persister":
            continue
        env = env_of(svc)
        if env.get("INGEST_PUBLIC_URL", "").rstrip("/") not in ("http://localhost:8080", "http://127.0.0.1:8080"):
            bad(f"{name}: INGEST_PUBLIC_URL {env.get('INGEST_PUBLIC_URL')!r} is not the proxy's API address a browser on the host reaches")
        origins = [o.strip() for o in (env.get("ALLOWED_ORIGINS") or "").split(",")]
        if "http://localhost:8081" not in origins:
            bad(f"{name}: ALLOWED_ORIGINS {env.get('ALLOWED_ORIGINS')!r} lacks the page's origin http://localhost:8081")

    dep = {name: depends(services.get(name) or {}) for name in SCALED}
    for need in ("redis", "postgres"):
        if dep["persister"].get(need) != "service_healthy":
            bad(f"persister: does not wait for {need} to be healthy")
    for name in ("ingest-api", "push-gateway"):
        if dep[name].get("redis") != "service_healthy":
            bad(f"{name}: does not wait for redis to be healthy")
    if "persister" in dep["ingest-api"]:
        bad("ingest-api: depends on the persister, which it does not need (the stream is the buffer)")

    pg = health_test(services.get("postgres") or {})
    if "pg_isready" not in pg or not re.search(r"-h\s+127\.0\.0\.1", pg):
        bad("postgres: healthcheck is not `pg_isready -h 127.0.0.1` (the socket answers during init)")

    cmd = (services.get("redis") or {}).get("command") or []
    cmd = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
    for flag, want in (("--appendonly", "yes"), ("--appendfsync", "everysec"), ("--maxmemory-policy", "noeviction")):
        if not re.search(rf"{flag}\s+{want}\b", cmd):
            bad(f"redis: command lacks `{flag} {want}`")
    if not re.search(r"--maxmemory\s+\d+\w*", cmd):
        bad("redis: command sets no --maxmemory")

    proxy = services.get("proxy") or {}
    # The proxy answers 404 itself for the paths that stay inside (deploy/nginx/nginx.conf): a healthcheck
    # asking for one through it would never pass, and everything behind the proxy would wait forever.
    conf = (ROOT / "deploy/nginx/nginx.conf").read_text()
    hidden = set(re.findall(r"location\s*=\s*(\S+)\s*\{\s*return\s+404", conf))
    for path in sorted(hidden):
        if re.search(rf"https?://[^/\s\"']+{re.escape(path)}\b", health_test(proxy)):
            bad(f"proxy: its healthcheck asks for {path}, which the proxy itself answers with 404")
    published = set()
    for p in proxy.get("ports") or []:
        published.add(str(p.get("published")) if isinstance(p, dict) else str(p).split(":")[-2])
    for port in ("8080", "8081"):
        if port not in published:
            bad(f"proxy: does not publish {port}")
    for dname in ("ingest-api", "push-gateway"):
        if depends(proxy).get(dname) != "service_healthy":
            bad(f"proxy: does not wait for {dname} to be healthy")
    nginx = (ROOT / "deploy/nginx/nginx.conf").read_text()
    ws = re.search(r"location\s+/ws\s*\{(.*?)\}", nginx, re.S)
    if not ws:
        bad("deploy/nginx/nginx.conf: no `location /ws`")
    else:
        body = ws.group(1)
        for need in (r"proxy_set_header\s+Upgrade\s+\$http_upgrade", r"proxy_set_header\s+Connection\s+\$connection_upgrade",
                     r"proxy_read_timeout\s+\d+", r"proxy_send_timeout\s+\d+"):
            if not re.search(need, body):
                bad(f"deploy/nginx/nginx.conf: location /ws lacks {need!r}")

    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    found = {}
    for job in prom.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []):
            for n in sd.get("names", []):
                found[n] = sd.get("port")
    for name, port in (("ingest-api", 8080), ("persister", 8082), ("push-gateway", 8081)):
        if found.get(name) != port:
            bad(f"deploy/prometheus/prometheus.yml: no dns_sd_configs for {name}:{port} (every replica must be scraped)")

    grafana = services.get("grafana") or {}
    if "monitoring" not in (grafana.get("profiles") or []):
        bad("grafana: not under the `monitoring` profile")
    for f in ("deploy/grafana/relay.json", "deploy/grafana/provisioning/dashboards/relay.yml",
              "deploy/grafana/provisioning/datasources/prometheus.yml"):
        if not (ROOT / f).is_file():
            bad(f"{f}: missing")
    try:
        json.loads((ROOT / "deploy/grafana/relay.json").read_text())
    except (OSError, ValueError) as e:
        bad(f"deploy/grafana/relay.json: not JSON ({e})")

    for p in problems:
        print(f"compose: {p}")
    if problems:
        return 1
    print(f"compose: {len(services)} services follow the scaling, health, restart, dependency and grace rules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
