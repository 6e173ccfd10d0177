//! Command-line arguments and dispatch. Clap types stay here; each command
//! turns them into plain values before calling the library.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;

use crate::error::{Error, Report, Result};
use crate::exit::{self, Code, Convention};
use crate::jobs;
use crate::report::{Ui, num, plan_text, print_json};
use crate::rowtokens::Target;
use crate::spec::{self, Format, units};
use crate::split::{SplitLimits, split};
use crate::stats::summarize;
use crate::tokenize::Counter;

/// Help text wraps at this width (also clap's `max_term_width`).
const HELP_WIDTH: usize = 100;

/// Grade, score or classify large sets of text with an LLM through provider batch APIs.
///
/// Write a job spec (YAML), `plan` it to see requests, chunks, tokens and cost
/// before any money is spent, then `apply` it.
#[derive(Debug, Parser)]
#[command(name = "batchgrader", version, max_term_width = HELP_WIDTH)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Folder holding every job's state.
    #[arg(
        long,
        global = true,
        env = "BATCHGRADER_STATE",
        default_value = "state"
    )]
    state: PathBuf,
    /// Machine-readable JSON on stdout (human text still goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Print only errors on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// No colours or styles (also with the NO_COLOR environment variable).
    #[arg(long, global = true)]
    no_color: bool,
    /// Price table to use instead of config/pricing.csv (or the built-in prices).
    #[arg(long, global = true, env = "BATCHGRADER_PRICING", value_name = "CSV")]
    pricing: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a spec against the schema and the semantic rules; every problem is named with FILE:LINE:COL.
    Validate { spec: PathBuf },
    /// Print the JSON Schema of the job spec (schemas/job-spec.schema.json is this output).
    Schema,
    /// Read inputs, render requests, count tokens, chunk, estimate cost, and save the plan.
    Plan {
        spec: PathBuf,
        /// Exit 2 when there is work to do, 0 when every row is already graded, and 1 on any
        /// error (Terraform's convention).
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Plan if needed, then submit, poll, download and merge; write the output.
    ///
    /// Safe to interrupt at any moment: `batchgrader resume` continues where it stopped,
    /// without submitting anything twice.
    Apply {
        /// The job spec; without it, the job in the state folder is applied as planned.
        spec: Option<PathBuf>,
        /// Submit what may be submitted, then exit 5; `resume` collects later.
        #[arg(long)]
        detach: bool,
        /// Do not ask before submitting a large job (a terminal asks above $10).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Continue a job from its state alone (no spec needed).
    Resume {
        /// Job name; default: the only job in the state folder.
        job: Option<String>,
        /// Submit what may be submitted, then exit 5.
        #[arg(long)]
        detach: bool,
    },
    /// Chunks, states, counts, tokens and cost; works while `apply` runs.
    Status {
        /// Job name; default: the only job in the state folder.
        job: Option<String>,
        /// Redraw every 2 seconds until the job finishes.
        #[arg(long)]
        watch: bool,
        /// Exit 5 while the job is unfinished, 4 when halted, 0 when finished.
        #[arg(long)]
        exit_status: bool,
    },
    /// Cancel the job's batches that are out; `resume` then collects partial results.
    Cancel {
        /// Job name; default: the only job in the state folder.
        job: Option<String>,
    },
    /// Token usage and spend over time, by day, model and job (from <state>/usage.jsonl).
    Costs {
        /// Only batches merged within this long, e.g. 7d, 24h.
        #[arg(long, value_parser = parse_duration_arg)]
        since: Option<std::time::Duration>,
    },
    /// Write the output file again from the state, in any format.
    Export {
        /// Job name; default: the only job in the state folder.
        job: Option<String>,
        /// Where to write; the format follows the extension (.csv, .json, .jsonl).
        /// Default: the spec's output.path.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the simulated OpenAI-compatible server alone (Files, Batches, Chat Completions).
    SimulateServer {
        /// Port on 127.0.0.1 (0 picks a free one; the URL is printed on stdout).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Keep files and batches here, so a restarted server continues them.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Require this bearer token (default: accept any).
        #[arg(long)]
        api_key: Option<String>,
        /// Time a batch spends validating.
        #[arg(long, default_value = "200ms", value_parser = parse_duration_arg)]
        validating: std::time::Duration,
        /// Time a batch spends in progress.
        #[arg(long, default_value = "2s", value_parser = parse_duration_arg)]
        in_progress: std::time::Duration,
        /// Time a batch spends finalizing.
        #[arg(long, default_value = "200ms", value_parser = parse_duration_arg)]
        finalizing: std::time::Duration,
        /// Share of requests that fail with a server error (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        request_failure_rate: f64,
        /// Share of API calls answered 500 or 429 first (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        http_error_rate: f64,
        /// Answer `metadata: null` on batches, like servers that do not keep it.
        #[arg(long)]
        drop_metadata: bool,
    },
    /// Token statistics per row of a spec's inputs (as requests) or of a data file.
    Tokens {
        /// A job spec (.yaml) or a CSV/JSON/JSONL file.
        target: PathBuf,
        #[command(flatten)]
        count: CountArgs,
        /// Report how many rows are over this many tokens.
        #[arg(long, value_name = "TOKENS")]
        limit: Option<u64>,
    },
    /// Split an input into files under a token, row or byte limit (same format, rows verbatim).
    Split {
        /// A job spec (.yaml) or a CSV/JSON/JSONL file.
        target: PathBuf,
        #[command(flatten)]
        count: CountArgs,
        /// Folder for the parts, named <stem>.part-NNNN.<ext>.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Most tokens per part.
        #[arg(long)]
        max_tokens: Option<u64>,
        /// Most rows per part.
        #[arg(long)]
        max_rows: Option<u64>,
        /// Most bytes of rows per part, e.g. 190MB.
        #[arg(long, value_parser = parse_size_arg)]
        max_bytes: Option<u64>,
    },
}

#[derive(Debug, Args)]
struct CountArgs {
    /// Model whose tokenizer counts (default: the spec's model, or gpt-4o-mini for a file).
    #[arg(long)]
    model: Option<String>,
    /// For a data file: count only this column (default: every cell).
    #[arg(long)]
    column: Option<String>,
    /// Input format when the file extension does not tell.
    #[arg(long, value_parser = parse_format_arg)]
    format: Option<Format>,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    units::parse_size(s)
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    units::parse_duration(s)
}

fn parse_format_arg(s: &str) -> Result<Format, String> {
    match s {
        "csv" => Ok(Format::Csv),
        "json" => Ok(Format::Json),
        "jsonl" => Ok(Format::Jsonl),
        other => Err(format!("unknown format `{other}`; use csv, json or jsonl")),
    }
}

/// Parse the command line, with the exit-code table in `--help`.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = Cli::command()
        .after_help(exit::help_text(HELP_WIDTH))
        .try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// Run the command line `args` (program name first); returns the process
/// exit code.
pub fn run<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match parse(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return exit::for_arguments(!e.use_stderr()).value();
        }
    };
    let ui = Ui::new(cli.global.json, cli.global.quiet, cli.global.no_color);
    let convention = match cli.command {
        Command::Plan {
            detailed_exitcode: true,
            ..
        } => Convention::DetailedPlan,
        _ => Convention::Standard,
    };
    match dispatch(&cli, &ui) {
        Ok(code) => code.value(),
        Err(e) => {
            ui.error(&Report(&e).to_string());
            exit::for_error(&e, convention).value()
        }
    }
}

fn dispatch(cli: &Cli, ui: &Ui) -> Result<Code> {
    let g = &cli.global;
    match &cli.command {
        Command::Schema => {
            print!("{}", spec::schema_json());
            Ok(Code::Success)
        }
        Command::Validate { spec: path } => validate(path, ui),
        Command::Plan {
            spec: path,
            detailed_exitcode,
        } => {
            let spec = spec::load(path)?;
            let (_store, planned) = jobs::open_and_plan(&g.state, g.pricing.as_deref(), &spec, ui)?;
            let p = &planned.plan;
            for w in &p.warnings {
                ui.warn(w);
            }
            let dir = planned.job_dir.display().to_string();
            if ui.json {
                #[derive(Serialize)]
                struct Out<'a> {
                    job: &'a str,
                    changed: bool,
                    state_dir: &'a str,
                    #[serde(flatten)]
                    plan: &'a crate::state::PlanRecord,
                }
                print_json(&Out {
                    job: &planned.job,
                    changed: planned.changed,
                    state_dir: &dir,
                    plan: p,
                });
            }
            ui.info(&plan_text(ui, &planned.job, p, planned.changed, &dir));
            if p.outstanding > 0 {
                ui.info(&format!(
                    "Next: `batchgrader apply {}` submits {} request{}.",
                    path.display(),
                    num(p.outstanding),
                    if p.outstanding == 1 { "" } else { "s" }
                ));
            } else {
                ui.info("Every row is already graded; nothing to submit.");
            }
            Ok(exit::for_plan(p.outstanding, *detailed_exitcode))
        }
        Command::Apply { spec, detach, yes } => jobs::apply(
            jobs::ApplyArgs {
                spec: spec.as_deref(),
                job: None,
                detach: *detach,
                yes: *yes,
                resume: false,
            },
            &g.state,
            g.pricing.as_deref(),
            ui,
        ),
        Command::Resume { job, detach } => jobs::apply(
            jobs::ApplyArgs {
                spec: None,
                job: job.as_deref(),
                detach: *detach,
                yes: true,
                resume: true,
            },
            &g.state,
            g.pricing.as_deref(),
            ui,
        ),
        Command::Status {
            job,
            watch,
            exit_status,
        } => jobs::status(&g.state, job.as_deref(), *watch, *exit_status, ui),
        Command::Cancel { job } => jobs::cancel(&g.state, job.as_deref(), ui),
        Command::Costs { since } => costs(&g.state, *since, ui),
        Command::Export { job, out } => jobs::export(&g.state, job.as_deref(), out.as_deref(), ui),
        Command::SimulateServer {
            port,
            data_dir,
            api_key,
            validating,
            in_progress,
            finalizing,
            request_failure_rate,
            http_error_rate,
            drop_metadata,
        } => {
            for (name, v) in [
                ("--request-failure-rate", request_failure_rate),
                ("--http-error-rate", http_error_rate),
            ] {
                if !(0.0..=1.0).contains(v) {
                    return Err(Error::usage(format!(
                        "{name} must be between 0 and 1, got {v}"
                    )));
                }
            }
            jobs::simulate_server(
                crate::simulate::SimConfig {
                    data_dir: data_dir.clone(),
                    api_key: api_key.clone(),
                    validating: *validating,
                    in_progress: *in_progress,
                    finalizing: *finalizing,
                    request_failure_rate: *request_failure_rate,
                    http_error_rate: *http_error_rate,
                    seed: 0,
                    drop_metadata: *drop_metadata,
                },
                *port,
            )
        }
        Command::Tokens {
            target,
            count,
            limit,
        } => tokens(target, count, *limit, ui),
        Command::Split {
            target,
            count,
            out_dir,
            max_tokens,
            max_rows,
            max_bytes,
        } => {
            let t = resolve_target(target, count, ui)?;
            let counter = Counter::new(t.encoding)?;
            let bar = ui.progress(t.total_bytes(), "splitting");
            let parts = split(
                &t,
                &counter,
                SplitLimits {
                    max_tokens: *max_tokens,
                    max_rows: *max_rows,
                    max_bytes: *max_bytes,
                },
                out_dir,
                |b| bar.set_position(b),
            )?;
            bar.finish_and_clear();
            if ui.json {
                print_json(&parts);
            }
            for p in &parts {
                ui.info(&format!(
                    "{}  {} rows, {} tokens",
                    p.path,
                    num(p.rows),
                    num(p.tokens)
                ));
            }
            ui.info(&format!(
                "{} part{} written.",
                parts.len(),
                if parts.len() == 1 { "" } else { "s" }
            ));
            Ok(Code::Success)
        }
    }
}

fn costs(state_root: &Path, since: Option<std::time::Duration>, ui: &Ui) -> Result<Code> {
    use crate::cost::usd;
    let entries = crate::costs::read(state_root)
        .map_err(|e| Error::io("read", state_root.join("usage.jsonl"), e))?;
    let cutoff = since.map(|d| crate::state::now_secs().saturating_sub(d.as_secs()));
    let r = crate::costs::aggregate(&entries, cutoff);
    if ui.json {
        print_json(&r);
    }
    let mut s = format!(
        "{} {} in {} batch{}: {} input and {} output tokens\n",
        ui.bold("Spend"),
        usd(r.total.cost_usd),
        num(r.total.batches),
        if r.total.batches == 1 { "" } else { "es" },
        num(r.total.input_tokens),
        num(r.total.output_tokens)
    );
    for (title, group) in [
        ("day", &r.by_day),
        ("model", &r.by_model),
        ("job", &r.by_job),
    ] {
        if group.is_empty() {
            continue;
        }
        s.push_str(&ui.dim(&format!("  by {title}\n")));
        for (k, v) in group {
            s.push_str(&format!(
                "    {:<28} {:>10} {:>14} in {:>12} out\n",
                k,
                usd(v.cost_usd),
                num(v.input_tokens),
                num(v.output_tokens)
            ));
        }
    }
    if r.simulated.batches > 0 {
        s.push_str(&ui.dim(&format!(
            "  plus {} simulated batch{} (no real spend)\n",
            num(r.simulated.batches),
            if r.simulated.batches == 1 { "" } else { "es" }
        )));
    }
    ui.info(s.trim_end());
    Ok(Code::Success)
}

fn validate(path: &Path, ui: &Ui) -> Result<Code> {
    let checked = spec::load(path)?;
    if ui.json {
        print_json(&serde_json::json!({"valid": true, "spec": checked.spec}));
    }
    ui.info(&format!(
        "{}: valid job spec `{}`",
        path.display(),
        checked.spec.name
    ));
    Ok(Code::Success)
}

fn resolve_target(target: &Path, count: &CountArgs, ui: &Ui) -> Result<Target> {
    let t = Target::resolve(
        target,
        count.model.as_deref(),
        count.column.as_deref(),
        count.format,
    )?;
    if t.guessed {
        ui.warn(&format!(
            "no known tokenizer for model `{}`; counting with {}",
            t.model, t.encoding
        ));
    }
    Ok(t)
}

fn tokens(target: &Path, count: &CountArgs, limit: Option<u64>, ui: &Ui) -> Result<Code> {
    let t = resolve_target(target, count, ui)?;
    let counter = Counter::new(t.encoding)?;
    let bar = ui.progress(t.total_bytes(), "counting");
    let mut counts: Vec<u64> = Vec::new();
    let mut first_over: Vec<String> = Vec::new();
    t.for_each(
        &counter,
        false,
        |b| bar.set_position(b),
        |row, n, sources| {
            counts.push(n);
            if let Some(l) = limit
                && n > l
                && first_over.len() < 10
            {
                first_over.push(format!(
                    "{} (row {}): {} tokens",
                    crate::input::row_place(sources, row),
                    row.number,
                    num(n)
                ));
            }
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    if counts.is_empty() {
        return Err(Error::usage(format!(
            "{}: the input has no rows",
            t.input_paths()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let stats = summarize(&counts, |i| (i + 1).to_string(), limit);
    if ui.json {
        #[derive(Serialize)]
        struct Out<'a> {
            model: &'a str,
            encoding: String,
            #[serde(flatten)]
            stats: &'a crate::stats::TokenStats,
        }
        print_json(&Out {
            model: &t.model,
            encoding: t.encoding.to_string(),
            stats: &stats,
        });
    }
    let mut s = format!(
        "{}\n  {:<8}{}\n  {:<8}{}\n  {:<8}{:.1}\n  {:<8}{}\n  {:<8}{}\n  {:<8}{} (row {})\n",
        ui.bold(&format!("Tokens per row ({}, {})", t.model, t.encoding)),
        "rows",
        num(stats.rows),
        "total",
        num(stats.total),
        "mean",
        stats.mean,
        "p50",
        num(stats.p50),
        "p95",
        num(stats.p95),
        "max",
        num(stats.max),
        stats.max_row.as_deref().unwrap_or("-"),
    );
    if let Some(l) = limit {
        s.push_str(&format!(
            "  {} rows over {} tokens\n",
            num(stats.over_limit),
            num(l)
        ));
        for line in &first_over {
            s.push_str(&format!("    {line}\n"));
        }
    }
    ui.info(s.trim_end());
    Ok(Code::Success)
}
