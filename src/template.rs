//! The `{{ column }}` user template: parsed once, rendered per row.

use std::borrow::Cow;

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
}
