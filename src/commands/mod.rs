//! One module per command. `run` parses the command line into plain
//! settings, dispatches to the command, prints the error of a command that
//! failed, and picks the exit code through `crate::exit`.

mod apply;
mod cancel;
mod connect;
mod costs;
mod export;
mod homes;
mod job;
mod plan;
mod rehearse;
mod report;
mod schema;
mod simulate_server;
mod split;
mod status;
mod tokens;
mod validate;

use std::ffi::OsString;

use crate::cli;
use crate::error::{Report, Result};
use crate::exit::{self, Code, Convention};
use crate::settings::{Global, Invocation};
use crate::ui::Ui;

/// Run the command line `args` (program name first); returns the process
/// exit code.
pub fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<T> = args.into_iter().collect();
    let typed: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.clone().into().to_string_lossy().into_owned())
        .collect();
    let cli = match cli::parse(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return exit::for_arguments(!e.use_stderr()).value();
        }
    };
    let (mut global, invocation) = cli.resolve();
    global.typed = typed;
    let o = global.output;
    let ui = Ui::new(o.json, o.quiet, o.no_color);
    let convention = match invocation {
        Invocation::Plan {
            detailed_exitcode: true,
            ..
        } => Convention::DetailedPlan,
        _ => Convention::Standard,
    };
    match dispatch(&global, invocation, &ui) {
        Ok(code) => code.value(),
        Err(e) => {
            ui.error(&Report(&e).to_string());
            exit::for_error(e.exit_code(), convention).value()
        }
    }
}

fn dispatch(g: &Global, invocation: Invocation, ui: &Ui) -> Result<Code> {
    match invocation {
        Invocation::Validate { spec } => validate::run(&spec, ui),
        Invocation::Schema => schema::run(),
        Invocation::Plan {
            spec,
            detailed_exitcode,
        } => plan::run(g, &spec, detailed_exitcode, ui),
        Invocation::Apply(a) => apply::run(g, &a, ui),
        Invocation::Status {
            job,
            watch,
            exit_status,
        } => status::run(g, job.as_deref(), watch, exit_status, ui),
        Invocation::Cancel { job } => cancel::run(g, job.as_deref(), ui),
        Invocation::Costs { since } => costs::run(g, since, ui),
        Invocation::Export {
            job,
            out,
            disagreements,
        } => export::run(g, job.as_deref(), out.as_deref(), disagreements, ui),
        Invocation::Report { job, out } => report::run(g, job.as_deref(), out.as_deref(), ui),
        Invocation::SimulateServer { config, port } => simulate_server::run(config, port, ui),
        Invocation::Tokens { target, limit } => tokens::run(&target, limit, ui),
        Invocation::Split {
            target,
            limits,
            out_dir,
        } => split::run(&target, limits, &out_dir, ui),
    }
}

/// A flag that names a folder (created when missing) must not name a file:
/// said in words, before the system's "File exists" can.
fn must_be_folder(flag: &str, path: &std::path::Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(crate::error::Error::usage_with_hint(
            format!("{flag} {}: is a file, not a folder", path.display()),
            format!("give {flag} a folder (it is created when missing), not an existing file"),
        )),
        _ => Ok(()),
    }
}
