//! Prompts and request bodies: the system prompt (with its examples), the
//! `{{ column }}` user template, and the Chat Completions body for a row.
//!
//! Bodies are built as text from a pre-rendered prefix and suffix around the
//! one part that changes per row, the user message. That keeps every body
//! byte-for-byte deterministic (the fingerprint depends on it) and cheap.

use std::borrow::Cow;
use std::path::PathBuf;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::spec::CheckedSpec;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: prompt.user: {message}", spec.display())]
    Syntax { spec: PathBuf, message: String },
    #[error("{}: prompt.user: placeholder {{{{ {name} }}}} has no column in {place}; the columns are: {}", spec.display(), columns.join(", "))]
    MissingColumn {
        spec: PathBuf,
        name: String,
        place: String,
        columns: Vec<String>,
    },
}

impl PromptError {
    pub fn hint(&self) -> Option<String> {
        match self {
            PromptError::MissingColumn { .. } => Some(
                "fix the placeholder in `prompt.user`, or the column name in the input header"
                    .into(),
            ),
            PromptError::Syntax { .. } => Some(
                "placeholders look like {{ column }}; column names cannot contain braces".into(),
            ),
            PromptError::Read { .. } => {
                Some("paths in a spec are relative to the spec file".into())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Var(String),
}

/// A parsed user template.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!(
                    "`{{{{` at byte {} is never closed with `}}}}`",
                    text.len() - rest.len() + open
                )
            })?;
            let name = after[..close].trim();
            if name.is_empty() || name.contains('{') {
                return Err(format!(
                    "`{{{{{}}}}}` is not a placeholder",
                    &after[..close]
                ));
            }
            parts.push(Part::Var(name.to_string()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Placeholder names in order of first use.
    pub fn placeholders(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.parts {
            if let Part::Var(v) = p
                && !out.contains(&v.as_str())
            {
                out.push(v);
            }
        }
        out
    }

    /// Fill the template; `Err(name)` names the first placeholder `lookup` lacks.
    pub fn render<'a>(
        &self,
        lookup: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Cow<'a, str>, String> {
        let cell = |v: &String| lookup(v).ok_or_else(|| v.clone());
        // The usual template is one cell: it is used as it is, not copied.
        if let [Part::Var(v)] = &self.parts[..] {
            return cell(v).map(Cow::Borrowed);
        }
        let mut len = 0;
        for p in &self.parts {
            len += match p {
                Part::Lit(s) => s.len(),
                Part::Var(v) => cell(v)?.len(),
            };
        }
        let mut out = String::with_capacity(len);
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => out.push_str(cell(v)?),
            }
        }
        Ok(Cow::Owned(out))
    }
}

/// Everything needed to turn a row into a request.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// System prompt with the examples appended, if any.
    pub system: Option<String>,
    pub user: Template,
    /// Raw template text, part of the plan hash.
    pub user_text: String,
}

impl Prompt {
    pub fn load(spec: &CheckedSpec) -> Result<Prompt, PromptError> {
        let read = |what, path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| PromptError::Read {
                what,
                path: path.clone(),
                source,
            })
        };
        let mut system = match &spec.system_file {
            Some(p) => Some(read("prompt.system_file", p)?),
            None => spec.spec.prompt.system.clone(),
        };
        if let Some(p) = &spec.examples_file {
            let examples = read("prompt.examples_file", p)?;
            system = Some(match system {
                Some(s) => format!("{}\n\n{}", s.trim_end(), examples.trim_end()),
                None => examples.trim_end().to_string(),
            });
        }
        let user =
            Template::parse(&spec.spec.prompt.user).map_err(|message| PromptError::Syntax {
                spec: spec.file.clone(),
                message,
            })?;
        Ok(Prompt {
            system,
            user,
            user_text: spec.spec.prompt.user.clone(),
        })
    }
}

/// Builds Chat Completions bodies: `model`, `messages`, then the spec's
/// `request` parameters in the order written.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    prefix: String,
    suffix: String,
    /// SHA-256 fed `prefix`: every body starts with it, and it holds the
    /// system message, which may be a long rubric with examples that would
    /// otherwise be hashed again for every row.
    prefix_hash: Sha256,
}

/// The endpoint every request line targets (a macro, for `concat!`).
macro_rules! chat_url {
    () => {
        "/v1/chat/completions"
    };
}
pub const CHAT_URL: &str = chat_url!();

impl RequestBuilder {
    pub fn new(model: &str, system: Option<&str>, params: &Map<String, Value>) -> Self {
        let mut prefix = String::from("{\"model\":");
        prefix.push_str(&json_str(model));
        prefix.push_str(",\"messages\":[");
        if let Some(s) = system {
            prefix.push_str("{\"role\":\"system\",\"content\":");
            prefix.push_str(&json_str(s));
            prefix.push_str("},");
        }
        prefix.push_str("{\"role\":\"user\",\"content\":");
        let mut suffix = String::from("}]");
        for (k, v) in params {
            suffix.push(',');
            suffix.push_str(&json_str(k));
            suffix.push(':');
            suffix.push_str(&v.to_string());
        }
        suffix.push('}');
        let prefix_hash = Sha256::new_with_prefix(prefix.as_bytes());
        RequestBuilder {
            prefix,
            suffix,
            prefix_hash,
        }
    }

    /// `crate::plan::fingerprint(body)`, without hashing the part every
    /// body of this builder starts with again.
    pub fn fingerprint(&self, body: &str) -> String {
        let digest = match body.strip_prefix(self.prefix.as_str()) {
            Some(rest) => self.prefix_hash.clone().chain_update(rest).finalize(),
            None => Sha256::digest(body),
        };
        crate::hex::lower(&digest[..16])
    }

    /// The JSON body for one user message.
    pub fn body(&self, user: &str) -> String {
        let mut out = Vec::with_capacity(self.prefix.len() + user.len() + self.suffix.len() + 16);
        self.write_body(&mut out, user);
        String::from_utf8(out).expect("JSON made of strings is UTF-8")
    }

    /// `batch_line(custom_id, &self.body(user))` in one buffer, and where
    /// in it the body is. `plan` makes one per row: built in pieces, the
    /// escaped text, the body and the line were each a copy of the row's
    /// text, and larger than the allocator's per-thread cache serves.
    pub fn line(&self, custom_id: &str, user: &str) -> (String, std::ops::Range<usize>) {
        let mut out = Vec::with_capacity(
            LINE_HEAD.len()
                + custom_id.len()
                + LINE_MIDDLE.len()
                + self.prefix.len()
                + user.len()
                + user.len() / 8
                + self.suffix.len()
                + 8,
        );
        out.extend_from_slice(LINE_HEAD.as_bytes());
        write_json_str(&mut out, custom_id);
        out.extend_from_slice(LINE_MIDDLE.as_bytes());
        let start = out.len();
        self.write_body(&mut out, user);
        let end = out.len();
        out.push(b'}');
        let line = String::from_utf8(out).expect("JSON made of strings is UTF-8");
        (line, start..end)
    }

    fn write_body(&self, out: &mut Vec<u8>, user: &str) {
        out.extend_from_slice(self.prefix.as_bytes());
        write_json_str(out, user);
        out.extend_from_slice(self.suffix.as_bytes());
    }
}

/// A batch line is `LINE_HEAD` custom_id `LINE_MIDDLE` body `}`.
const LINE_HEAD: &str = "{\"custom_id\":";
const LINE_MIDDLE: &str = concat!(
    ",\"method\":\"POST\",\"url\":\"",
    chat_url!(),
    "\",\"body\":"
);

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("a string always serializes");
}

/// One line of a batch input file, without the trailing newline.
pub fn batch_line(custom_id: &str, body: &str) -> String {
    let mut out =
        Vec::with_capacity(LINE_HEAD.len() + custom_id.len() + LINE_MIDDLE.len() + body.len() + 8);
    out.extend_from_slice(LINE_HEAD.as_bytes());
    write_json_str(&mut out, custom_id);
    out.extend_from_slice(LINE_MIDDLE.as_bytes());
    out.extend_from_slice(body.as_bytes());
    out.push(b'}');
    String::from_utf8(out).expect("JSON made of strings is UTF-8")
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_and_renders() {
        let t = Template::parse("Grade:\n{{ essay }} by {{author}} ({{ essay }})").unwrap();
        assert_eq!(t.placeholders(), vec!["essay", "author"]);
        let out = t
            .render(|k| match k {
                "essay" => Some("E"),
                "author" => Some("A"),
                _ => None,
            })
            .unwrap();
        assert_eq!(out, "Grade:\nE by A (E)");
        assert_eq!(t.render(|_| None).unwrap_err(), "essay");
    }

    #[test]
    fn template_errors() {
        assert!(Template::parse("{{ open").is_err());
        assert!(Template::parse("{{ }}").is_err());
        assert!(
            Template::parse("plain text, no braces")
                .unwrap()
                .placeholders()
                .is_empty()
        );
    }

    #[test]
    fn a_line_built_at_once_is_the_line_built_in_pieces() {
        let mut params = Map::new();
        params.insert("max_tokens".into(), Value::from(4));
        let builders = [
            RequestBuilder::new("gpt-4o-mini", None, &Map::new()),
            RequestBuilder::new("m", Some("Be \"strict\".\n"), &params),
        ];
        let users = [
            "",
            "plain",
            "quotes \" and \\ back\tslash\r\n",
            "\u{0}\u{1f}\u{7f} controls",
            "Größe 東京 😀 \u{2028}",
            &"x\"".repeat(5000),
        ];
        for b in &builders {
            for (i, user) in users.iter().enumerate() {
                let id = format!("r{i}\"");
                let (line, body) = b.line(&id, user);
                assert_eq!(line[body.clone()], b.body(user), "{user:?}");
                assert_eq!(
                    b.fingerprint(&line[body.clone()]),
                    crate::plan::fingerprint(&b.body(user))
                );
                assert_eq!(line, batch_line(&id, &b.body(user)), "{user:?}");
                let v: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["custom_id"], id.as_str());
                assert_eq!(v["url"], CHAT_URL);
                assert_eq!(
                    v["body"]["messages"].as_array().unwrap().last().unwrap()["content"],
                    *user
                );
            }
        }
    }

    #[test]
    fn fingerprints_with_the_hashed_prefix_are_plain_fingerprints() {
        let long_rubric = "Score 1 to 5. Examples: ".repeat(200);
        for system in [None, Some("short"), Some(long_rubric.as_str())] {
            let b = RequestBuilder::new("gpt-4o-mini", system, &Map::new());
            let bodies = [
                b.body(""),
                b.body("an essay"),
                // Not one of this builder's bodies: hashed in full.
                "{}".to_string(),
                String::new(),
                b.body("x")[..10].to_string(),
            ];
            for body in &bodies {
                assert_eq!(
                    b.fingerprint(body),
                    crate::plan::fingerprint(body),
                    "{body:?}"
                );
            }
        }
    }

    #[test]
    fn body_is_valid_json_in_order() {
        let mut params = Map::new();
        params.insert("temperature".into(), Value::from(0));
        params.insert("max_tokens".into(), Value::from(16));
        let b = RequestBuilder::new("gpt-4o-mini", Some("Be \"strict\"."), &params);
        let body = b.body("line1\nline2 é");
        let v: Value = serde_json::from_str(&body).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["model", "messages", "temperature", "max_tokens"]);
        assert_eq!(v["messages"][0]["content"], "Be \"strict\".");
        assert_eq!(v["messages"][1]["content"], "line1\nline2 é");
        let line = batch_line("r1", &body);
        let l: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(l["custom_id"], "r1");
        assert_eq!(l["url"], CHAT_URL);
        assert_eq!(l["body"], v);
    }

    #[test]
    fn body_without_system() {
        let b = RequestBuilder::new("m", None, &Map::new());
        let v: Value = serde_json::from_str(&b.body("u")).unwrap();
        assert_eq!(v["messages"].as_array().unwrap().len(), 1);
        assert_eq!(v["messages"][0]["role"], "user");
    }
}
