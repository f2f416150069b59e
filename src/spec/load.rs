//! Reading spec files and directories into `JobSpec`s.

use std::path::{Path, PathBuf};

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

/// Parse and validate one file's text.
pub fn parse_str(path: &Path, text: &str) -> Result<JobSpec, Vec<Problem>> {
    serde_yaml::from_str::<JobSpec>(text).map_err(|e| {
        vec![Problem {
            file: path.to_path_buf(),
            field: String::new(),
            line: e.location().map(|l| l.line()),
            column: e.location().map(|l| l.column()),
            message: e.to_string(),
            hint: String::new(),
        }]
    })
}

/// Load files and directories (`*.yaml`/`*.yml`, not recursive).
pub fn load_paths(paths: &[PathBuf]) -> LoadReport {
    let mut report = LoadReport::default();
    for path in paths {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                report.problems.push(Problem {
                    file: path.clone(),
                    field: String::new(),
                    line: None,
                    column: None,
                    message: format!("cannot read: {e}"),
                    hint: String::new(),
                });
                continue;
            }
        };
        match parse_str(path, &text) {
            Ok(spec) => report.jobs.push(LoadedJob { path: path.clone(), spec }),
            Err(p) => report.problems.extend(p),
        }
    }
    report
}
