//! Command-line arguments and dispatch. Clap types stay here; each command
//! turns them into plain values before calling the library.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::error::{Error, Report, Result, exit};
use crate::jobs;
use crate::plan::{PlanOptions, plan};
use crate::report::{Ui, num, plan_text, print_json};
use crate::rowtokens::Target;
use crate::spec::{self, Format, units};
use crate::split::{SplitLimits, split};
use crate::stats::summarize;
use crate::tokenize::Counter;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  runtime error (I/O, state store, network)
  2  usage error, invalid spec or input; `plan --detailed-exitcode` with work to do
  3  finished, but some rows failed, did not parse, or were not graded
  4  halted by policy (failure rate, budget, chunk failure) or by `cancel`
  5  still running (after `apply --detach` or Ctrl-C, or `status --exit-status`)";

/// Grade, score or classify large sets of text with an LLM through provider batch APIs.
///
/// Write a job spec (YAML), `plan` it to see requests, chunks, tokens and cost
/// before any money is spent, then `apply` it.
#[derive(Debug, Parser)]
#[command(name = "batchgrader", version, after_help = EXIT_CODES, max_term_width = 100)]
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
        /// Exit 2 when there is work to do and 0 when every row is already graded.
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
        /// Share of requests that fail with a server error every time (5% or 0.05).
        #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate_arg)]
        request_failure_rate: f64,
        /// Share of requests that fail once (HTTP 500/503 line) and succeed when sent again.
        #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate_arg)]
        request_flake_rate: f64,
        /// Share of API calls answered 500 or 429 first (half each).
        #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate_arg)]
        http_error_rate: f64,
        /// Share of API calls answered 429 rate_limit_exceeded, with retry-after headers.
        #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate_arg)]
        rate_limit_rate: f64,
        /// Share of API calls answered 500, 502 or 503.
        #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate_arg)]
        server_error_rate: f64,
        /// Share of batch creates that make the batch, then answer 500.
        #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate_arg)]
        create_commit_error_rate: f64,
        /// Every Nth batch created fails with token_limit_exceeded (0: never).
        #[arg(long, value_name = "N", default_value_t = 0)]
        token_limit_every: u64,
        /// Every Nth batch created expires with half its requests done (0: never;
        /// counted like --token-limit-every, which wins when both are due).
        #[arg(long, value_name = "N", default_value_t = 0)]
        expire_every: u64,
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

/// A share as the spec takes it: `5%` or a fraction such as `0.05`.
fn parse_rate_arg(s: &str) -> Result<f64, String> {
    if s.trim().ends_with('%') {
        return units::parse_percent_str(s);
    }
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a rate; write e.g. 5% or 0.05"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is not between 0 and 1; write a percentage as e.g. 5%"
        ))
    }
}

fn parse_format_arg(s: &str) -> Result<Format, String> {
    match s {
        "csv" => Ok(Format::Csv),
        "json" => Ok(Format::Json),
        "jsonl" => Ok(Format::Jsonl),
        other => Err(format!("unknown format `{other}`; use csv, json or jsonl")),
    }
}

/// Run the command line; returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    let ui = Ui::new(cli.global.json, cli.global.quiet, cli.global.no_color);
    match dispatch(&cli, &ui) {
        Ok(code) => code,
        Err(e) => {
            ui.error(&Report(&e).to_string());
            e.exit_code()
        }
    }
}

fn dispatch(cli: &Cli, ui: &Ui) -> Result<u8> {
    let g = &cli.global;
    match &cli.command {
        Command::Schema => {
            print!("{}", spec::schema_json());
            Ok(exit::SUCCESS)
        }
        Command::Validate { spec: path } => validate(path, ui),
        Command::Plan {
            spec: path,
            detailed_exitcode,
        } => {
            let opts = PlanOptions {
                state_root: &g.state,
                pricing: g.pricing.as_deref(),
            };
            let planned = plan(path, &opts, ui)?;
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
            Ok(if *detailed_exitcode && p.outstanding > 0 {
                exit::USAGE
            } else {
                exit::SUCCESS
            })
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
            request_flake_rate,
            http_error_rate,
            rate_limit_rate,
            server_error_rate,
            create_commit_error_rate,
            token_limit_every,
            expire_every,
            drop_metadata,
        } => jobs::simulate_server(
            crate::simulate::SimConfig {
                data_dir: data_dir.clone(),
                api_key: api_key.clone(),
                validating: *validating,
                in_progress: *in_progress,
                finalizing: *finalizing,
                request_failure_rate: *request_failure_rate,
                request_flake_rate: *request_flake_rate,
                http_error_rate: *http_error_rate,
                rate_limit_rate: *rate_limit_rate,
                server_error_rate: *server_error_rate,
                create_commit_error_rate: *create_commit_error_rate,
                token_limit_every: *token_limit_every,
                expire_every: *expire_every,
                seed: 0,
                drop_metadata: *drop_metadata,
            },
            *port,
        ),
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
            Ok(exit::SUCCESS)
        }
    }
}

fn costs(state_root: &Path, since: Option<std::time::Duration>, ui: &Ui) -> Result<u8> {
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
    Ok(exit::SUCCESS)
}

fn validate(path: &Path, ui: &Ui) -> Result<u8> {
    let checked = spec::load(path)?;
    if ui.json {
        print_json(&serde_json::json!({"valid": true, "spec": checked.spec}));
    }
    ui.info(&format!(
        "{}: valid job spec `{}`",
        path.display(),
        checked.spec.name
    ));
    Ok(exit::SUCCESS)
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

fn tokens(target: &Path, count: &CountArgs, limit: Option<u64>, ui: &Ui) -> Result<u8> {
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
    Ok(exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_args_take_a_percentage_or_a_fraction() {
        assert_eq!(parse_rate_arg("5%"), Ok(0.05));
        assert_eq!(parse_rate_arg(" 0.25 "), Ok(0.25));
        assert_eq!(parse_rate_arg("0"), Ok(0.0));
        assert_eq!(parse_rate_arg("100%"), Ok(1.0));
        for bad in ["1.5", "-0.1", "150%", "often", ""] {
            assert!(parse_rate_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn simulate_server_fault_flags() {
        let cli = Cli::try_parse_from([
            "batchgrader",
            "simulate-server",
            "--rate-limit-rate",
            "5%",
            "--server-error-rate",
            "0.1",
            "--create-commit-error-rate",
            "50%",
            "--request-flake-rate",
            "0.02",
            "--token-limit-every",
            "3",
            "--expire-every",
            "4",
        ])
        .unwrap();
        let Command::SimulateServer {
            rate_limit_rate,
            server_error_rate,
            create_commit_error_rate,
            request_flake_rate,
            token_limit_every,
            expire_every,
            http_error_rate,
            ..
        } = cli.command
        else {
            panic!("not simulate-server");
        };
        assert_eq!(
            (rate_limit_rate, server_error_rate, create_commit_error_rate),
            (0.05, 0.1, 0.5)
        );
        assert_eq!(request_flake_rate, 0.02);
        assert_eq!((token_limit_every, expire_every), (3, 4));
        assert_eq!(http_error_rate, 0.0);
        let refused =
            Cli::try_parse_from(["batchgrader", "simulate-server", "--expire-every", "x"]);
        assert!(refused.is_err());
    }
}
