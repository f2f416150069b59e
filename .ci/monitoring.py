#!/usr/bin/env python3
"""Checks of deploy/ that kubernetes-validate cannot do (run by .ci/deploy, with the venv's Python).

  monitoring.py generate            write deploy/base/prometheusrule.yaml from deploy/prometheus/rules.yml
  monitoring.py check-generated     fail if deploy/base/prometheusrule.yaml is not what `generate` writes
  monitoring.py split OUT FILE...   split rendered kustomize output into one file per object under OUT,
                                    check the Prometheus Operator objects (which have no bundled schema)
                                    and print the paths of the others, for kubernetes-validate
  monitoring.py exprs OUT           write every PromQL query of the dashboard as a recording rule to OUT,
                                    so `promtool check rules OUT` parses them all

Needs PyYAML (a dependency of kubernetes-validate, so it is in the deployment venv).
"""

import json
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(ROOT, "deploy", "prometheus", "rules.yml")
PROMETHEUS_RULE = os.path.join(ROOT, "deploy", "base", "prometheusrule.yaml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "pgbackfill.json")

HEADER = """\
# GENERATED from deploy/prometheus/rules.yml by `python3 .ci/monitoring.py generate`: edit that file,
# not this one (CI fails when they differ). The same alerts for the Prometheus Operator.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: pgbackfill
spec:
"""


def fail(message):
    print(f"ERROR {message}", file=sys.stderr)
    sys.exit(1)


def generated():
    with open(RULES, encoding="utf-8") as f:
        body = f.read()
    # The rules file's text indented under `spec:`, comments and all: block scalars stay valid
    # when every line moves right by the same amount.
    lines = ["  " + line if line.strip() else "" for line in body.splitlines()]
    return HEADER + "\n".join(lines) + "\n"


def check_generated():
    with open(PROMETHEUS_RULE, encoding="utf-8") as f:
        have = f.read()
    if have != generated():
        fail(f"{PROMETHEUS_RULE} is out of date: run `python3 .ci/monitoring.py generate`")
    with open(RULES, encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    if yaml.safe_load(have)["spec"] != rules:
        fail("PrometheusRule spec differs from rules.yml after parsing")
    print(f"ok {os.path.relpath(PROMETHEUS_RULE, ROOT)} matches {os.path.relpath(RULES, ROOT)}")


# --- Prometheus Operator objects -------------------------------------------------------------

DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
GROUP_KEYS = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset"}
ENDPOINT_KEYS = {
    "port", "portNumber", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout",
    "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings", "enableHttp2",
    "followRedirects", "filterRunning", "bearerTokenSecret", "basicAuth", "oauth2", "tlsConfig",
    "authorization", "proxyUrl",
}
PODMONITOR_SPEC_KEYS = {
    "selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel", "podTargetLabels",
    "sampleLimit", "targetLimit", "labelLimit", "attachMetadata", "scrapeProtocols",
}


def expect(cond, where, message):
    if not cond:
        fail(f"{where}: {message}")


def check_keys(obj, allowed, where):
    expect(isinstance(obj, dict), where, "must be a mapping")
    unknown = set(obj) - allowed
    expect(not unknown, where, f"unknown field(s) {sorted(unknown)}")


def check_metadata(doc, where):
    check_keys(doc, {"apiVersion", "kind", "metadata", "spec"}, where)
    expect(doc["apiVersion"] == "monitoring.coreos.com/v1", where, "apiVersion must be monitoring.coreos.com/v1")
    meta = doc.get("metadata") or {}
    expect(re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", str(meta.get("name", ""))), where, "metadata.name")
    expect(isinstance(doc.get("spec"), dict), where, "spec must be a mapping")


def check_prometheus_rule(doc, where):
    check_metadata(doc, where)
    spec = doc["spec"]
    check_keys(spec, {"groups"}, f"{where} spec")
    expect(isinstance(spec["groups"], list) and spec["groups"], where, "spec.groups must be a non-empty list")
    for g in spec["groups"]:
        gw = f"{where} group {g.get('name')!r}"
        check_keys(g, GROUP_KEYS, gw)
        expect(isinstance(g.get("name"), str) and g["name"], gw, "name is required")
        expect(isinstance(g.get("rules"), list) and g["rules"], gw, "rules must be a non-empty list")
        for r in g["rules"]:
            rw = f"{gw} rule {r.get('alert') or r.get('record')!r}"
            check_keys(r, RULE_KEYS, rw)
            expect(("alert" in r) != ("record" in r), rw, "exactly one of alert and record")
            expect(isinstance(r.get("expr"), str) and r["expr"].strip(), rw, "expr must be a non-empty string")
            for key in ("for", "keep_firing_for"):
                if key in r:
                    expect(DURATION.match(str(r[key])), rw, f"{key} must be a duration like 15m")
            for key in ("labels", "annotations"):
                if key in r:
                    expect(isinstance(r[key], dict), rw, f"{key} must be a mapping")
                    for k, v in r[key].items():
                        expect(isinstance(k, str) and isinstance(v, str), rw, f"{key}.{k} must be a string")


def pod_templates(docs):
    """(labels, containers) of every pod template in the render."""
    out = []
    for d in docs:
        spec = d.get("spec") or {}
        template = spec.get("template") or (spec.get("jobTemplate") or {}).get("spec", {}).get("template")
        if template:
            pod = template.get("spec") or {}
            containers = (pod.get("containers") or []) + (pod.get("initContainers") or [])
            out.append(((template.get("metadata") or {}).get("labels") or {}, containers))
    return out


def check_pod_monitor(doc, where, docs):
    check_metadata(doc, where)
    spec = doc["spec"]
    check_keys(spec, PODMONITOR_SPEC_KEYS, f"{where} spec")
    match = (spec.get("selector") or {}).get("matchLabels")
    expect(isinstance(match, dict) and match, where, "spec.selector.matchLabels is required")
    endpoints = spec.get("podMetricsEndpoints")
    expect(isinstance(endpoints, list) and endpoints, where, "spec.podMetricsEndpoints must be a non-empty list")
    selected = [c for labels, c in pod_templates(docs) if all(labels.get(k) == v for k, v in match.items())]
    expect(selected, where, f"selects no pod template of this render ({match})")
    for e in endpoints:
        check_keys(e, ENDPOINT_KEYS, f"{where} endpoint")
        if "interval" in e:
            expect(DURATION.match(str(e["interval"])), where, "interval must be a duration")
        port = e.get("port")
        expect(isinstance(port, str), where, "endpoint.port must name a container port")
        for containers in selected:
            names = {p.get("name") for c in containers for p in c.get("ports") or []}
            expect(port in names, where, f"port {port!r} is not a named container port of the pods it selects")
        expect(e.get("honorLabels") is True, where, "honorLabels must be true (pgbackfill's `job` label)")


SHUTDOWN_TIMEOUT = 25  # pgbackfill's default --shutdown-timeout, seconds, when the args do not set it


def check_pgbackfill_pods(d, where):
    """What the issue asks of every pod that runs pgbackfill, beyond what the schemas know."""
    spec = d.get("spec") or {}
    template = spec.get("template") or {}
    pod = template.get("spec") or {}
    containers = (pod.get("containers") or []) + (pod.get("initContainers") or [])
    ours = [c for c in containers if str(c.get("image", "")).split("/")[-1].startswith("pgbackfill")]
    if not ours:
        return
    expect(pod.get("automountServiceAccountToken") is False, where, "automountServiceAccountToken: false")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    for c in ours:
        timeout = SHUTDOWN_TIMEOUT
        for arg in c.get("args") or []:
            m = re.match(r"^--shutdown-timeout=([0-9]+)s$", str(arg))
            if m:
                timeout = int(m.group(1))
            else:
                expect(not str(arg).startswith("--shutdown-timeout"), where, f"{arg}: write it as --shutdown-timeout=Ns")
        expect(grace > timeout, where,
               f"terminationGracePeriodSeconds ({grace}) must exceed {c['name']}'s --shutdown-timeout ({timeout}s)")
    psc = pod.get("securityContext") or {}
    expect(psc.get("runAsNonRoot") is True, where, "pod securityContext.runAsNonRoot: true")
    expect(isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, where, "a numeric non-root runAsUser")
    expect((psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", where, "seccompProfile RuntimeDefault")
    for c in containers:
        for m in c.get("volumeMounts") or []:
            expect("subPath" not in m and "subPathExpr" not in m, where,
                   f"{c['name']}: mount {m.get('name')} uses subPath (ConfigMap/Secret updates never reach it)")
    for c in ours:
        sc = c.get("securityContext") or {}
        expect(sc.get("allowPrivilegeEscalation") is False, where, f"{c['name']}: allowPrivilegeEscalation: false")
        expect(sc.get("readOnlyRootFilesystem") is True, where, f"{c['name']}: readOnlyRootFilesystem: true")
        expect("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), where, f"{c['name']}: drop ALL")
        expect((c.get("resources") or {}).get("requests"), where, f"{c['name']}: resources.requests")
        expect(((c.get("resources") or {}).get("limits") or {}).get("memory"), where, f"{c['name']}: a memory limit")
        env = {e.get("name") for e in c.get("env") or []}
        expect("DATABASE_URL_FILE" in env and "DATABASE_URL" not in env, where,
               f"{c['name']}: the URL from a Secret file (DATABASE_URL_FILE)")
    print(f"ok {where} (pod policy checked)", file=sys.stderr)


def split(out_dir, files):
    os.makedirs(out_dir, exist_ok=True)
    docs = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            docs += [(path, d) for d in yaml.safe_load_all(f) if d]
    others = []
    for i, (path, d) in enumerate(docs):
        where = f"{path}: {d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
        if d.get("kind") == "PrometheusRule":
            check_prometheus_rule(d, where)
            with open(RULES, encoding="utf-8") as f:
                expect(d["spec"] == yaml.safe_load(f), where, "spec differs from deploy/prometheus/rules.yml")
            print(f"ok {where} (fields checked)", file=sys.stderr)
        elif d.get("kind") == "PodMonitor":
            # Only the pods rendered with it (one kustomize output per file).
            check_pod_monitor(d, where, [o for p, o in docs if p == path])
            print(f"ok {where} (fields checked)", file=sys.stderr)
        else:
            expect("monitoring.coreos.com" not in str(d.get("apiVersion")), where, "no check for this kind")
            check_pgbackfill_pods(d, where)
            name = f"{i:03d}-{os.path.splitext(os.path.basename(path))[0]}-{d.get('kind')}.yaml"
            target = os.path.join(out_dir, name)
            with open(target, "w", encoding="utf-8") as f:
                yaml.safe_dump(d, f, sort_keys=False)
            others.append(target)
    print("\n".join(others))


# --- Dashboard queries -----------------------------------------------------------------------


def dashboard_exprs():
    with open(DASHBOARD, encoding="utf-8") as f:
        dash = json.load(f)
    exprs = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets") or []:
                exprs.append((p.get("title"), t["expr"]))
            walk(p.get("panels") or [])

    walk(dash["panels"])
    for v in dash["templating"]["list"]:
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.match(r"^label_values\((.*),\s*\w+\)$", q)
            expect(m, "dashboard variable " + v["name"], f"unexpected query {q!r}")
            exprs.append((f"variable {v['name']}", m.group(1)))
    return exprs


def write_exprs(out):
    rules = []
    for i, (title, expr) in enumerate(dashboard_exprs()):
        # Grafana's variables, replaced by what they expand to.
        e = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$job", ".*")
        expect("$" not in e, f"dashboard panel {title!r}", f"unknown variable in {expr!r}")
        rules.append({"record": f"dashboard:query_{i}", "expr": e})
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, sort_keys=False)
    print(f"ok {len(rules)} dashboard queries written to {out}", file=sys.stderr)


def main(argv):
    if argv[1:2] == ["generate"]:
        with open(PROMETHEUS_RULE, "w", encoding="utf-8") as f:
            f.write(generated())
    elif argv[1:2] == ["check-generated"]:
        check_generated()
    elif argv[1:2] == ["split"] and len(argv) >= 4:
        split(argv[2], argv[3:])
    elif argv[1:2] == ["exprs"] and len(argv) == 3:
        write_exprs(argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
