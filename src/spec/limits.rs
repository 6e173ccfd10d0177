//! The most a file a spec names may hold: the spec itself, its answer
//! schema, its prompt files. Each is a regular file read up to a cap, and
//! the spec and schema are refused when nested deeper than anyone writes,
//! before a parser spends its time (or its stack) on them.

use std::io::Read;
use std::path::Path;

/// The spec file and a schema file: a rubric of hundreds of properties is
/// a few tens of KB.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;
/// A system prompt or examples file: more than any model's context holds.
pub const MAX_PROMPT_BYTES: u64 = 8 << 20;
/// Brackets inside brackets: OpenAI's strict mode takes 10 levels of
/// objects; a spec needs a handful.
pub const MAX_DEPTH: usize = 100;

/// The text of `path`, a regular file of at most `cap` bytes (a device, a
/// pipe or a folder is refused by name, before anything is read). A UTF-8
/// byte order mark, as Windows editors write, is dropped.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other(
            "it is not a regular file (a folder, a device or a pipe)",
        ));
    }
    if meta.len() > cap {
        return Err(too_large(meta.len(), cap));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(cap + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        // It grew while being read.
        return Err(too_large(bytes.len() as u64, cap));
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| std::io::Error::other(format!("it is not UTF-8 text ({e})")))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

fn too_large(len: u64, cap: u64) -> std::io::Error {
    std::io::Error::other(format!(
        "it is {} bytes, more than the {} bytes such a file may be",
        len, cap
    ))
}

/// Why `text` (YAML or JSON) is nested too deep to read, if it is: the
/// depth of `{`/`[` inside each other outside quoted strings, and the line
/// where it passes [`MAX_DEPTH`].
pub fn too_deep(text: &str) -> Option<(usize, String)> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '{' | '[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Some((
                            line,
                            format!(
                                "nested more than {MAX_DEPTH} levels deep; nothing batchgrader reads needs that"
                            ),
                        ));
                    }
                }
                '}' | ']' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_table() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let just = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let quoted = format!("a: \"{}\"\nb: '{}'", "[".repeat(500), "{".repeat(500));
        let cases = [
            (deep.as_str(), Some(1)),
            (just.as_str(), None),
            (quoted.as_str(), None),
            ("a: {b: [1, {c: 2}]}\n", None),
            ("a: \"\\\"[[[\"\n", None),
        ];
        for (text, line) in cases {
            assert_eq!(too_deep(text).map(|(l, _)| l), line, "{text:.40}");
        }
    }

    #[test]
    fn only_regular_files_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.yaml");
        std::fs::write(&ok, "\u{feff}version: 1\n").unwrap();
        assert_eq!(read_capped(&ok, 100).unwrap(), "version: 1\n");
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, "x".repeat(101)).unwrap();
        let e = read_capped(&big, 100).unwrap_err().to_string();
        assert!(e.contains("101 bytes, more than the 100"), "{e}");
        let e = read_capped(dir.path(), 100).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        #[cfg(unix)]
        {
            let e = read_capped(Path::new("/dev/zero"), 100)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
    }
}
