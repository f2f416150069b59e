//! The job spec contract, offline: parsing, every malformed case an operator is likely to write,
//! the committed JSON schema and the shipped examples.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgbackfill::spec::{BatchSpec, JobSpec, Problem, ThrottleSpec, TimeoutSpec, load_paths, parse_str};

const FILE: &str = "jobs/test-job.yaml";

const MINIMAL: &str = "\
name: minimal
table: orders
set:
  flag: 'true'
";

fn problems(text: &str) -> Vec<Problem> {
    match parse_str(Path::new(FILE), text) {
        Ok(spec) => panic!("expected problems, got {spec:?}"),
        Err(problems) => {
            assert!(!problems.is_empty());
            for p in &problems {
                assert_eq!(p.file, Path::new(FILE), "{p}");
            }
            problems
        }
    }
}

/// The one problem for `field`, asserting its message contains `message`.
#[track_caller]
fn expect<'a>(problems: &'a [Problem], field: &str, message: &str) -> &'a Problem {
    let found: Vec<&Problem> = problems.iter().filter(|p| p.field == field).collect();
    let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(found.len(), 1, "one problem for `{field}` expected in:\n{}", all.join("\n"));
    assert!(found[0].message.contains(message), "`{message}` not in: {}", found[0]);
    found[0]
}

/// A minimal spec with `extra` appended.
fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

#[test]
fn minimal_spec_gets_all_defaults() {
    let spec = parse_str(Path::new(FILE), MINIMAL).unwrap();
    assert_eq!(spec.name, "minimal");
    assert_eq!(spec.table, "orders");
    assert_eq!(spec.key, None);
    assert_eq!(spec.where_, None);
    assert_eq!(spec.set.get("flag").map(String::as_str), Some("true"));
    assert_eq!(spec.batch, BatchSpec::default());
    // No size: batches sized by time, from 1,000 rows.
    assert_eq!(spec.batch.size, None);
    assert_eq!(spec.batch.start_size(), 1_000);
    assert_eq!((spec.batch.min_size, spec.batch.max_size), (100, 100_000));
    assert_eq!(spec.batch.target_time, None);
    assert_eq!(spec.batch.target(), Some(Duration::from_millis(200)));
    assert_eq!(spec.batch.pause, Duration::ZERO);
    assert_eq!(spec.timeouts, TimeoutSpec::default());
    assert_eq!((spec.timeouts.lock, spec.timeouts.statement), (Duration::from_secs(2), Duration::from_secs(30)));
    assert_eq!(spec.throttle, ThrottleSpec::default());
    assert_eq!(spec.throttle.max_lag, Duration::from_secs(10));
    assert_eq!(spec.throttle.effective_resume_lag(), Duration::from_secs(5));
    assert_eq!(spec.concurrency, 1);
}

#[test]
fn the_documented_format_parses() {
    let text = "\
name: orders-fulfillment-channel
table: public.orders
key: [id]
set:
  fulfillment_channel: \"'web'\"
where: fulfillment_channel IS NULL
batch: {size: 10000, min_size: 100, max_size: 100000, target_time: 500ms, pause: 0ms}
timeouts: {lock: 2s, statement: 30s}
throttle: {max_lag: 10s, resume_lag: 5s, max_lag_bytes: 1GiB, min_replicas: 0, max_slot_retained_bytes: 16MB, max_transaction_age: 10m}
concurrency: 1
";
    let spec = parse_str(Path::new(FILE), text).unwrap();
    assert_eq!(spec.batch.target_time, Some(Duration::from_millis(500)));
    assert_eq!(spec.throttle.max_lag_bytes.map(|b| b.as_u64()), Some(1 << 30));
    assert_eq!(spec.throttle.max_slot_retained_bytes.map(|b| b.as_u64()), Some(16_000_000));
    assert_eq!(spec.throttle.max_transaction_age, Some(Duration::from_secs(600)));
    assert_eq!(spec.set["fulfillment_channel"], "'web'");
}

#[test]
fn bad_yaml_syntax_reports_the_line() {
    let p = problems("name: a\ntable: orders\nset:\n  x: 'unterminated\nbatch: {size: 1\n");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].field, "");
    assert!(p[0].line.is_some_and(|l| l >= 4), "{}", p[0]);
    assert!(p[0].column.is_some());
    assert!(!p[0].hint.is_empty());

    let p = problems("name: a\ntable: orders\n  set: x\n");
    assert_eq!(p[0].line, Some(3), "{}", p[0]);
}

#[test]
fn unknown_top_level_field_suggests_the_right_one() {
    let p = problems(&with("tabel_name: x\nconcurency: 2\n"));
    let unknown = expect(&p, "concurency", "unknown field `concurency`");
    assert_eq!(unknown.hint, "did you mean `concurrency`?");
    assert_eq!(unknown.line, Some(6));
    expect(&p, "tabel_name", "unknown field");
}

#[test]
fn unknown_nested_field_suggests_the_right_one() {
    let p = problems(&with("batch:\n  sise: 100\ntimeouts: {lok: 1s}\n"));
    let sise = expect(&p, "batch.sise", "unknown field `sise` in `batch`");
    assert_eq!(sise.hint, "did you mean `size`?");
    assert_eq!((sise.line, sise.column), (Some(6), Some(3)));
    let lok = expect(&p, "timeouts.lok", "unknown field `lok`");
    assert_eq!(lok.hint, "did you mean `lock`?");
    assert_eq!((lok.line, lok.column), (Some(7), Some(12)));
}

#[test]
fn a_section_field_at_the_top_level_is_pointed_home() {
    let p = problems(&with("pause: 1s\n"));
    assert_eq!(expect(&p, "pause", "unknown field").hint, "`pause` belongs under `batch:`");
}

#[test]
fn missing_name() {
    let p = problems("table: orders\nset: {x: '1'}\n");
    let missing = expect(&p, "name", "is missing");
    assert!(missing.hint.contains("add `name:`"), "{missing}");
    assert_eq!(p.len(), 1, "{p:?}");
}

#[test]
fn missing_table() {
    let p = problems("name: a\nset: {x: '1'}\n");
    expect(&p, "table", "is missing");
    assert_eq!(p.len(), 1, "{p:?}");
}

#[test]
fn empty_set() {
    let p = problems("name: a\ntable: orders\nset: {}\n");
    let empty = expect(&p, "set", "assigns no columns");
    assert_eq!(empty.line, Some(3));
}

#[test]
fn empty_name_value() {
    let p = problems("name:\ntable: orders\nset: {x: '1'}\n");
    expect(&p, "name", "has no value");
}

#[test]
fn zero_batch_size() {
    let p = problems(&with("batch:\n  size: 0\n"));
    let zero = expect(&p, "batch.size", "is 0, must be at least 1");
    assert_eq!(zero.line, Some(6));
}

#[test]
fn negative_batch_size() {
    let p = problems(&with("batch: {size: -5}\n"));
    expect(&p, "batch.size", "is -5, must be at least 1");
}

#[test]
fn min_size_above_max_size() {
    let p = problems(&with("batch: {size: 500, min_size: 1000, max_size: 200}\n"));
    let p = expect(&p, "batch.min_size", "min_size 1000 is larger than max_size 200");
    assert_eq!((p.line, p.column), (Some(5), Some(20)));
}

#[test]
fn size_outside_min_max() {
    let p = problems(&with("batch:\n  size: 50\n  min_size: 100\n"));
    expect(&p, "batch.size", "size 50 is outside min_size..max_size (100..100000)");
    // Against the defaults too.
    let p = problems(&with("batch:\n  size: 200000\n"));
    expect(&p, "batch.size", "outside min_size..max_size");
}

#[test]
fn a_set_size_means_fixed_batches_unless_a_target_time_is_set_too() {
    let fixed = parse_str(Path::new(FILE), &with("batch: {size: 5000}\n")).unwrap();
    assert_eq!((fixed.batch.start_size(), fixed.batch.target()), (5000, None));
    let timed = parse_str(Path::new(FILE), &with("batch: {size: 5000, target_time: 50ms}\n")).unwrap();
    assert_eq!((timed.batch.start_size(), timed.batch.target()), (5000, Some(Duration::from_millis(50))));
    // Without a size, the starting size keeps to min_size..max_size instead of being refused.
    let narrow = parse_str(Path::new(FILE), &with("batch: {min_size: 2000, max_size: 4000}\n")).unwrap();
    assert_eq!((narrow.batch.start_size(), narrow.batch.target()), (2000, Some(Duration::from_millis(200))));
}

#[test]
fn bad_duration() {
    let p = problems(&with("batch:\n  pause: soon\n"));
    let bad = expect(&p, "batch.pause", "`soon` is not a duration");
    assert_eq!(bad.hint, "write a duration such as `500ms`, `2s` or `1m`");
    assert_eq!(bad.line, Some(6));
    let p = problems(&with("timeouts: {statement: 30}\n"));
    expect(&p, "timeouts.statement", "`30` is not a duration");
}

#[test]
fn bad_byte_size() {
    let p = problems(&with("throttle:\n  max_lag_bytes: lots\n"));
    let bad = expect(&p, "throttle.max_lag_bytes", "`lots` is not a byte size");
    assert!(bad.hint.contains("`16MB`") && bad.hint.contains("`1GiB`"), "{bad}");
}

#[test]
fn bad_integer() {
    let p = problems(&with("concurrency: two\n"));
    expect(&p, "concurrency", "`two` is not a whole number");
}

#[test]
fn resume_lag_not_below_max_lag() {
    let p = problems(&with("throttle: {max_lag: 5s, resume_lag: 5s}\n"));
    expect(&p, "throttle.resume_lag", "resume_lag 5s is not below max_lag 5s");
}

#[test]
fn set_must_not_assign_a_key_column() {
    let p = problems(&with("key: [order_id, Line_No]\n").replace("flag: 'true'", "line_no: line_no + 1"));
    let p = expect(&p, "set.line_no", "assigns key column `line_no`");
    assert_eq!(p.line, Some(4));
}

#[test]
fn invalid_table_identifier() {
    let p = problems(&MINIMAL.replace("table: orders", "table: orders; DROP TABLE x"));
    let p = expect(&p, "table", "`orders; DROP TABLE x` is not a valid identifier");
    assert_eq!(p.line, Some(2));
}

#[test]
fn invalid_key_and_set_identifiers() {
    let p = problems(&with("key: [id, ID, 1x]\n").replace("flag:", "bad col: '1'\n  ok:"));
    expect(&p, "key[1]", "column `id` is listed twice (also key[0])");
    expect(&p, "key[2]", "`1x` is not a valid identifier");
    let col = expect(&p, "set.bad col", "column name `bad col` is not a valid identifier");
    assert_eq!(col.line, Some(4));
    assert_eq!(p.len(), 3, "{p:?}");
}

#[test]
fn expressions_must_be_one_expression() {
    let p = problems(
        &with("where: '  '\n").replace("flag: 'true'", "a: \"''\"\n  b: \"lower(b); DROP TABLE x\"\n  c: \"'a;b'\""),
    );
    expect(&p, "where", "is empty");
    expect(&p, "set.b", "contains `;`");
    assert!(p.iter().all(|p| p.field != "set.a" && p.field != "set.c"), "{p:?}");
}

/// `set` and `where` are spliced into the batch statement as `"col" = (expr)` and `AND (predicate)`:
/// text that closes those parentheses would rewrite the statement around it.
#[test]
fn sql_cannot_break_out_of_its_parentheses() {
    // `AND (status = 'legacy') OR (id < 100)`: the filter no longer limits the batch.
    let p = problems(&with("where: \"status = 'legacy') OR (id < 100\"\n"));
    let w = expect(&p, "where", "has a `)` at character 18 that closes a parenthesis it did not open");
    assert!(w.hint.contains("balance the parentheses"), "{w}");
    assert_eq!(w.line, Some(5), "{w}");
    // `"channel" = ('web'), id = (id + 1000000)`: a second assignment, to the key.
    let p = problems(&MINIMAL.replace("flag: 'true'", "channel: \"'web'), id = (id + 1000000\""));
    expect(&p, "set.channel", "has a `)` at character 6 that closes a parenthesis it did not open");
    // The other way round: an open `(` swallows the wrapper's `)`.
    let p = problems(&with("where: \"lower(email = 'a'\"\n"));
    expect(&p, "where", "has a `(` at character 6 that is never closed");
    let p = problems(&MINIMAL.replace("flag: 'true'", "flag: \"(true\""));
    expect(&p, "set.flag", "has a `(` at character 1 that is never closed");
}

#[test]
fn positional_parameters_are_refused() {
    // `$1` would bind to the batch's own cursor parameter.
    let p = problems(&with("where: \"id > $1\"\n"));
    let w = expect(&p, "where", "contains the positional parameter `$1` at character 6");
    assert!(w.hint.contains("cursor parameters"), "{w}");
    let p = problems(&MINIMAL.replace("flag: 'true'", "flag: \"$2::text || 'x'\""));
    expect(&p, "set.flag", "positional parameter `$2`");
}

#[test]
fn unterminated_quotes_are_refused() {
    // An open quote would pair with a quote in another field and turn the text between into SQL.
    let p = problems(&MINIMAL.replace("flag: 'true'", "a: \"'\"\n  b: \"') OR (true) OR ('\""));
    expect(&p, "set.a", "has a string literal starting at character 1 that never ends");
    assert!(p.iter().all(|p| p.field != "set.b"), "{p:?}");
}

#[test]
fn line_comments_are_refused_with_a_hint() {
    let p = problems(&MINIMAL.replace("flag: 'true'", "a: \"lower(email) -- keep it lower\""));
    expect(&p, "set.a", "has a `--` comment at character 14");
    assert!(p.iter().any(|p| p.hint.contains("/* … */")), "{p:?}");
}

#[test]
fn parentheses_and_dollars_in_quotes_and_comments_are_fine() {
    let text = MINIMAL.replace(
        "flag: 'true'",
        "a: \"'a)b' || \\\"col)\\\" || $$)$$ || $q$($1$q$\"\n  \
         b: \"lower(email) /* ) */\"\n  \
         c: \"coalesce(nullif(trim(x), ''), (y))\"\n  \
         d: \"E'it\\\\'s )' /* ( */\"",
    ) + "where: \"(status = 'a)' OR status IS NULL) AND \\\"weird)\\\" IS NOT NULL\"\n";
    let spec = parse_str(Path::new(FILE), &text).unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(spec.set["a"], "'a)b' || \"col)\" || $$)$$ || $q$($1$q$");
    assert_eq!(spec.set["b"], "lower(email) /* ) */");
    assert_eq!(spec.set["d"], r"E'it\'s )' /* ( */");
}

#[test]
fn set_values_must_be_text() {
    let p = problems(&MINIMAL.replace("flag: 'true'", "flag: true\n  n: '1'"));
    let p = expect(&p, "set.flag", "`true` is not text");
    assert_eq!(p.line, Some(4));
}

#[test]
fn bad_name() {
    let p = problems(&MINIMAL.replace("name: minimal", "name: Orders Backfill"));
    expect(&p, "name", "`Orders Backfill` is not a valid job name");
    let long = format!("name: {}", "a".repeat(64));
    let p = problems(&MINIMAL.replace("name: minimal", &long));
    expect(&p, "name", "at most 63");
}

#[test]
fn out_of_range_limits() {
    let p = problems(&with(
        "concurrency: 65\ntimeouts: {lock: 0s}\nbatch: {target_time: 0s}\nthrottle: {max_lag: 0s, min_replicas: -1, max_slot_retained_bytes: 0B}\n",
    ));
    expect(&p, "concurrency", "between 1 and 64");
    expect(&p, "timeouts.lock", "is zero");
    expect(&p, "batch.target_time", "is zero");
    expect(&p, "throttle.max_lag", "is zero");
    expect(&p, "throttle.min_replicas", "must be 0 or more");
    expect(&p, "throttle.max_slot_retained_bytes", "is zero");
    let p = problems(&with("throttle: {max_rate: 0}\n"));
    expect(&p, "throttle.max_rate", "must be at least 1");
}

#[test]
fn several_problems_in_one_file_are_all_reported() {
    let text = "\
name: Bad Name
table: orders; DROP TABLE x
set: {}
colour: blue
batch:
  size: -1
  pause: later
timeouts:
  lock: 0s
throttle:
  max_lag: eventually
";
    let p = problems(text);
    let all: Vec<String> = p.iter().map(ToString::to_string).collect();
    for field in ["name", "table", "set", "colour", "batch.size", "batch.pause", "timeouts.lock", "throttle.max_lag"] {
        expect(&p, field, "");
    }
    assert_eq!(p.len(), 8, "{}", all.join("\n"));
    let pause = expect(&p, "batch.pause", "not a duration");
    assert_eq!(pause.to_string(), format!("{FILE}:7:3: batch.pause: `later` is not a duration (fix: {})", pause.hint));
}

#[test]
fn a_broken_field_does_not_cause_follow_on_problems() {
    // `size` is unusable; the default would be outside 5000..9000, but that is not the operator's mistake.
    let p = problems(&with("batch: {size: lots, min_size: 5000, max_size: 9000}\n"));
    expect(&p, "batch.size", "`lots` is not a whole number");
    assert_eq!(p.len(), 1, "{p:?}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn duplicate_names_across_files_name_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", MINIMAL);
    let b = write(dir.path(), "b.yml", &format!("# the same job again\n{MINIMAL}"));
    let report = load_paths(&[dir.path().to_path_buf()]);
    assert!(report.jobs.is_empty(), "{:?}", report.jobs);
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    let in_a = report.problems.iter().find(|p| p.file == a).unwrap();
    let in_b = report.problems.iter().find(|p| p.file == b).unwrap();
    assert_eq!(in_a.field, "name");
    assert!(in_a.message.contains("`minimal`") && in_a.message.contains(&b.display().to_string()), "{in_a}");
    assert!(in_b.message.contains(&a.display().to_string()), "{in_b}");
    assert_eq!((in_a.line, in_b.line), (Some(1), Some(2)));
}

#[test]
fn load_paths_reads_directories_and_reports_missing_paths() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.yaml", &MINIMAL.replace("minimal", "job-b"));
    write(dir.path(), "a.yml", &MINIMAL.replace("minimal", "job-a"));
    write(dir.path(), ".hidden.yaml", "not: [valid");
    write(dir.path(), "notes.txt", "not a spec");
    let broken = write(dir.path(), "c.yaml", "name: job-c\n");
    let missing = dir.path().join("nope.yaml");
    // The same file named directly and through its directory loads once.
    let report = load_paths(&[dir.path().to_path_buf(), dir.path().join("a.yml"), missing.clone()]);
    let names: Vec<&str> = report.jobs.iter().map(|j| j.spec.name.as_str()).collect();
    assert_eq!(names, ["job-a", "job-b"]);
    assert!(!report.is_clean());
    let files: Vec<&Path> = report.problems.iter().map(|p| p.file.as_path()).collect();
    assert_eq!(files, [missing.as_path(), &broken, &broken], "{:?}", report.problems);
    assert!(report.problems[0].message.contains("does not exist"));
}

#[test]
fn schema_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/schema.json");
    let fresh = serde_json::to_string_pretty(&JobSpec::json_schema()).unwrap() + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == fresh, "jobs/schema.json is stale: run `UPDATE_SCHEMA=1 cargo test --test spec`");
}

#[test]
fn schema_shows_durations_and_sizes_as_strings() {
    let schema = JobSpec::json_schema();
    let defs = &schema["$defs"];
    let is_string =
        |ty: &serde_json::Value| ty == "string" || ty.as_array().is_some_and(|t| t.iter().any(|t| t == "string"));
    for (def, field) in [
        ("BatchSpec", "pause"),
        ("BatchSpec", "target_time"),
        ("TimeoutSpec", "lock"),
        ("TimeoutSpec", "statement"),
        ("ThrottleSpec", "max_lag"),
        ("ThrottleSpec", "resume_lag"),
        ("ThrottleSpec", "max_transaction_age"),
        ("ThrottleSpec", "max_lag_bytes"),
    ] {
        let ty = &defs[def]["properties"][field]["type"];
        assert!(is_string(ty), "{def}.{field} has type {ty}");
    }
    assert_eq!(schema["required"], serde_json::json!(["name", "table", "set"]));
}

#[test]
fn examples_validate_offline() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/examples");
    let report = load_paths(&[dir]);
    let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let mut names: Vec<&str> = report.jobs.iter().map(|j| j.spec.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["order-items-composite", "orders-fulfillment-channel", "users-email-lowercase"]);
    for job in &report.jobs {
        let stem = job.path.file_stem().and_then(|s| s.to_str()).unwrap();
        assert_eq!(stem, job.spec.name, "an example's file is named after its job");
    }
    let composite = report.jobs.iter().find(|j| j.spec.name == "order-items-composite").unwrap();
    assert_eq!(composite.spec.key.as_deref(), Some(&["order_id".to_string(), "line_no".to_string()][..]));
    assert_eq!(composite.spec.concurrency, 2);
}

#[test]
fn problem_display_format() {
    let p = problems(&with("batch: {size: 0}\n"));
    let p = expect(&p, "batch.size", "");
    assert_eq!(p.to_string(), format!("{FILE}:5:9: batch.size: is 0, must be at least 1 row (fix: {})", p.hint));
}

#[test]
fn a_bad_set_entry_does_not_hide_the_others() {
    let p = problems("name: a\ntable: t\nkey: [id]\nset:\n  id: id + 1\n  note: 42\n");
    expect(&p, "set.id", "assigns key column `id`");
    expect(&p, "set.note", "`42` is not text");
    assert_eq!(p.len(), 2, "{p:?}");
    // In file order.
    assert_eq!(p[0].field, "set.id");
}

#[test]
fn duplicate_yaml_keys_are_reported() {
    let p = problems("name: a\nname: b\ntable: t\nset: {x: y}\n");
    assert!(p[0].message.contains("duplicate entry"), "{}", p[0]);
    assert_eq!(p[0].hint, "write each field once");
}

#[test]
fn mangled_files_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/examples");
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        // Every truncation, and every line indented one space more: half-edited files.
        for cut in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let _ = parse_str(Path::new(FILE), &text[..cut]);
        }
        for (n, _) in text.lines().enumerate() {
            let shifted: Vec<String> =
                text.lines().enumerate().map(|(i, l)| if i == n { format!(" {l}") } else { l.to_string() }).collect();
            let _ = parse_str(Path::new(FILE), &shifted.join("\n"));
        }
    }
}

#[test]
fn specs_serialize_back_exactly() {
    let text = "name: a\ntable: t\nset: {x: y}\nthrottle: {max_lag_bytes: 16MB, max_slot_retained_bytes: 1500001, max_lag: 1500ms}\n";
    let spec = parse_str(Path::new(FILE), text).unwrap();
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["throttle"]["max_lag_bytes"], "16MB");
    assert_eq!(json["throttle"]["max_slot_retained_bytes"], "1500001B");
    let back: JobSpec = serde_json::from_value(json).unwrap();
    assert_eq!(back, spec);
}

// ----- schedule (issue 11) -----

#[test]
fn schedule_parses_with_utc_by_default() {
    let spec = parse_str(
        Path::new(FILE),
        &with("schedule:\n  windows: [\"Mon-Fri 01:00-06:00\", \"Sat,Sun 00:00-24:00\", \"22:00-02:00\"]\n"),
    )
    .unwrap();
    let schedule = spec.schedule.expect("schedule");
    assert_eq!(schedule.timezone, "UTC");
    assert_eq!(schedule.windows.len(), 3);
    assert_eq!(parse_str(Path::new(FILE), MINIMAL).unwrap().schedule, None);
}

#[test]
fn a_bad_window_names_its_field_with_an_example() {
    let p = problems(&with(
        "schedule:\n  timezone: Europe/Berln\n  windows:\n    - Mon-Fri 01:00-06:00\n    - Mon-Fry 25:00-06:00\n",
    ));
    let bad = expect(&p, "schedule.windows[1]", "`Fry` is not a day");
    assert!(bad.hint.contains("`Mon-Fri 01:00-06:00`"), "{bad}");
    assert_eq!(bad.line, Some(7), "{bad}");
    let tz = expect(&p, "schedule.timezone", "did you mean `Europe/Berlin`?");
    assert_eq!(tz.line, Some(6), "{tz}");
    let p = problems(&with("schedule:\n  windows: [\"06:00-06:00\"]\n"));
    expect(&p, "schedule.windows[0]", "empty window");
    let p = problems(&with("schedule:\n  timezone: UTC\n"));
    expect(&p, "schedule.windows", "never run");
    let p = problems(&with("schedule:\n  windows: 01:00-02:00\n"));
    expect(&p, "schedule.windows", "");
}
