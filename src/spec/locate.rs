//! Maps a field path (`chunking.max_requests`, `input.path[1]`) back to a
//! line and column in the YAML text.
//!
//! serde_yaml keeps no positions on its values and the JSON Schema validator
//! reports JSON pointers, so this is a small line scanner over the block and
//! flow styles that job specs use. It never fails: a path it cannot place
//! falls back to its nearest placed ancestor, then to the top of the file.

use std::collections::HashMap;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Dotted rendering used in messages: `input.path[1]`, `(root)` for the top.
pub fn dotted(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    if s.is_empty() { "(root)".into() } else { s }
}

/// Parse a JSON pointer (`/chunking/max_requests`) into segments. Numeric
/// segments become indices; job specs have no numeric mapping keys.
pub fn from_pointer(pointer: &str) -> Vec<Seg> {
    pointer
        .split('/')
        .skip(1)
        .map(|raw| {
            let s = raw.replace("~1", "/").replace("~0", "~");
            match s.parse::<usize>() {
                Ok(i) => Seg::Index(i),
                Err(_) => Seg::Key(s),
            }
        })
        .collect()
}

/// Positions (1-based line, 1-based column) of every key and sequence item
/// the scanner could place, keyed by pointer-like path.
pub struct Locator {
    positions: HashMap<String, (usize, usize)>,
}

fn key_of(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        s.push('/');
        match seg {
            Seg::Key(k) => s.push_str(k),
            Seg::Index(i) => s.push_str(&i.to_string()),
        }
    }
    s
}

struct Frame {
    indent: usize,
    path: Vec<Seg>,
    seq: bool,
    next: usize,
}

impl Locator {
    pub fn new(text: &str) -> Self {
        let mut positions = HashMap::new();
        let mut stack: Vec<Frame> = vec![Frame {
            indent: 0,
            path: vec![],
            seq: false,
            next: 0,
        }];
        // A key whose value starts on a later line: (key indent, key path).
        let mut pending: Option<(usize, Vec<Seg>)> = None;
        // Inside a `|` or `>` block scalar: lines deeper than this are text.
        let mut block_scalar: Option<usize> = None;

        for (lineno, raw_line) in text.lines().enumerate() {
            let line_no = lineno + 1;
            let indent = raw_line.len() - raw_line.trim_start_matches(' ').len();
            let content = strip_comment(&raw_line[indent..]);
            if let Some(bi) = block_scalar {
                if content.trim().is_empty() || indent > bi {
                    continue;
                }
                block_scalar = None;
            }
            if content.trim().is_empty() || content.starts_with("---") || content.starts_with("...")
            {
                continue;
            }
            let content = content.trim_end();
            let is_item = content == "-" || content.starts_with("- ");
            if let Some((ki, p)) = pending.take()
                && (indent > ki || (indent == ki && is_item))
            {
                stack.push(Frame {
                    indent,
                    path: p,
                    seq: is_item,
                    next: 0,
                });
            }
            while stack.len() > 1 {
                let top = stack.last().expect("stack is never empty");
                if top.indent > indent || (top.indent == indent && top.seq && !is_item) {
                    stack.pop();
                } else {
                    break;
                }
            }
            let mut col = indent;
            let mut rest = content;
            let top = stack.last_mut().expect("stack is never empty");
            if top.seq && is_item {
                let mut path = top.path.clone();
                path.push(Seg::Index(top.next));
                top.next += 1;
                positions.insert(key_of(&path), (line_no, col + 1));
                let after = rest[1..].trim_start();
                col += rest.len() - after.len();
                rest = after;
                if rest.is_empty() {
                    pending = Some((indent, path));
                    continue;
                }
                if split_key(rest).is_some() {
                    stack.push(Frame {
                        indent: col,
                        path: path.clone(),
                        seq: false,
                        next: 0,
                    });
                } else {
                    if rest.starts_with('{') || rest.starts_with('[') {
                        scan_flow(rest, col, line_no, &path, &mut positions);
                    }
                    continue;
                }
            }
            let top = stack.last().expect("stack is never empty");
            let parent = top.path.clone();
            if let Some((key, value_off)) = split_key(rest) {
                let mut path = parent;
                path.push(Seg::Key(key));
                positions.insert(key_of(&path), (line_no, col + 1));
                let value = rest[value_off..].trim();
                let value_col = col + rest.len() - rest[value_off..].trim_start().len();
                if value.is_empty() {
                    pending = Some((col, path));
                } else if value.starts_with('|') || value.starts_with('>') {
                    block_scalar = Some(col);
                } else if value.starts_with('{') || value.starts_with('[') {
                    scan_flow(value, value_col, line_no, &path, &mut positions);
                }
            }
        }
        Locator { positions }
    }

    /// The position of `path`, or of its nearest placed ancestor.
    pub fn locate(&self, path: &[Seg]) -> (usize, usize) {
        for len in (0..=path.len()).rev() {
            if let Some(pos) = self.positions.get(&key_of(&path[..len])) {
                return *pos;
            }
        }
        (1, 1)
    }

    /// Whether `path` itself (not an ancestor) was placed.
    #[cfg(test)]
    pub fn contains(&self, path: &[Seg]) -> bool {
        self.positions.contains_key(&key_of(path))
    }
}

/// Drop a trailing `# comment` that is outside quotes.
fn strip_comment(s: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev_space => return &s[..i],
            None => {}
        }
        prev_space = c == ' ' || c == '\t';
    }
    s
}

/// `key: value` → (key, offset of the value). Handles quoted keys.
fn split_key(s: &str) -> Option<(String, usize)> {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return None;
    }
    if bytes[0] == b'"' || bytes[0] == b'\'' {
        let q = bytes[0] as char;
        let end = s[1..].find(q)? + 1;
        let after = &s[end + 1..];
        let after_trim = after.trim_start();
        if !after_trim.starts_with(':') {
            return None;
        }
        let colon = end + 1 + (after.len() - after_trim.len());
        return Some((s[1..end].to_string(), colon + 1));
    }
    if matches!(bytes[0], b'{' | b'[' | b'|' | b'>') {
        return None;
    }
    let mut idx = 0;
    while let Some(pos) = s[idx..].find(':') {
        let at = idx + pos;
        let next = s[at + 1..].chars().next();
        if next.is_none() || next == Some(' ') || next == Some('\t') {
            return Some((s[..at].trim_end().to_string(), at + 1));
        }
        idx = at + 1;
    }
    None
}

/// Record positions inside a one-line flow collection (`{ a: 1, b: [x, y] }`).
fn scan_flow(
    s: &str,
    col0: usize,
    line: usize,
    base: &[Seg],
    out: &mut HashMap<String, (usize, usize)>,
) {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut i = 0;
    flow_value(&chars, &mut i, col0, line, base.to_vec(), out);
}

fn flow_value(
    chars: &[(usize, char)],
    i: &mut usize,
    col0: usize,
    line: usize,
    path: Vec<Seg>,
    out: &mut HashMap<String, (usize, usize)>,
) {
    skip_ws(chars, i);
    let Some(&(_, c)) = chars.get(*i) else { return };
    match c {
        '{' => {
            *i += 1;
            loop {
                skip_ws(chars, i);
                match chars.get(*i) {
                    None => return,
                    Some(&(_, '}')) => {
                        *i += 1;
                        return;
                    }
                    Some(&(_, ',')) => {
                        *i += 1;
                        continue;
                    }
                    Some(&(off, _)) => {
                        let key = flow_scalar(chars, i, true);
                        let mut p = path.clone();
                        p.push(Seg::Key(key));
                        out.insert(key_of(&p), (line, col0 + off + 1));
                        skip_ws(chars, i);
                        if let Some(&(_, ':')) = chars.get(*i) {
                            *i += 1;
                            flow_value(chars, i, col0, line, p, out);
                        }
                    }
                }
            }
        }
        '[' => {
            *i += 1;
            let mut idx = 0;
            loop {
                skip_ws(chars, i);
                match chars.get(*i) {
                    None => return,
                    Some(&(_, ']')) => {
                        *i += 1;
                        return;
                    }
                    Some(&(_, ',')) => {
                        *i += 1;
                        continue;
                    }
                    Some(&(off, _)) => {
                        let mut p = path.clone();
                        p.push(Seg::Index(idx));
                        out.insert(key_of(&p), (line, col0 + off + 1));
                        idx += 1;
                        flow_value(chars, i, col0, line, p, out);
                    }
                }
            }
        }
        _ => {
            flow_scalar(chars, i, false);
        }
    }
}

fn skip_ws(chars: &[(usize, char)], i: &mut usize) {
    while let Some(&(_, c)) = chars.get(*i) {
        if c == ' ' || c == '\t' {
            *i += 1;
        } else {
            break;
        }
    }
}

fn flow_scalar(chars: &[(usize, char)], i: &mut usize, is_key: bool) -> String {
    let mut out = String::new();
    if let Some(&(_, q)) = chars.get(*i)
        && (q == '"' || q == '\'')
    {
        *i += 1;
        while let Some(&(_, c)) = chars.get(*i) {
            *i += 1;
            if c == q {
                break;
            }
            out.push(c);
        }
        return out;
    }
    while let Some(&(_, c)) = chars.get(*i) {
        if c == ',' || c == '}' || c == ']' || (is_key && c == ':') {
            break;
        }
        out.push(c);
        *i += 1;
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Seg> {
        from_pointer(s)
    }

    const SPEC: &str = r#"# a comment
version: 1
name: essays   # trailing comment
provider:
  kind: openai
input:
  path:
    - a.csv
    - b.csv
  id: essay_id
prompt:
  system: |
    You grade.
    key: not a key
  user: "Grade {{ essay }}"
list_same_indent:
- x: 1
  y: 2
- z: 3
poll: { interval: 30s, max_interval: [1, 2] }
"quoted key": 4
chunking:
  max_requests: 10
"#;

    #[test]
    fn places_block_and_flow_paths() {
        let loc = Locator::new(SPEC);
        let cases: &[(&str, (usize, usize))] = &[
            ("/version", (2, 1)),
            ("/name", (3, 1)),
            ("/provider/kind", (5, 3)),
            ("/input/path", (7, 3)),
            ("/input/path/0", (8, 5)),
            ("/input/path/1", (9, 5)),
            ("/input/id", (10, 3)),
            ("/prompt/system", (12, 3)),
            ("/prompt/user", (15, 3)),
            ("/list_same_indent/0", (17, 1)),
            ("/list_same_indent/0/x", (17, 3)),
            ("/list_same_indent/0/y", (18, 3)),
            ("/list_same_indent/1/z", (19, 3)),
            ("/poll", (20, 1)),
            ("/poll/interval", (20, 9)),
            ("/poll/max_interval", (20, 24)),
            ("/poll/max_interval/1", (20, 42)),
            ("/quoted key", (21, 1)),
            ("/chunking/max_requests", (23, 3)),
            // Not present: nearest ancestor, then the top.
            ("/chunking/max_bytes", (22, 1)),
            ("/nothing/here", (1, 1)),
        ];
        for (ptr, want) in cases {
            assert_eq!(loc.locate(&p(ptr)), *want, "{ptr}");
        }
        // The text inside the block scalar is not a key.
        assert!(!loc.contains(&p("/prompt/key")));
    }

    #[test]
    fn dotted_paths() {
        assert_eq!(dotted(&p("/input/path/1")), "input.path[1]");
        assert_eq!(dotted(&p("")), "(root)");
        assert_eq!(dotted(&p("/a~1b")), "a/b");
    }
}
