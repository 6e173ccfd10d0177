//! The job's prompt: the system prompt (with its examples) read from the
//! spec or its files, and the parsed `{{ column }}` user template.

use std::path::PathBuf;

use crate::spec::CheckedSpec;
use crate::template::Template;

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
            crate::spec::limits::read_capped(path, crate::spec::limits::MAX_PROMPT_BYTES).map_err(
                |source| PromptError::Read {
                    what,
                    path: path.clone(),
                    source,
                },
            )
        };
        let mut system = match &spec.system_file {
            Some(p) => Some(read("prompt.system_file", p)?),
            None => spec.prompt().system.clone(),
        };
        if let Some(p) = &spec.examples_file {
            let examples = read("prompt.examples_file", p)?;
            system = Some(match system {
                Some(s) => format!("{}\n\n{}", s.trim_end(), examples.trim_end()),
                None => examples.trim_end().to_string(),
            });
        }
        let user = Template::parse(&spec.prompt().user).map_err(|message| PromptError::Syntax {
            spec: spec.file.clone(),
            message,
        })?;
        Ok(Prompt {
            system,
            user,
            user_text: spec.prompt().user.clone(),
        })
    }
}
