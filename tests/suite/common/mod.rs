//! A small harness: a temp folder with files, and the real binary run in it.
#![allow(dead_code)]

pub mod sim;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Sandbox {
    pub dir: tempfile::TempDir,
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_batchgrader"));
        cmd.current_dir(self.dir.path())
            .env_remove("BATCHGRADER_STATE")
            .env_remove("BATCHGRADER_PRICING")
            .env("NO_COLOR", "1")
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out: Output = cmd.output().expect("run batchgrader");
        use std::os::unix::process::ExitStatusExt;
        Run {
            code: out.status.code().unwrap_or(-1),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
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

/// A number-grading job on `in.csv` (columns `id`, `text`) against an
/// OpenAI-compatible server at `url`, written to `out/graded.csv`, with
/// short polls for tests; `extra` is appended.
pub fn openai_job(
    name: &str,
    url: &str,
    key_env: &str,
    chunk: u32,
    in_flight: u32,
    extra: &str,
) -> String {
    format!(
        "version: 1
name: {name}
provider:
  kind: openai
  base_url: {url}
  api_key_env: {key_env}
model: gpt-4o-mini
input:
  path: in.csv
  id: id
prompt:
  system: Grade the answer from 0 to 10. Reply with the number only.
  user: \"{{{{ text }}}}\"
request:
  max_tokens: 4
output:
  path: out/graded.csv
  field: grade
  parse: number
chunking:
  max_requests: {chunk}
concurrency:
  max_batches_in_flight: {in_flight}
poll:
  interval: 100ms
  max_interval: 200ms
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
