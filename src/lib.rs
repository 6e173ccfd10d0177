//! batchgrader: grade, score or classify large sets of text with an LLM
//! through provider batch APIs, with a plan you can read before paying and
//! a state that survives crashes.

pub mod agreement;
pub mod answer;
pub mod apply;
pub mod chunking;
pub mod cli;
pub mod commands;
pub mod cost;
pub mod costs;
pub mod csvquote;
pub mod deadline;
pub mod error;
pub mod exit;
pub mod grades;
pub mod hex;
pub mod htmlreport;
pub mod input;
pub mod interrupt;
pub mod nofollow;
pub mod output;
pub mod plan;
pub mod prompt;
pub mod protect;
pub mod provider;
pub mod registry;
pub mod rehearsal;
pub mod request;
pub mod rowtokens;
pub mod settings;
pub mod simulate;
pub mod spec;
pub mod split;
pub mod state;
pub mod stats;
pub mod status;
pub mod suggest;
pub mod template;
pub mod tokenize;
pub mod ui;

pub use commands::run;
