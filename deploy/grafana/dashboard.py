#!/usr/bin/env python3
"""Generates pgbackfill.json, the Grafana dashboard (standard library only).

    python3 deploy/grafana/dashboard.py          # rewrite pgbackfill.json
    python3 deploy/grafana/dashboard.py --check  # fail if pgbackfill.json is not what this writes

Import pgbackfill.json in Grafana (Dashboards > New > Import) and pick a Prometheus data source.
The data source and the backfill job are variables. Metric names are pgbackfill's public
contract (README, "Metrics"); a test scrapes a live daemon for every name used here
(tests/deploy.rs).
"""

import json
import os
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pgbackfill.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
JOB = 'job=~"$job"'


def target(expr, legend, ref, instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t.update({"instant": True, "range": False})
    return t


def panel(pid, kind, title, grid, targets, description, unit=None, **extra):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": dict(zip(("x", "y", "w", "h"), grid)),
        "targets": [target(*t) for t in targets],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {},
    }
    if unit:
        p["fieldConfig"]["defaults"]["unit"] = unit
    for key, value in extra.items():
        if key == "defaults":
            p["fieldConfig"]["defaults"].update(value)
        elif key == "overrides":
            p["fieldConfig"]["overrides"] = value
        else:
            p[key] = value
    return p


def timeseries(pid, title, grid, targets, description, unit=None, **extra):
    defaults = {"custom": {"fillOpacity": 10, "showPoints": "never", "spanNulls": False}}
    defaults.update(extra.pop("defaults", {}))
    return panel(
        pid, "timeseries", title, grid, targets, description, unit,
        options={"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                 "tooltip": {"mode": "multi", "sort": "desc"}},
        defaults=defaults, **extra,
    )


def state_timeline(pid, title, grid, targets, description, mappings):
    return panel(
        pid, "state-timeline", title, grid, targets, description,
        options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8,
                 "legend": {"showLegend": False}, "tooltip": {"mode": "single"}},
        defaults={"mappings": mappings, "color": {"mode": "thresholds"},
                  "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]}},
    )


def value_map(pairs):
    return [{"type": "value", "options": {str(v): {"text": text, "color": color, "index": i}
                                          for i, (v, text, color) in enumerate(pairs)}}]


def panels():
    p = []
    # --- Daemons: is anyone working, and can it see the standbys?
    p.append(panel(
        1, "stat", "Daemons reporting", (0, 0, 6, 4),
        [("count(pgbackfill_build_info)", "daemons", "A", True)],
        "pgbackfill processes scraped right now (0: the PgbackfillAbsent alert).",
        options={"colorMode": "value", "graphMode": "none", "reduceOptions": {"calcs": ["lastNotNull"]}},
        defaults={"noValue": "0", "thresholds": {"mode": "absolute", "steps": [
            {"color": "red", "value": None}, {"color": "green", "value": 1}]}},
    ))
    p.append(panel(
        2, "stat", "Lag measurement failing", (6, 0, 6, 4),
        [("count(pgbackfill_lag_measurement_ok == 0) or vector(0)", "daemons", "A", True)],
        "Daemons whose last replica-lag measurement failed. The throttle fails closed: their jobs "
        "are held until lag can be read again (often: GRANT pg_monitor).",
        options={"colorMode": "value", "graphMode": "none", "reduceOptions": {"calcs": ["lastNotNull"]}},
        defaults={"thresholds": {"mode": "absolute", "steps": [
            {"color": "green", "value": None}, {"color": "red", "value": 1}]}},
    ))
    p.append(panel(
        3, "stat", "Invalid specs / refused jobs", (12, 0, 6, 4),
        [
            ("max(pgbackfill_spec_errors) or vector(0)", "invalid files", "A", True),
            ("max(pgbackfill_jobs_refused) or vector(0)", "refused jobs", "B", True),
        ],
        "Spec files in the jobs directory that fail validation (`pgbackfill check DIR` says why), "
        "and valid specs a daemon refuses against the database (changed meaning, missing "
        "privilege: `pgbackfill status`). Other jobs keep running.",
        options={"colorMode": "value", "graphMode": "none", "textMode": "value_and_name",
                 "reduceOptions": {"calcs": ["lastNotNull"]}},
        defaults={"thresholds": {"mode": "absolute", "steps": [
            {"color": "green", "value": None}, {"color": "orange", "value": 1}]}},
    ))
    p.append(panel(
        4, "stat", "Job state", (18, 0, 6, 4),
        [(f"max by (job, state) (pgbackfill_job_state{{{JOB}}}) == 1", "{{job}}: {{state}}", "A", True)],
        "Each job's current state, as stored in the progress table.",
        options={"textMode": "name", "colorMode": "none", "graphMode": "none",
                 "reduceOptions": {"calcs": ["lastNotNull"]}},
    ))
    # --- Progress
    p.append(panel(
        5, "bargauge", "Progress", (0, 4, 12, 8),
        [(f"max by (job) (pgbackfill_job_progress_ratio{{{JOB}}})", "{{job}}", "A", True)],
        "Share of each job's key range walked so far.",
        unit="percentunit",
        options={"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
                 "reduceOptions": {"calcs": ["lastNotNull"]}},
        defaults={"min": 0, "max": 1},
    ))
    p.append(panel(
        6, "bargauge", "ETA", (12, 4, 12, 8),
        [(f"max by (job) (pgbackfill_job_eta_seconds{{{JOB}}})", "{{job}}", "A", True)],
        "Estimated time to completion at the recent rate, paused and throttled time excluded "
        "(as in `pgbackfill status`).",
        unit="s",
        options={"displayMode": "basic", "orientation": "horizontal", "showUnfilled": False,
                 "reduceOptions": {"calcs": ["lastNotNull"]}},
    ))
    p.append(timeseries(
        7, "Rows updated per second", (0, 12, 12, 8),
        [(f"sum by (job) (rate(pgbackfill_rows_updated_total{{{JOB}}}[$__rate_interval]))", "{{job}}", "A")],
        "Rows changed by committed batches, all daemons together.",
        unit="rowsps",
    ))
    p.append(timeseries(
        8, "Batch duration p50 / p99", (12, 12, 12, 8),
        [
            (f"histogram_quantile(0.5, sum by (job, le) "
             f"(rate(pgbackfill_batch_duration_seconds_bucket{{{JOB}}}[$__rate_interval])))", "p50 {{job}}", "A"),
            (f"histogram_quantile(0.99, sum by (job, le) "
             f"(rate(pgbackfill_batch_duration_seconds_bucket{{{JOB}}}[$__rate_interval])))", "p99 {{job}}", "B"),
        ],
        "Wall time of committed batches, from the histogram. Row locks are held this long; "
        "batch.target_time steers the median.",
        unit="s",
    ))
    p.append(timeseries(
        9, "Batch size", (0, 20, 12, 8),
        [(f"max by (job) (pgbackfill_batch_size{{{JOB}}})", "{{job}}", "A")],
        "Rows per batch: adaptive toward batch.target_time, halved after a statement timeout.",
        unit="short",
        defaults={"custom": {"fillOpacity": 0, "showPoints": "never", "lineInterpolation": "stepAfter"}},
    ))
    p.append(timeseries(
        10, "Standby replay lag vs the job's max_lag", (12, 20, 12, 8),
        [
            ("max by (replica) (pgbackfill_replica_lag_seconds)", "{{replica}}", "A"),
            (f"max by (job) (pgbackfill_job_max_lag_seconds{{{JOB}}})", "max_lag {{job}}", "B"),
        ],
        "Replay lag of each standby as measured on the primary, and each job's throttle.max_lag: "
        "a job is held while any standby is above its line (and resumes below resume_lag).",
        unit="s",
        # The thresholds as dashed red lines.
        overrides=[{
            "matcher": {"id": "byFrameRefID", "options": "B"},
            "properties": [
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                {"id": "custom.fillOpacity", "value": 0},
                {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
            ],
        }],
    ))
    p.append(state_timeline(
        11, "Throttle: held, by reason", (0, 28, 12, 8),
        [(f"max by (job, reason) (pgbackfill_throttled{{{JOB}}})", "{{job}} {{reason}}", "A")],
        "When and why each job was held: lag_seconds, lag_bytes, replicas, slot, "
        "transaction_age, unknown (lag unmeasurable: fail closed), paused, or schedule (outside "
        "its low-traffic windows).",
        value_map([(0, "free", "transparent"), (1, "held", "orange")]),
    ))
    p.append(state_timeline(
        12, "Paused and failed", (12, 28, 12, 8),
        [
            (f"max by (job, by) (pgbackfill_job_paused{{{JOB}}})", "{{job}} paused ({{by}})", "A"),
            (f'max by (job) (pgbackfill_job_state{{{JOB}, state="failed"}})', "{{job}} failed", "B"),
        ],
        "Jobs paused, by how (signal: SIGUSR1 to a daemon; cli: pgbackfill pause; `status` says who), "
        "and failed jobs.",
        value_map([(0, "no", "transparent"), (1, "yes", "red")]),
    ))
    p.append(timeseries(
        13, "Failed batch attempts per second", (0, 36, 12, 8),
        [(f'sum by (job, outcome) (rate(pgbackfill_batches_total{{{JOB}, outcome!="committed"}}[$__rate_interval]))',
          "{{job}} {{outcome}}", "A")],
        "Failed batch attempts by outcome (lock_timeout, statement_timeout, deadlock, serialization, "
        "connection, error). Retryable ones are retried with backoff; a statement timeout halves "
        "the batch.",
        unit="short",
    ))
    p.append(timeseries(
        14, "Lock timeouts per second", (12, 36, 12, 8),
        [(f"sum by (job) (rate(pgbackfill_lock_timeouts_total{{{JOB}}}[$__rate_interval]))", "{{job}}", "A")],
        "Batches that gave up waiting for a row lock (timeouts.lock) instead of queueing the "
        "application behind them; retried.",
        unit="short",
    ))
    return p


def dashboard():
    return {
        "uid": "pgbackfill",
        "title": "pgbackfill",
        "description": "Zero-downtime PostgreSQL backfills: progress, pace, throttle and errors per job.",
        "tags": ["pgbackfill", "postgresql"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
                "options": [],
            },
            {
                "name": "job",
                "label": "Backfill job",
                "type": "query",
                "datasource": DS,
                "definition": "label_values(pgbackfill_job_state, job)",
                "query": {"query": "label_values(pgbackfill_job_state, job)", "refId": "jobs"},
                "current": {},
                "hide": 0,
                "includeAll": True,
                "multi": True,
                "refresh": 2,
                "regex": "",
                "sort": 1,
                "options": [],
            },
        ]},
        "panels": panels(),
    }


def render():
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv):
    text = render()
    if argv[1:] == ["--check"]:
        with open(OUT, encoding="utf-8") as f:
            if f.read() != text:
                print(f"ERROR {OUT} is out of date: run `python3 {argv[0]}`", file=sys.stderr)
                return 1
        print(f"ok {os.path.basename(OUT)} matches its generator")
        return 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
