//! The bad-input corpus: every folder under `tests/fixtures/bad/` is one
//! thing a user (or a crash, or a disk) can get wrong, run through the real
//! binary in a temp folder. See `tests/fixtures/bad/README.md` for the case
//! format.
//!
//! For each case this checks what a user relies on when something is wrong:
//! the documented exit code; a message that names the place (file, line,
//! field, row id, state file); no panic, backtrace or Rust debug text; and
//! that the failing command changed no file that was there before it ran
//! (the inputs, the spec, the output of an earlier run, the state) and wrote
//! nothing outside the state folder.
//!
//! Cases marked `expected_to_fail_until_merge` show a defect that is being
//! fixed elsewhere: they are skipped (and listed) unless
//! `BAD_INPUT_PENDING=1` is set, which runs them and reports which of them
//! now pass, so their flag can be removed.

use crate::common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// How long one command of a case may take before it counts as hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// What is wrong, in one line.
    about: String,
    /// File operations before the setup commands (generated inputs).
    #[serde(default)]
    prepare: Vec<Op>,
    /// Commands that build the situation (a plan, a finished job).
    #[serde(default)]
    setup: Vec<Step>,
    /// File operations after the setup (damage to the state, edited rows).
    #[serde(default)]
    damage: Vec<Op>,
    /// A command started before the checked one and left running while it runs.
    #[serde(default)]
    background: Option<Background>,
    /// The command under test.
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Send this signal to the command after `after_ms`.
    #[serde(default)]
    signal: Option<Signal>,
    /// The expected exit code...
    #[serde(default)]
    code: Option<i32>,
    /// ...the substrings the output (stderr, then stdout) must contain: the place...
    #[serde(default)]
    expect: Vec<String>,
    /// ...and those it must not contain (a secret, a wrong blame).
    #[serde(default)]
    reject: Vec<String>,
    /// ...or several (a defect the issue lets be fixed in more than one way).
    #[serde(default)]
    alternatives: Vec<Outcome>,
    /// Files (relative to the sandbox; a trailing `/` means everything under
    /// a folder) that may change although the command fails: what the
    /// `background` command writes, or a log the command appends to.
    #[serde(default)]
    may_change: Vec<String>,
    /// Why the case is skipped until a fix is merged; absent for live cases.
    #[serde(default)]
    expected_to_fail_until_merge: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Outcome {
    code: i32,
    /// Substrings the output (stderr, then stdout) must contain: the place.
    #[serde(default)]
    expect: Vec<String>,
    /// Substrings it must not contain (a secret, a wrong blame).
    #[serde(default)]
    reject: Vec<String>,
    /// Files (relative to the sandbox) and text each must contain afterwards.
    #[serde(default)]
    files: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    args: Vec<String>,
    #[serde(default)]
    code: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Background {
    args: Vec<String>,
    /// Start the command under test once this file exists.
    wait_for: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signal {
    after_ms: u64,
    /// INT or TERM.
    name: String,
    /// The command must end within this long after the signal.
    within_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum Op {
    /// Write `text` (repeated `repeat` times) after `head`.
    Write {
        path: String,
        #[serde(default)]
        head: String,
        #[serde(default)]
        text: String,
        #[serde(default = "one")]
        repeat: usize,
    },
    Append {
        path: String,
        text: String,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Remove {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Copy {
        from: String,
        to: String,
    },
    /// Set the state format version of a job's sled database.
    FormatVersion {
        job: String,
        version: u32,
    },
}

fn one() -> usize {
    1
}

fn fixtures() -> PathBuf {
    common::repo().join("tests/fixtures/bad")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "case.yaml" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn apply(op: &Op, dir: &Path) -> Result<(), String> {
    let p = |rel: &str| dir.join(rel);
    let res = match op {
        Op::Write {
            path,
            head,
            text,
            repeat,
        } => {
            if let Some(parent) = p(path).parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            let mut bytes = head.clone().into_bytes();
            for _ in 0..*repeat {
                bytes.extend_from_slice(text.as_bytes());
            }
            std::fs::write(p(path), bytes)
        }
        Op::Append { path, text } => {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(p(path))
                .and_then(|mut f| f.write_all(text.as_bytes()))
        }
        Op::Truncate { path, len } => std::fs::OpenOptions::new()
            .write(true)
            .open(p(path))
            .and_then(|f| f.set_len(*len)),
        Op::Remove { path } => {
            let target = p(path);
            if target.is_dir() {
                std::fs::remove_dir_all(target)
            } else {
                std::fs::remove_file(target)
            }
        }
        Op::Mkdir { path } => std::fs::create_dir_all(p(path)),
        Op::Copy { from, to } => copy_any(&p(from), &p(to)),
        Op::FormatVersion { job, version } => {
            set_format_version(&p(&format!("state/{job}/db")), *version)
        }
    };
    res.map_err(|e| format!("{op:?}: {e}"))
}

fn set_format_version(db: &Path, version: u32) -> std::io::Result<()> {
    let db = sled::open(db).map_err(std::io::Error::other)?;
    db.insert(b"format_version", &version.to_be_bytes())
        .map_err(std::io::Error::other)?;
    db.flush().map_err(std::io::Error::other)?;
    drop(db);
    // sled's threads release the file lock a moment after the drop.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

fn copy_any(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        if to.exists() {
            std::fs::remove_dir_all(to)?;
        }
        copy_tree(from, to);
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

struct Ran {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
    /// Time from the signal (if one was sent) to the end.
    after_signal: Option<Duration>,
}

fn command(dir: &Path, args: &[String], env: &BTreeMap<String, String>) -> Command {
    let mut cmd = common::bin();
    cmd.current_dir(dir).args(args).stdin(Stdio::null());
    for var in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "RUST_BACKTRACE",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(
    dir: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    signal: Option<&Signal>,
) -> Ran {
    let mut child = command(dir, args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start batchgrader");
    let pipes = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = (
        std::thread::spawn(move || drain(pipes.0)),
        std::thread::spawn(move || drain(pipes.1)),
    );
    let start = Instant::now();
    let mut signalled: Option<Instant> = None;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if let Some(sig) = signal
            && signalled.is_none()
            && start.elapsed() >= Duration::from_millis(sig.after_ms)
        {
            let n = match sig.name.as_str() {
                "INT" => libc::SIGINT,
                "TERM" => libc::SIGTERM,
                other => panic!("unknown signal {other}"),
            };
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, n) };
            signalled = Some(Instant::now());
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let after_signal = signalled.map(|t| t.elapsed());
    let stdout = readers.0.join().unwrap();
    let stderr = readers.1.join().unwrap();
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => Ran {
            code: s.code(),
            signal: s.signal(),
            stdout,
            stderr,
            after_signal,
        },
        None => Ran {
            code: None,
            signal: None,
            stdout,
            stderr: format!("{stderr}\n[timed out after {COMMAND_TIMEOUT:?}]"),
            after_signal,
        },
    }
}

fn drain(mut r: impl Read) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Every file under `dir` with the sha256 of its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, format!("{:x}", Sha256::digest(&bytes)));
            }
        }
    }
    out
}

/// Text that means a panic or a Rust value printed with `{:?}` reached the user.
fn leaked_internals(text: &str) -> Option<&'static str> {
    const SIGNS: &[&str] = &[
        "panicked at",
        "RUST_BACKTRACE",
        "stack backtrace",
        "Os { code",
        ", kind: ",
        "Custom {",
        "Error {",
        "Some(",
        "None)",
        "Ok(",
        "Err(",
        "Corruption {",
        "Unsupported(",
        "ReportableBug",
        "\\\"",
    ];
    SIGNS.iter().copied().find(|s| text.contains(s))
}

fn check(name: &str, case: &Case, dir: &Path) -> Result<(), String> {
    for op in &case.prepare {
        apply(op, dir)?;
    }
    for step in &case.setup {
        let ran = run(dir, &step.args, &case.env, None);
        if ran.code != Some(step.code) {
            return Err(format!(
                "setup `{}` exited {:?}, not {}:\n{}\n{}",
                step.args.join(" "),
                ran.code,
                step.code,
                ran.stderr,
                ran.stdout
            ));
        }
    }
    // Let sled's background threads of the setup close the database.
    if !case.setup.is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    for op in &case.damage {
        apply(op, dir)?;
    }
    let mut background: Option<Child> = None;
    if let Some(bg) = &case.background {
        let child = command(dir, &bg.args, &case.env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start background command");
        background = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dir.join(&bg.wait_for).exists() {
            if Instant::now() > deadline {
                kill(background.take());
                return Err(format!("background command never made {}", bg.wait_for));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let before = snapshot(dir);
    let ran = run(dir, &case.args, &case.env, case.signal.as_ref());
    kill(background.take());
    let after = snapshot(dir);

    let first = case.code.map(|code| Outcome {
        code,
        expect: case.expect.clone(),
        reject: case.reject.clone(),
        files: BTreeMap::new(),
    });
    let outcomes: Vec<&Outcome> = first.iter().chain(&case.alternatives).collect();
    if outcomes.is_empty() {
        return Err("the case names no outcome (`code:` or `alternatives:`)".into());
    }
    let text = format!("{}\n{}", ran.stderr, ran.stdout);
    let shown = format!(
        "`batchgrader {}` exited {:?} (signal {:?})\n--- stderr\n{}--- stdout\n{}",
        case.args.join(" "),
        ran.code,
        ran.signal,
        ran.stderr,
        ran.stdout
    );
    if ran.signal.is_some() || ran.code.is_none() {
        return Err(format!("killed or hung: {shown}"));
    }
    if let Some(sign) = leaked_internals(&text) {
        return Err(format!("internals reached the user ({sign:?}): {shown}"));
    }
    if let (Some(sig), Some(took)) = (&case.signal, ran.after_signal)
        && took > Duration::from_millis(sig.within_ms)
    {
        return Err(format!(
            "took {took:?} after SIG{} (at most {} ms): {shown}",
            sig.name, sig.within_ms
        ));
    }
    let mut misses = Vec::new();
    let mut matched = None;
    for o in &outcomes {
        let mut why = Vec::new();
        if ran.code != Some(o.code) {
            why.push(format!("exit code {:?} is not {}", ran.code, o.code));
        }
        for e in &o.expect {
            if !text.contains(e.as_str()) {
                why.push(format!("no {e:?} in the output"));
            }
        }
        for r in &o.reject {
            if text.contains(r.as_str()) {
                why.push(format!("{r:?} must not be in the output"));
            }
        }
        for (file, wants) in &o.files {
            let got = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            for w in wants {
                if !got.contains(w.as_str()) {
                    why.push(format!("no {w:?} in {file}:\n{got}"));
                }
            }
        }
        if why.is_empty() {
            matched = Some(*o);
            break;
        }
        misses.push(why.join("; "));
    }
    let Some(matched) = matched else {
        return Err(format!("{}: {shown}", misses.join(" | or | ")));
    };
    // Exit 1 and 2 are errors and say so; 3, 4 and 5 are outcomes with a summary.
    if matches!(matched.code, 1 | 2) && !ran.stderr.contains("error") {
        return Err(format!("a failure without an `error` line: {shown}"));
    }
    if matched.code != 0 {
        let mut changed = Vec::new();
        for (path, hash) in &before {
            let allowed = churns(path)
                || case.may_change.iter().any(|m| match m.strip_suffix('/') {
                    Some(dir) => path.starts_with(dir),
                    None => path == Path::new(m),
                });
            match after.get(path) {
                None if !allowed => changed.push(format!("{} was deleted", path.display())),
                None => {}
                Some(h) if h != hash && !allowed => {
                    changed.push(format!("{} was changed", path.display()))
                }
                _ => {}
            }
        }
        for path in after.keys() {
            if !before.contains_key(path) && !path.starts_with("state") {
                changed.push(format!("{} was written", path.display()));
            }
        }
        if !changed.is_empty() {
            return Err(format!(
                "the failing command touched files: {}\n{shown}",
                changed.join(", ")
            ));
        }
    }
    let _ = name;
    Ok(())
}

/// Files that any command opening a job rewrites without changing what the
/// state says: sled rewrites its log and rotates its snapshot on open, and
/// `lock` holds the pid of the last process that held it. Damage to the
/// database is caught by what the commands report, not by its bytes.
fn churns(path: &Path) -> bool {
    let parts: Vec<_> = path.components().map(|c| c.as_os_str()).collect();
    matches!(parts.as_slice(), [s, _job, rest @ ..]
        if *s == "state" && matches!(rest.first(), Some(f) if *f == "db" || (*f == "lock" && rest.len() == 1)))
}

fn kill(child: Option<Child>) {
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn load_cases() -> Vec<(String, Case)> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().unwrap().is_dir() || name.starts_with('_') {
            continue;
        }
        let file = entry.path().join("case.yaml");
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Through JSON values: serde_yaml wants `!tag` syntax for enums,
        // serde_json takes the plainer `op: {...}` maps.
        let case: Case = serde_yaml::from_str::<serde_json::Value>(&text)
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        cases.push((name, case));
    }
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

#[test]
fn bad_input_corpus() {
    let cases = load_cases();
    assert!(
        cases.len() >= 80,
        "the corpus has {} cases; it needs at least 80",
        cases.len()
    );
    let run_pending = std::env::var("BAD_INPUT_PENDING").is_ok_and(|v| v == "1");
    let only = std::env::var("BAD_INPUT_ONLY").ok();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let skipped = Mutex::new(Vec::new());
    let now_pass = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((name, case)) = cases.get(i) else {
                        break;
                    };
                    if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
                        continue;
                    }
                    if let Some(why) = &case.expected_to_fail_until_merge
                        && !run_pending
                    {
                        skipped.lock().unwrap().push(format!("{name}: {why}"));
                        continue;
                    }
                    let sandbox = tempfile::tempdir().unwrap();
                    copy_tree(&fixtures().join("_base"), sandbox.path());
                    copy_tree(&fixtures().join(name), sandbox.path());
                    let result = check(name, case, sandbox.path());
                    match (result, &case.expected_to_fail_until_merge) {
                        (Ok(()), Some(_)) => now_pass.lock().unwrap().push(name.clone()),
                        (Ok(()), None) => {}
                        (Err(e), pending) => failures.lock().unwrap().push(format!(
                            "{}{name} ({}):\n{e}",
                            if pending.is_some() { "[pending] " } else { "" },
                            case.about
                        )),
                    }
                }
            });
        }
    });
    let skipped = skipped.into_inner().unwrap();
    if !skipped.is_empty() {
        eprintln!(
            "skipped {} case(s) marked expected_to_fail_until_merge (BAD_INPUT_PENDING=1 runs them):",
            skipped.len()
        );
        for s in &skipped {
            eprintln!("  {s}");
        }
    }
    let now_pass = now_pass.into_inner().unwrap();
    if !now_pass.is_empty() {
        eprintln!(
            "pending cases that now pass (remove their expected_to_fail_until_merge): {}",
            now_pass.join(", ")
        );
    }
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    let live: Vec<&String> = failures
        .iter()
        .filter(|f| !f.starts_with("[pending]"))
        .collect();
    for f in &failures {
        eprintln!("\n{f}");
    }
    assert!(
        live.is_empty(),
        "{} bad-input case(s) failed (see above)",
        live.len()
    );
}
