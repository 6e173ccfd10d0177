//! Prompts and request bodies: the system prompt (with its examples), the
//! `{{ column }}` user template, and the Chat Completions body for a row.
//!
//! Bodies are built as text from a pre-rendered prefix and suffix around the
//! one part that changes per row, the user message. That keeps every body
//! byte-for-byte deterministic (the fingerprint depends on it) and cheap.

use std::path::PathBuf;

use serde_json::{Map, Value};

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
    pub fn render<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => out.push_str(lookup(v).ok_or_else(|| v.clone())?),
            }
        }
        Ok(out)
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
}

/// The endpoint every request line targets.
pub const CHAT_URL: &str = "/v1/chat/completions";

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
        RequestBuilder { prefix, suffix }
    }

    /// The JSON body for one user message.
    pub fn body(&self, user: &str) -> String {
        let mut out =
            String::with_capacity(self.prefix.len() + user.len() + self.suffix.len() + 16);
        out.push_str(&self.prefix);
        out.push_str(&json_str(user));
        out.push_str(&self.suffix);
        out
    }
}

/// One line of a batch input file, without the trailing newline.
pub fn batch_line(custom_id: &str, body: &str) -> String {
    format!(
        "{{\"custom_id\":{},\"method\":\"POST\",\"url\":\"{CHAT_URL}\",\"body\":{body}}}",
        json_str(custom_id)
    )
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
