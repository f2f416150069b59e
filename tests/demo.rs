//! `pgbackfill demo`, run as the real binary: it backfills, is throttled by a paused standby,
//! resumes, verifies, and leaves no server or directory behind, also when interrupted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(180);

/// The demo with stdout and stderr in a file we can read while it runs.
struct Demo {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("demo.out");
        let file = std::fs::File::create(&out).expect("output file");
        let child = Command::new(env!("CARGO_BIN_EXE_pgbackfill"))
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("output file"))
            .stderr(file)
            .spawn()
            .expect("spawn pgbackfill demo");
        Demo { child, out, _dir: dir }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn wait_output(&self, needle: &str) {
        let start = Instant::now();
        while !self.output().contains(needle) {
            assert!(start.elapsed() < DEADLINE, "no {needle:?} within {DEADLINE:?}; output:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("demo did not exit within {DEADLINE:?}; output:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The cluster directory the demo announced.
    fn cluster_dir(&self) -> PathBuf {
        let out = self.output();
        let line = out.lines().find_map(|l| l.strip_prefix("cluster dir: ")).expect("a `cluster dir:` line");
        PathBuf::from(line.split_whitespace().next().expect("a path"))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes whose command line mentions `dir` (the servers run with `-D <dir>/primary`).
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some(cmdline)
        })
        .collect()
}

/// Nothing of the demo's cluster remains: no directory, no server process.
fn assert_cleaned_up(dir: &Path, output: &str) {
    assert!(!dir.exists(), "{} still exists; output:\n{output}", dir.display());
    // The reaper waits for the servers to stop before removing the directory; backends that were
    // still exiting are gone within moments.
    let start = Instant::now();
    loop {
        let left = processes_using(dir);
        if left.is_empty() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "processes of the demo remain: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn demo_backfills_is_throttled_resumes_verifies_and_cleans_up() {
    let mut demo = Demo::start(&["--rows", "20000"]);
    let status = demo.wait();
    let out = demo.output();
    assert!(status.success(), "demo exited with {status}; output:\n{out}");
    assert!(out.contains("pg_wal_replay_pause()"), "replay was not paused; output:\n{out}");
    assert!(out.contains("throttled: standby"), "never throttled by the standby; output:\n{out}");
    assert!(out.contains("pg_wal_replay_resume()"), "replay was not resumed; output:\n{out}");
    assert!(out.contains("the job resumed writing"), "the job did not resume; output:\n{out}");
    assert!(out.contains("verify: 0 rows still match"), "verification did not find 0 rows; output:\n{out}");
    assert!(out.contains("summary: 20000 rows updated"), "no summary; output:\n{out}");
    assert!(out.contains("ok: every row backfilled and verified"), "output:\n{out}");
    assert_cleaned_up(&demo.cluster_dir(), &out);
}

#[test]
fn an_interrupted_demo_stops_and_cleans_up() {
    let mut demo = Demo::start(&["--rows", "20000"]);
    demo.wait_output("running the job");
    let pid = demo.child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().expect("kill -INT");
    assert!(sent.success());
    let status = demo.wait();
    let out = demo.output();
    assert_eq!(status.code(), Some(130), "exit status {status}; output:\n{out}");
    assert!(out.contains("interrupted: stopping"), "output:\n{out}");
    assert_cleaned_up(&demo.cluster_dir(), &out);
}
