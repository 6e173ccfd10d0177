//! The crate's top-level error and the documented exit codes.
//!
//! Modules return their own typed errors; this enum wraps them so that the
//! binary prints one report and picks one exit code. The exit-code table is
//! part of the user contract (README, `--help`): change it only on purpose.

use std::fmt;
use std::path::PathBuf;

/// Exit codes, one table for every command.
pub mod exit {
    /// Success.
    pub const SUCCESS: u8 = 0;
    /// Runtime error: I/O, state store, network.
    pub const RUNTIME: u8 = 1;
    /// Usage error, invalid spec or invalid input; also `plan --detailed-exitcode` with work to do.
    pub const USAGE: u8 = 2;
    /// Finished, but some rows failed after all retries.
    pub const ROWS_FAILED: u8 = 3;
    /// Halted by policy (failure rate, budget, chunk failure).
    pub const HALTED: u8 = 4;
    /// Still running (after `apply --detach`, or `status --exit-status` of an unfinished job).
    pub const RUNNING: u8 = 5;
}

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

    /// The exit code of DESIGN's table for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Spec(_)
            | Error::Input(_)
            | Error::Prompt(_)
            | Error::Pricing(_)
            | Error::Chunking(_)
            | Error::Usage { .. } => exit::USAGE,
            Error::State(e) => e.exit_code(),
            Error::Provider(e) if e.is_setup_fault() => exit::USAGE,
            Error::Provider(_) => exit::RUNTIME,
            Error::Tokenizer(_) | Error::Io { .. } => exit::RUNTIME,
        }
    }

    /// What the user can do next, printed on its own line under the error.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Usage { hint, .. } => hint.clone(),
            Error::Spec(e) => e.hint(),
            Error::Input(e) => e.hint(),
            Error::Prompt(e) => e.hint(),
            Error::State(e) => e.hint(),
            Error::Pricing(e) => e.hint(),
            Error::Chunking(e) => e.hint(),
            Error::Provider(e) => e.hint().map(str::to_string),
            Error::Tokenizer(_) | Error::Io { .. } => None,
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
