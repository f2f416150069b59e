//! Reading spec files and directories into `JobSpec`s, reporting every problem, not just the first.
//!
//! Plain `serde_yaml::from_str::<JobSpec>` stops at the first error and cannot point at a field. So a
//! file is read in stages: YAML syntax (into a `Value`), then the shape of the mapping (unknown and
//! missing fields), then each field on its own (so a bad `batch.pause` and a bad `throttle.max_lag` are
//! both reported), then `JobSpec::validate`. The field names come from the JSON schema of the types,
//! and each field is deserialized by the real `JobSpec` deserializer, so this module holds no second
//! copy of the contract.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_yaml::{Mapping, Value};

use super::{JobSpec, Problem};

/// A spec that parsed and validated, with the file it came from.
#[derive(Debug, Clone)]
pub struct LoadedJob {
    pub path: PathBuf,
    pub spec: JobSpec,
}

/// The outcome of loading many files: the good jobs and every problem found in the others.
/// A broken file never hides the good ones.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub jobs: Vec<LoadedJob>,
    pub problems: Vec<Problem>,
}

impl LoadReport {
    /// True when every file loaded without a problem.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

const SYNTAX_HINT: &str = "check the indentation (spaces, not tabs) and quoting near this position; \
                           quote SQL that contains `: `, `#` or starts with a quote";
const DURATION_HINT: &str = "write a duration such as `500ms`, `2s` or `1m`";
const SIZE_HINT: &str = "write a size such as `16MB` or `1GiB`";

/// Parse and validate one file's text. `path` only labels the problems.
pub fn parse_str(path: &Path, text: &str) -> Result<JobSpec, Vec<Problem>> {
    let doc = match serde_yaml::from_str::<Value>(text) {
        Ok(doc) => doc,
        Err(e) => {
            let position = e.location().map(|l| (l.line(), l.column()));
            let message = syntax_message(&e);
            let hint = if message.starts_with("duplicate entry") { "write each field once" } else { SYNTAX_HINT };
            return Err(vec![Problem::new(path, "", message, hint).at(position)]);
        }
    };
    let top = match doc {
        Value::Mapping(m) => m,
        Value::Null => {
            return Err(vec![Problem::new(
                path,
                "",
                "the file is empty",
                "write a job spec with at least `name`, `table` and `set` (see jobs/examples/)",
            )]);
        }
        other => {
            return Err(vec![
                Problem::new(
                    path,
                    "",
                    format!("the file is {}, not a mapping of fields", describe(&other)),
                    "write `field: value` lines, starting with `name:` (see jobs/examples/)",
                )
                .at(Some((1, 1))),
            ]);
        }
    };
    let mut reader = Reader { path, text, problems: Vec::new(), broken: BTreeSet::new() };
    let clean = reader.check_fields(&top);
    let spec = reader.assemble(clean);
    if let Some(spec) = &spec {
        for problem in spec.validate(path) {
            if !reader.is_broken(&problem.field) {
                let position = locate(text, &problem.field);
                reader.problems.push(problem.at(position));
            }
        }
    }
    match spec {
        Some(spec) if reader.problems.is_empty() => Ok(spec),
        _ => {
            // In file order, as a person fixes them; missing fields (no line) first.
            reader.problems.sort_by_key(|p| (p.line, p.column));
            Err(reader.problems)
        }
    }
}

/// Load files and directories (`*.yaml`/`*.yml` directly inside a directory, sorted, hidden files
/// skipped; a file named explicitly is read whatever its extension). Job names must be unique across
/// everything loaded: a name used twice is a problem in each file, and neither job is returned.
pub fn load_paths(paths: &[PathBuf]) -> LoadReport {
    let mut report = LoadReport::default();
    let mut files: Vec<PathBuf> = Vec::new();
    for path in paths {
        if path.is_dir() {
            match spec_files_in(path) {
                Ok(found) => files.extend(found),
                Err(e) => report.problems.push(Problem::new(
                    path,
                    "",
                    format!("cannot list directory: {e}"),
                    "check the directory's permissions",
                )),
            }
        } else if path.exists() {
            files.push(path.clone());
        } else {
            report.problems.push(Problem::new(
                path,
                "",
                "does not exist",
                "pass a spec file or a directory of `*.yaml` files",
            ));
        }
    }
    // The same file reached twice (named and via its directory) is one job, not a duplicate name.
    let mut seen = BTreeSet::new();
    files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));

    let mut texts: BTreeMap<PathBuf, String> = BTreeMap::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                report.problems.push(Problem::new(
                    &file,
                    "",
                    format!("cannot read: {e}"),
                    "check the file's permissions and that it is UTF-8 text",
                ));
                continue;
            }
        };
        match parse_str(&file, &text) {
            Ok(spec) => report.jobs.push(LoadedJob { path: file.clone(), spec }),
            Err(problems) => report.problems.extend(problems),
        }
        texts.insert(file, text);
    }

    let mut by_name: BTreeMap<&str, Vec<&Path>> = BTreeMap::new();
    for job in &report.jobs {
        by_name.entry(job.spec.name.as_str()).or_default().push(&job.path);
    }
    let mut duplicated = BTreeSet::new();
    let mut problems = Vec::new();
    for (name, files) in by_name.iter().filter(|(_, files)| files.len() > 1) {
        duplicated.insert(name.to_string());
        for file in files {
            let others: Vec<String> =
                files.iter().filter(|f| *f != file).map(|f| format!("`{}`", f.display())).collect();
            let position = texts.get(*file).and_then(|text| locate(text, "name"));
            problems.push(
                Problem::new(
                    file,
                    "name",
                    format!("job name `{name}` is also used by {}", others.join(", ")),
                    "give every job a unique name; progress is recorded per name",
                )
                .at(position),
            );
        }
    }
    report.problems.extend(problems);
    report.jobs.retain(|job| !duplicated.contains(&job.spec.name));
    report
}

/// `*.yaml` / `*.yml` files directly in `dir`, sorted, without hidden files.
fn spec_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let visible = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.'));
        let yaml = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e == "yaml" || e == "yml");
        if visible && yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// What the types say a spec looks like, read once from `JobSpec::json_schema()`.
struct Model {
    /// Top-level field names (sorted: the schema's JSON object does not keep declaration order).
    fields: Vec<String>,
    required: Vec<String>,
    /// Fields that are nested structs (`batch`, ...) and their field names.
    sections: BTreeMap<String, Vec<String>>,
    /// A value of the right JSON type for each required field, to stand in while probing others.
    placeholders: Mapping,
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let schema = JobSpec::json_schema();
        let names = |object: &serde_json::Value| -> Vec<String> {
            object["properties"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default()
        };
        let fields = names(&schema);
        let required: Vec<String> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut sections = BTreeMap::new();
        for field in &fields {
            let property = &schema["properties"][field];
            // An optional section (`schedule`) is `anyOf: [{$ref}, {type: null}]`.
            let reference = property["$ref"]
                .as_str()
                .or_else(|| property["anyOf"].as_array()?.iter().find_map(|a| a["$ref"].as_str()));
            let target = match reference.and_then(|r| r.strip_prefix("#/")) {
                Some(pointer) => schema.pointer(&format!("/{pointer}")).unwrap_or(property),
                None => property,
            };
            let inner = names(target);
            if !inner.is_empty() {
                sections.insert(field.clone(), inner);
            }
        }
        let mut placeholders = Mapping::new();
        for field in &required {
            let placeholder = match schema["properties"][field]["type"].as_str() {
                Some("object") => Value::Mapping(Mapping::new()),
                Some("array") => Value::Sequence(Vec::new()),
                _ => Value::String(String::new()),
            };
            placeholders.insert(Value::String(field.clone()), placeholder);
        }
        Model { fields, required, sections, placeholders }
    })
}

/// Try one field on its own with the real deserializer: a document of placeholders for the required
/// fields plus `value` at `path` (`["batch", "pause"]`, `["set", "email"]`, `["key", "0"]`).
fn probe(path: &[&str], value: &Value) -> Result<(), serde_yaml::Error> {
    let mut nested = value.clone();
    for (depth, segment) in path.iter().enumerate().skip(1).rev() {
        // A list element: `key[1]`, `then[0]`, `schedule.windows[2]` (but a `set` column may be named `0`).
        let element = path[0] != "set" && segment.parse::<usize>().is_ok();
        nested = if (path[0] == "key" && depth == 1) || element {
            Value::Sequence(vec![nested])
        } else {
            let mut m = Mapping::new();
            m.insert(Value::String((*segment).to_string()), nested);
            Value::Mapping(m)
        };
    }
    let mut doc = model().placeholders.clone();
    doc.insert(Value::String(path[0].to_string()), nested);
    serde_yaml::from_value::<JobSpec>(Value::Mapping(doc)).map(drop)
}

/// The kind of value a field takes, found by asking the deserializer rather than keeping a list.
#[derive(Debug, PartialEq)]
enum Kind {
    Duration,
    ByteSize,
    Integer,
    Text,
    Other,
}

fn kind_of(path: &[&str]) -> Kind {
    let accepts = |v: Value| probe(path, &v).is_ok();
    let nonsense = || accepts(Value::String("not a value".into()));
    if nonsense() {
        Kind::Text
    } else if accepts(Value::String("1s".into())) {
        Kind::Duration
    } else if accepts(Value::String("1MiB".into())) {
        Kind::ByteSize
    } else if accepts(Value::Number(1.into())) {
        Kind::Integer
    } else {
        Kind::Other
    }
}

struct Reader<'a> {
    path: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
    /// Dotted fields already reported as unusable; validation problems about them would only repeat.
    broken: BTreeSet<String>,
}

impl Reader<'_> {
    fn report(&mut self, field: &str, message: impl Into<String>, hint: impl Into<String>) {
        let position = locate(self.text, field);
        self.problems.push(Problem::new(self.path, field, message, hint).at(position));
    }

    fn is_broken(&self, field: &str) -> bool {
        self.broken.iter().any(|b| {
            field == b
                || field.strip_prefix(b.as_str()).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    }

    /// Reports unknown, missing and ill-typed fields; returns the fields that can be used.
    fn check_fields(&mut self, top: &Mapping) -> Mapping {
        let model = model();
        let mut clean = Mapping::new();
        for (key, value) in top {
            let Some(field) = self.field_name(key, "") else { continue };
            if value.is_null() && model.required.contains(&field) {
                self.broken.insert(field.clone());
                self.report(&field, "has no value", format!("give `{field}` a value; {}", describe_field(&field)));
                continue;
            }
            if !model.fields.contains(&field) {
                let hint = suggest(&field, &model.fields, &model.sections);
                self.report(&field, format!("unknown field `{field}`"), hint);
                continue;
            }
            if let Some(inner) = model.sections.get(&field) {
                let section = self.check_section(&field, inner, value);
                clean.insert(key.clone(), Value::Mapping(section));
            } else if let Some(value) = self.check_value(&[&field], value) {
                clean.insert(key.clone(), value);
            }
        }
        for field in &model.required {
            if !top.contains_key(field.as_str()) {
                self.broken.insert(field.clone());
                let hint = format!("add `{field}:`; {}", describe_field(field));
                self.problems.push(Problem::new(self.path, field.as_str(), "is missing", hint));
            }
        }
        clean
    }

    fn check_section(&mut self, section: &str, inner: &[String], value: &Value) -> Mapping {
        let mut clean = Mapping::new();
        let fields = match value {
            Value::Mapping(m) => m,
            // `batch:` with every line below it commented out: all defaults.
            Value::Null => return clean,
            other => {
                self.broken.insert(section.to_string());
                self.report(
                    section,
                    format!("must be a mapping of fields, not {}", describe(other)),
                    format!("indent the fields under `{section}:`, e.g. `{section}: {{{}: ...}}`", inner[0]),
                );
                return clean;
            }
        };
        for (key, value) in fields {
            let Some(name) = self.field_name(key, section) else { continue };
            let dotted = format!("{section}.{name}");
            if !inner.contains(&name) {
                let hint = suggest(&name, inner, &BTreeMap::new());
                self.report(&dotted, format!("unknown field `{name}` in `{section}`"), hint);
            } else if let Some(value) = self.check_value(&[section, &name], value) {
                clean.insert(key.clone(), value);
            }
        }
        clean
    }

    fn field_name(&mut self, key: &Value, section: &str) -> Option<String> {
        match key {
            Value::String(s) => Some(s.clone()),
            other => {
                let field = if section.is_empty() { String::new() } else { section.to_string() };
                self.report(
                    &field,
                    format!("{} is not a field name", describe(other)),
                    "field names are plain words such as `name` or `batch`",
                );
                None
            }
        }
    }

    /// Deserializes one value where it sits and returns it if usable. If not, reports it, or for a
    /// map the bad entries only (the good ones stay, so `set` is still checked against `key`), or for
    /// a list each bad element (the list is dropped: removing elements would renumber them).
    fn check_value(&mut self, path: &[&str], value: &Value) -> Option<Value> {
        let Err(error) = probe(path, value) else { return Some(value.clone()) };
        let dotted = path.join(".");
        let entry = |this: &mut Self, field: String, sub: String, v: &Value| -> bool {
            let full: Vec<&str> = path.iter().copied().chain([sub.as_str()]).collect();
            match probe(&full, v) {
                Ok(()) => true,
                Err(e) => {
                    this.report_bad_value(&field, &full, v, &e);
                    this.broken.insert(field);
                    false
                }
            }
        };
        match value {
            Value::Mapping(m) if probe(path, &Value::Mapping(Mapping::new())).is_ok() => {
                let mut good = Mapping::new();
                for (k, v) in m {
                    if let Some(name) = k.as_str()
                        && entry(self, format!("{dotted}.{name}"), name.to_string(), v)
                    {
                        good.insert(k.clone(), v.clone());
                    }
                }
                if good.len() < m.len() && probe(path, &Value::Mapping(good.clone())).is_ok() {
                    if good.is_empty() {
                        self.broken.insert(dotted);
                    }
                    return Some(Value::Mapping(good));
                }
            }
            Value::Sequence(items) if probe(path, &Value::Sequence(Vec::new())).is_ok() => {
                let bad =
                    items.iter().enumerate().filter(|(i, v)| !entry(self, format!("{dotted}[{i}]"), i.to_string(), v));
                if bad.count() > 0 {
                    self.broken.insert(dotted);
                    return None;
                }
            }
            _ => {}
        }
        self.report_bad_value(&dotted, path, value, &error);
        self.broken.insert(dotted);
        None
    }

    fn report_bad_value(&mut self, field: &str, path: &[&str], value: &Value, error: &serde_yaml::Error) {
        let shown = describe(value);
        let (message, hint) = match kind_of(path) {
            Kind::Duration => (format!("{shown} is not a duration"), DURATION_HINT.to_string()),
            Kind::ByteSize => (format!("{shown} is not a byte size"), SIZE_HINT.to_string()),
            Kind::Integer => {
                (format!("{shown} is not a whole number"), "write a whole number such as `1000`".to_string())
            }
            Kind::Text => (
                format!("{shown} is not text"),
                "write it as a string; quote it if YAML would read it as a number, boolean or list: `\"...\"`"
                    .to_string(),
            ),
            Kind::Other if path[0] == "then" => (
                syntax_message(error),
                "write each step as `- not_null: COLUMN` or `- validate_constraint: NAME`".to_string(),
            ),
            Kind::Other => (error.to_string(), "see jobs/schema.json for what this field takes".to_string()),
        };
        self.report(field, message, hint);
    }

    /// The spec from the usable fields, with placeholders where a required one is broken (so the
    /// rest can still be validated). `None` only if the pieces do not fit together after all.
    fn assemble(&mut self, mut clean: Mapping) -> Option<JobSpec> {
        for (key, placeholder) in &model().placeholders {
            if !clean.contains_key(key) {
                clean.insert(key.clone(), placeholder.clone());
            }
        }
        match serde_yaml::from_value::<JobSpec>(Value::Mapping(clean)) {
            Ok(spec) => Some(spec),
            Err(e) => {
                self.problems.push(Problem::new(self.path, "", e.to_string(), "see jobs/schema.json"));
                None
            }
        }
    }
}

/// "did you mean" for an unknown field: a close spelling at the same level, or the same name in a
/// section (`pause` at the top level belongs under `batch`).
fn suggest(unknown: &str, known: &[String], sections: &BTreeMap<String, Vec<String>>) -> String {
    let best = known
        .iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, k)) = best {
        return format!("did you mean `{k}`?");
    }
    for (section, inner) in sections {
        if inner.iter().any(|f| f == unknown) {
            return format!("`{unknown}` belongs under `{section}:`");
        }
    }
    let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
    format!("remove it; known fields here: {}", list.join(", "))
}

/// The first sentence of a top-level field's doc comment, from the schema.
fn describe_field(field: &str) -> String {
    let schema = JobSpec::json_schema();
    let description = schema["properties"][field]["description"].as_str().unwrap_or("see jobs/schema.json");
    let first = description.split(". ").next().unwrap_or(description).trim_end_matches('.');
    first.to_string()
}

/// A value as a person would recognise it in their file.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "an empty value".to_string(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) => format!("`{s}`"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("a value tagged `{}`", t.tag),
    }
}

/// serde_yaml's message without the " at line L column C" it repeats (the Problem carries those).
fn syntax_message(e: &serde_yaml::Error) -> String {
    let full = e.to_string();
    match e.location() {
        Some(l) => full.replace(&format!(" at line {} column {}", l.line(), l.column()), ""),
        None => full,
    }
}

/// 1-based line and column of the key for a dotted field (`batch.size`, `set.email`, `key[1]`) in
/// the text, following indentation and `{...}` flow mappings. If the field itself is not written
/// (a default that failed validation), the position of its closest written parent.
pub(crate) fn locate(text: &str, field: &str) -> Option<(usize, usize)> {
    if field.is_empty() {
        return None;
    }
    let base = field.split('[').next().unwrap_or(field);
    // Only the first dot separates: a `set` column may itself contain dots.
    let segments: Vec<&str> = base.splitn(2, '.').collect();
    let lines: Vec<&str> = text.lines().collect();
    let (mut lo, mut hi) = (0, lines.len());
    let mut flow_from: Option<(usize, usize)> = None;
    let mut found = None;
    for segment in segments {
        let hit = match flow_from {
            Some((line, from)) => find_in_flow(&lines, line, from, hi, segment),
            None => find_in_block(&lines, lo, hi, segment),
        };
        let Some((line, start, after)) = hit else { break };
        found = Some((line + 1, lines[line][..start].chars().count() + 1));
        let indent = indent_of(lines[line]);
        let end = (line + 1..hi).find(|&j| is_content(lines[j]) && indent_of(lines[j]) <= indent).unwrap_or(hi);
        let rest = lines[line][after..].trim_start();
        if flow_from.is_some() || rest.starts_with('{') {
            flow_from = Some((line, after));
        } else {
            lo = line + 1;
        }
        hi = end;
    }
    found
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#') && t != "---"
}

/// If `rest` starts with `key:` (bare or quoted), the byte length through the colon.
fn key_at(rest: &str, key: &str) -> Option<usize> {
    for quoted in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
        if let Some(after) = rest.strip_prefix(quoted.as_str()) {
            let spaces = after.len() - after.trim_start_matches(' ').len();
            let after_colon = after[spaces..].strip_prefix(':')?;
            if after_colon.is_empty() || after_colon.starts_with([' ', '\t']) || quoted.len() > key.len() {
                return Some(quoted.len() + spaces + 1);
            }
        }
    }
    None
}

/// Block-style `key:` at the indentation of the first content line in `lo..hi`.
/// Returns (line index, byte column of the key, byte offset after the colon).
fn find_in_block(lines: &[&str], lo: usize, hi: usize, key: &str) -> Option<(usize, usize, usize)> {
    let level = (lo..hi).find(|&j| is_content(lines[j])).map(|j| indent_of(lines[j]))?;
    (lo..hi).filter(|&j| is_content(lines[j]) && indent_of(lines[j]) == level).find_map(|j| {
        let len = key_at(&lines[j][level..], key)?;
        Some((j, level, level + len))
    })
}

/// `key:` inside a `{...}` flow mapping that starts at byte `from` of line `line`.
fn find_in_flow(lines: &[&str], line: usize, from: usize, hi: usize, key: &str) -> Option<(usize, usize, usize)> {
    for (j, text) in lines.iter().enumerate().take(hi.max(line + 1)).skip(line) {
        let start = if j == line { from } else { 0 };
        for (offset, _) in text[start..].match_indices(key) {
            let mut at = start + offset;
            if at > start && matches!(text.as_bytes()[at - 1], b'"' | b'\'') {
                at -= 1;
            }
            let before = text[..at].trim_end();
            let boundary = before.ends_with('{') || before.ends_with(',') || (j > line && before.is_empty());
            if let Some(len) = key_at(&text[at..], key).filter(|_| boundary) {
                return Some((j, at, at + len));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# a comment
name: a
set:
  email: lower(email)
  \"Odd.Col\": 1
batch:
  size: 10
  pause: 1s
timeouts: {lock: 2s, statement: 30s}
throttle:
  max_lag: 10s
";

    #[test]
    fn locates_block_and_flow_keys() {
        assert_eq!(locate(TEXT, "name"), Some((2, 1)));
        assert_eq!(locate(TEXT, "set.email"), Some((4, 3)));
        assert_eq!(locate(TEXT, "batch.pause"), Some((8, 3)));
        assert_eq!(locate(TEXT, "timeouts.statement"), Some((9, 22)));
        assert_eq!(locate(TEXT, "throttle.max_lag"), Some((11, 3)));
        // Not written: the parent's position.
        assert_eq!(locate(TEXT, "batch.min_size"), Some((6, 1)));
        assert_eq!(locate(TEXT, "key[0]"), None);
    }

    #[test]
    fn model_comes_from_the_types() {
        let m = model();
        assert_eq!(m.required, ["name", "table", "set"]);
        assert!(m.fields.iter().any(|f| f == "where"));
        assert!(m.sections["batch"].iter().any(|f| f == "target_time"));
        assert!(m.sections["throttle"].iter().any(|f| f == "max_slot_retained_bytes"));
        assert!(!m.sections.contains_key("set"));
    }

    #[test]
    fn kinds_are_found_by_probing() {
        assert_eq!(kind_of(&["batch", "pause"]), Kind::Duration);
        assert_eq!(kind_of(&["throttle", "max_lag_bytes"]), Kind::ByteSize);
        assert_eq!(kind_of(&["batch", "size"]), Kind::Integer);
        assert_eq!(kind_of(&["name"]), Kind::Text);
        assert_eq!(kind_of(&["set", "x"]), Kind::Text);
    }

    #[test]
    fn suggestions() {
        let m = model();
        assert_eq!(suggest("sise", &m.sections["batch"], &BTreeMap::new()), "did you mean `size`?");
        assert_eq!(suggest("tabel", &m.fields, &m.sections), "did you mean `table`?");
        assert_eq!(suggest("pause", &m.fields, &m.sections), "`pause` belongs under `batch:`");
    }
}
