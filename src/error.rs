//! The crate's top-level error and the exit code of each failure.
//!
//! Modules return their own typed errors; this enum wraps them so that the
//! binary prints one report, and `Error::exit_code` picks one exit code.

use std::fmt;
use std::path::PathBuf;

use crate::exit::Code;
use crate::state::StateError;

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    #[error(transparent)]
    Prompt(#[from] crate::prompt::PromptError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Pricing(#[from] crate::cost::PricingError),
    #[error(transparent)]
    Chunking(#[from] crate::chunking::ChunkError),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenize::TokenizerError),
    #[error(transparent)]
    Provider(#[from] crate::provider::ProviderError),
    /// A problem with what the user asked for that no module owns.
    #[error("{message}")]
    Usage {
        message: String,
        hint: Option<String>,
    },
    /// A fault at run time that no module owns (exit 1), with what to do.
    #[error("{message}")]
    Runtime {
        message: String,
        hint: Option<String>,
    },
    /// Ctrl-C stopped local work (`what`); nothing it did was kept.
    #[error(
        "interrupted while {what}: stopped; nothing of this plan was kept, and the previous plan (if any) is unchanged"
    )]
    Interrupted { what: &'static str },
    /// A file the command had to read or write.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage {
            message: message.into(),
            hint: None,
        }
    }

    pub fn runtime_with_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Runtime {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn usage_with_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Usage {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The code of the exit-code table for this failure: what the user
    /// asked for or gave is wrong (2), or something failed at run time (1).
    pub fn exit_code(&self) -> Code {
        match self {
            Error::Spec(_)
            | Error::Input(_)
            | Error::Prompt(_)
            | Error::Pricing(_)
            | Error::Chunking(_)
            | Error::Usage { .. } => Code::Usage,
            Error::State(StateError::NoJob { .. }) => Code::Usage,
            Error::State(_) => Code::Runtime,
            // A missing or refused key is bad input, caught before anything
            // is submitted; every other provider failure is a runtime fault.
            Error::Provider(e) if e.is_setup_fault() => Code::Usage,
            Error::Provider(_) | Error::Tokenizer(_) | Error::Io { .. } | Error::Runtime { .. } => {
                Code::Runtime
            }
            // As Ctrl-C during `apply`: the work can be taken up again.
            Error::Interrupted { .. } => Code::Running,
        }
    }

    /// What the user can do next, printed on its own line under the error.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Usage { hint, .. } | Error::Runtime { hint, .. } => hint.clone(),
            Error::Spec(e) => e.hint(),
            Error::Input(e) => e.hint(),
            Error::Prompt(e) => e.hint(),
            Error::State(e) => e.hint(),
            Error::Pricing(e) => e.hint(),
            Error::Chunking(e) => e.hint(),
            Error::Provider(e) => e.hint().map(str::to_string),
            Error::Tokenizer(_) | Error::Io { .. } => None,
            Error::Interrupted { .. } => {
                Some("run the same command again to plan from the start".into())
            }
        }
    }
}

/// A `Display` wrapper that prints an error with its hint, for the top-level report.
pub struct Report<'a>(pub &'a Error);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        if let Some(h) = self.0.hint() {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_the_table() {
        let no_job = Error::State(StateError::NoJob {
            job: "j".into(),
            root: "state".into(),
        });
        assert_eq!(no_job.exit_code(), Code::Usage);
        let locked = Error::State(StateError::Locked {
            job: "j".into(),
            holder: "pid 1".into(),
        });
        assert_eq!(locked.exit_code(), Code::Runtime);
        let missing_key =
            crate::provider::ClientConfig::from_env(None, "BATCHGRADER_TEST_KEY_THAT_IS_NEVER_SET")
                .expect_err("the variable is not set");
        assert_eq!(Error::from(missing_key).exit_code(), Code::Usage);
        let io = Error::io("read", "x.csv", std::io::ErrorKind::NotFound.into());
        assert_eq!(io.exit_code(), Code::Runtime);
        assert_eq!(Error::usage("bad").exit_code(), Code::Usage);
    }
}
