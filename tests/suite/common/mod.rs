//! The shared harness: a temp folder with files, the real binary run in it
//! (every run of the binary goes through [`bin`]), and the graded jobs, kill
//! tests and checks the end-to-end tests share ([`jobs`]).

pub mod browser;
pub mod jobs;
pub mod sim;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use jobs::*;

/// The binary under test, built by Cargo for the tests.
pub fn bin_path() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_batchgrader"))
}

/// The binary under test with the harness's environment: no state folder
/// or price table from the caller's environment, no colours.
pub fn bin() -> Command {
    let mut cmd = Command::new(bin_path());
    harness_env(&mut cmd);
    cmd
}

/// `args` for the binary, run in `dir` (see [`bin`]).
pub fn command_in(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.current_dir(dir).args(args);
    cmd
}

fn harness_env(cmd: &mut Command) {
    cmd.env_remove("BATCHGRADER_STATE")
        .env_remove("BATCHGRADER_PRICING")
        .env("NO_COLOR", "1");
    user_home(cmd, process_home());
}

/// Runs of the binary keep the per-user job registry under `home`, never
/// in the real user's home.
pub fn user_home(cmd: &mut Command, home: &Path) {
    cmd.env("HOME", home)
        .env("XDG_STATE_HOME", home.join(".local/state"));
}

/// The user home of this test process's runs that have no sandbox of
/// their own: a folder under Cargo's scratch folder for tests.
pub fn process_home() -> &'static Path {
    static HOME: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("home-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp home")
            .keep()
    })
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    /// The user home of the sandbox's runs (the job registry lives in it).
    pub home: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        use std::os::unix::process::ExitStatusExt;
        Run {
            code: out.status.code().unwrap_or(-1),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
            home: tempfile::tempdir().expect("temp home"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, contents).unwrap();
        p
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    /// Run the binary in the sandbox with `state/` as the state folder.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        cmd.output().expect("run batchgrader").into()
    }

    /// The binary with `args`, in the sandbox, not started: for runs a test
    /// spawns, signals or pipes itself.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = command_in(self.dir.path(), args);
        user_home(&mut cmd, self.home.path());
        cmd
    }

    /// The sandbox's job registry file.
    pub fn registry(&self) -> PathBuf {
        self.home.path().join(".local/state/batchgrader/jobs.jsonl")
    }

    /// The binary with `args`, in the sandbox, started by `wrapper` (a
    /// program and its arguments, the binary's path appended after them),
    /// e.g. a shell that lowers a limit first.
    pub fn command_under(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut cmd = Command::new(wrapper[0]);
        harness_env(&mut cmd);
        user_home(&mut cmd, self.home.path());
        cmd.current_dir(self.dir.path())
            .args(&wrapper[1..])
            .arg(bin_path())
            .args(args);
        cmd
    }
}

/// Every file under `dir`, depth first.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Wait until sled has closed its lock file of `job` after this process
/// dropped its `JobStore` (its background threads do so a moment later), so
/// the binary run next can open the job.
pub fn wait_for_store_release(sb: &Sandbox, job: &str) {
    let file = sb.path(&format!("state/{job}/db/db"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::File::open(&file).unwrap().try_lock().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "sled kept {file:?} locked"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The repository root (for fixtures and shipped files).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A spec with the given input path and user template; `extra` is appended.
pub fn spec(name: &str, input: &str, user: &str, extra: &str) -> String {
    format!(
        "version: 1
name: {name}
model: gpt-4o-mini
input:
  path: {input}
prompt:
  system: Grade it.
  user: {user:?}
request:
  max_tokens: 4
output:
  path: out/{name}.csv
{extra}"
    )
}

/// Every request line of every chunk file of the job's current plan, in chunk order.
pub fn chunk_lines(sb: &Sandbox, job: &str) -> Vec<serde_json::Value> {
    let chunks_root = sb.path(&format!("state/{job}/chunks"));
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&chunks_root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one plan generation on disk: {dirs:?}");
    let dir = dirs.pop().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("chunk-")
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

/// The user message of a request line.
pub fn user_text(line: &serde_json::Value) -> String {
    let msgs = line["body"]["messages"].as_array().unwrap();
    msgs.last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string()
}
