//! Files a command must never write over. The output (`output.path`, or
//! `export --out`) is refused, before any work, when it is one of the job's
//! inputs, the spec or a file the spec reads (prompt, examples, prices), or
//! lies inside the state folder. People hand this tool files they cannot
//! make again; `./in.csv`, a symlink to it or a hard link of it are all the
//! same file.
//!
//! The decision is a pure function over resolved paths ([`clash`]); reading
//! the file system to resolve them ([`resolve`]) stays at the edge.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::CheckedSpec;

/// A path as the file system sees it: symlinks and `..` resolved as far as
/// the path exists, and the file's identity (device, inode) when it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub path: PathBuf,
    pub inode: Option<(u64, u64)>,
}

/// A file the output must not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    /// What it is to the job, as the user named it (`input.path`, `the spec`).
    pub role: String,
    /// The path as the user gave it, for the message.
    pub shown: PathBuf,
    pub resolved: Resolved,
}

/// Why an output path is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clash {
    /// The output is this guarded file.
    Is(usize),
    /// The output lies inside the state folder.
    InState,
}

/// The same file: by device and inode when both exist, else by resolved path.
fn same(a: &Resolved, b: &Resolved) -> bool {
    match (a.inode, b.inode) {
        (Some(x), Some(y)) => x == y,
        _ => a.path == b.path,
    }
}

/// Whether `a` and `b` name the same file (links and spellings followed).
pub fn same_file(a: &Path, b: &Path) -> bool {
    same(&resolve(a), &resolve(b))
}

/// Whether writing `out` would destroy a guarded file or write into the
/// state folder.
pub fn clash(out: &Resolved, guarded: &[Guarded], state_root: &Resolved) -> Option<Clash> {
    if let Some(i) = guarded.iter().position(|g| same(out, &g.resolved)) {
        return Some(Clash::Is(i));
    }
    if out.path.starts_with(&state_root.path) {
        return Some(Clash::InState);
    }
    None
}

/// Resolve `path` against the file system: the longest part that exists is
/// canonicalized (symlinks followed), the rest is appended as written with
/// `.` and `..` folded. Never fails: an unreadable path stays as written.
pub fn resolve(path: &Path) -> Resolved {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut existing = absolute.as_path();
    let mut rest: Vec<Component> = Vec::new();
    let base = loop {
        if let Ok(c) = std::fs::canonicalize(existing) {
            break c;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => break existing.to_path_buf(),
        }
    };
    let mut out = base;
    for c in rest.into_iter().rev() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    let inode = inode_of(&out);
    Resolved { path: out, inode }
}

#[cfg(unix)]
fn inode_of(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn inode_of(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// The files of `spec` that no output may replace.
pub fn guarded_files(spec: &CheckedSpec, pricing: Option<&Path>) -> Vec<Guarded> {
    let mut out = Vec::new();
    let mut add = |role: &str, p: &Path| {
        out.push(Guarded {
            role: role.to_string(),
            shown: p.to_path_buf(),
            resolved: resolve(p),
        });
    };
    for p in &spec.inputs {
        add("an input of the job (input.path)", p);
    }
    add("the job's spec", &spec.file);
    if let Some(p) = &spec.system_file {
        add("the system prompt (prompt.system_file)", p);
    }
    if let Some(p) = &spec.examples_file {
        add("the examples file (prompt.examples_file)", p);
    }
    if let Some(p) = pricing {
        add("the price table (--pricing)", p);
    }
    // The table a command without --pricing reads, whether or not this one
    // was given another: overwritten, every later plan fails on it.
    let local = Path::new(crate::cost::LOCAL_PRICING);
    if local.is_file() {
        add("the price table (config/pricing.csv)", local);
    }
    out
}

/// Where the output path came from, for the message.
#[derive(Debug, Clone, Copy)]
pub enum OutputFrom<'a> {
    /// `output.path` of this spec file.
    Spec(&'a Path),
    /// A command-line flag such as `--out`.
    Flag(&'static str),
}

/// Refuse to write `out` when it would replace a file of the job or land in
/// the state folder `state_root`.
pub fn check_output(
    out: &Path,
    from: OutputFrom<'_>,
    spec: &CheckedSpec,
    pricing: Option<&Path>,
    state_root: &Path,
) -> Result<()> {
    let guarded = guarded_files(spec, pricing);
    let Some(c) = clash(&resolve(out), &guarded, &resolve(state_root)) else {
        return Ok(());
    };
    let what = match from {
        OutputFrom::Spec(file) => format!("{}: output.path: {}", file.display(), out.display()),
        OutputFrom::Flag(flag) => format!("{flag} {}", out.display()),
    };
    let why = match c {
        Clash::Is(i) if guarded[i].shown == out => format!(
            "is {}; writing the output there would destroy it",
            guarded[i].role
        ),
        Clash::Is(i) => format!(
            "is {} ({}); writing the output there would destroy it",
            guarded[i].role,
            guarded[i].shown.display()
        ),
        Clash::InState => format!(
            "is inside the state folder {}, which batchgrader owns",
            state_root.display()
        ),
    };
    let fix = match from {
        OutputFrom::Spec(_) => "choose another output.path",
        OutputFrom::Flag(_) => "choose another file to write",
    };
    Err(Error::usage_with_hint(
        format!("{what} {why}"),
        format!(
            "{fix}, for example {}",
            suggestion(out, c == Clash::InState)
        ),
    ))
}

/// `in.csv` → `in.graded.csv`, beside the original (or in the current
/// folder when the original is in the state folder); an extension that is
/// no output format becomes `.csv`.
fn suggestion(out: &Path, elsewhere: bool) -> String {
    let stem = out
        .file_stem()
        .map_or("output".into(), |s| s.to_string_lossy().into_owned());
    let ext = match crate::spec::Format::from_path(out) {
        Some(_) => out
            .extension()
            .map_or("csv".into(), |s| s.to_string_lossy().into_owned()),
        None => "csv".into(),
    };
    let name = format!("{stem}.graded.{ext}");
    match out
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !elsewhere)
    {
        Some(dir) => dir.join(name).display().to_string(),
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(path: &str, inode: Option<(u64, u64)>) -> Resolved {
        Resolved {
            path: PathBuf::from(path),
            inode,
        }
    }

    fn g(path: &str, inode: Option<(u64, u64)>) -> Guarded {
        Guarded {
            role: "input".into(),
            shown: PathBuf::from(path),
            resolved: r(path, inode),
        }
    }

    #[test]
    fn clashes() {
        let guarded = [
            g("/w/in.csv", Some((1, 10))),
            g("/w/spec.yaml", Some((1, 11))),
        ];
        let state = r("/w/state", Some((1, 2)));
        let cases: [(&str, Resolved, Option<Clash>); 7] = [
            (
                "same path",
                r("/w/in.csv", Some((1, 10))),
                Some(Clash::Is(0)),
            ),
            (
                "the spec",
                r("/w/spec.yaml", Some((1, 11))),
                Some(Clash::Is(1)),
            ),
            (
                "a hard link: another name, the same inode",
                r("/w/link.csv", Some((1, 10))),
                Some(Clash::Is(0)),
            ),
            ("a new file", r("/w/out.csv", None), None),
            (
                "an existing other file",
                r("/w/in.csv.bak", Some((1, 12))),
                None,
            ),
            (
                "inside the state folder",
                r("/w/state/job/out.csv", None),
                Some(Clash::InState),
            ),
            (
                "a sibling named like the state folder",
                r("/w/state-out.csv", None),
                None,
            ),
        ];
        for (name, out, want) in cases {
            assert_eq!(clash(&out, &guarded, &state), want, "{name}");
        }
    }

    #[test]
    fn resolve_folds_dots_and_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::write(base.join("in.csv"), "a\n1\n").unwrap();
        let a = resolve(&base.join("./sub/../in.csv"));
        let b = resolve(&base.join("in.csv"));
        assert_eq!(a, b);
        assert!(b.inode.is_some());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(base.join("in.csv"), base.join("ln.csv")).unwrap();
            assert_eq!(resolve(&base.join("ln.csv")).path, base.join("in.csv"));
        }
        let new = resolve(&base.join("new/../x/out.csv"));
        assert_eq!(new.path, base.join("x/out.csv"));
        assert_eq!(new.inode, None);
    }

    #[test]
    fn suggestions_keep_the_folder_and_extension() {
        let cases = [
            ("in.csv", false, "in.graded.csv"),
            ("d/x.jsonl", false, "d/x.graded.jsonl"),
            ("spec.yaml", false, "spec.graded.csv"),
            ("state/job/x.json", true, "x.graded.json"),
        ];
        for (out, elsewhere, want) in cases {
            assert_eq!(suggestion(Path::new(out), elsewhere), want, "{out}");
        }
    }
}
