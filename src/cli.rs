//! The command line: clap types, and `Cli::resolve`, which turns them into
//! the plain settings of `crate::settings`. Nothing else sees clap.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::exit;
use crate::settings::{ApplySettings, CountTarget, Global, Invocation, OutputMode};
use crate::simulate::{AnswerShape, SimConfig};
use crate::spec::{Format, units};
use crate::split::SplitLimits;

/// The state folder when neither --state nor BATCHGRADER_STATE names one
/// (relative to the current folder).
pub const DEFAULT_STATE: &str = "state";

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
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Folder holding every job's state [default: ./state; the commands that take a job also
    /// look where it was planned].
    #[arg(long, global = true, env = "BATCHGRADER_STATE", value_name = "STATE")]
    state: Option<PathBuf>,
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
    Validate {
        /// The job spec (YAML).
        spec: PathBuf,
    },
    /// Print the JSON Schema of the job spec (schemas/job-spec.schema.json is this output).
    Schema,
    /// Read inputs, render requests, count tokens, chunk, estimate cost, and save the plan.
    Plan {
        /// The job spec (YAML).
        spec: PathBuf,
        /// Exit 2 when there is work to do, 0 when every row is already graded, and 1 on any
        /// error (Terraform's convention).
        #[arg(long)]
        detailed_exitcode: bool,
        /// Plan in this state folder even though the job already has state in another one
        /// (every row is graded, and paid for, again).
        #[arg(long)]
        new_state: bool,
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
        /// Send again the rows that failed for good (an HTTP 4xx, a refused line), once the
        /// cause is fixed, each with a fresh set of retry.max_attempts; each is paid again.
        #[arg(long, display_order = 0)]
        retry_failed: bool,
        /// Send again the rows whose answer did not parse; a new answer replaces the old one,
        /// and each is paid again.
        #[arg(long, display_order = 0)]
        retry_parse_failures: bool,
        /// Rehearse: grade N rows now in the direct lane (gold rows first), write
        /// OUTPUT.sample.EXT, show agreement, failures and what the rest costs, and stop.
        /// The sample's rows are not sent again by the full `apply`.
        #[arg(long, value_name = "N", display_order = 0, conflicts_with_all = ["retry_failed", "retry_parse_failures", "detach"])]
        sample: Option<u64>,
        /// Which rows `--sample` takes (the same seed, the same rows).
        #[arg(
            long,
            value_name = "SEED",
            default_value_t = 0,
            requires = "sample",
            display_order = 0
        )]
        seed: u64,
        /// Plan in this state folder even though the job already has state in another one
        /// (every row is graded, and paid for, again).
        #[arg(long)]
        new_state: bool,
    },
    /// Continue a job from its state alone (no spec needed).
    Resume {
        /// Job name; default: the job a live process is working on, else the only job in the state folder.
        job: Option<String>,
        /// Submit what may be submitted, then exit 5.
        #[arg(long)]
        detach: bool,
        /// Send again the rows that failed for good (an HTTP 4xx, a refused line), once the
        /// cause is fixed, each with a fresh set of retry.max_attempts; each is paid again.
        #[arg(long, display_order = 0)]
        retry_failed: bool,
        /// Send again the rows whose answer did not parse; a new answer replaces the old one,
        /// and each is paid again.
        #[arg(long, display_order = 0)]
        retry_parse_failures: bool,
    },
    /// Chunks, states, counts, tokens and cost; works while `apply` runs.
    Status {
        /// Job name; default: the job a live process is working on, else the only job, else the one applied last.
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
        /// Job name; default: the job a live process is working on, else the only job in the state folder.
        job: Option<String>,
    },
    /// Token usage and spend over time, by day, model and job (from <state>/usage.jsonl).
    Costs {
        /// Only batches merged within this long, e.g. 7d, 24h.
        #[arg(long, value_parser = parse_duration_arg)]
        since: Option<Duration>,
    },
    /// Write the output file again from the state, in any format.
    Export {
        /// Job name; default: the job a live process is working on, else the only job in the state folder.
        job: Option<String>,
        /// Where to write; the format follows the extension (.csv, .json, .jsonl).
        /// Default: the spec's output.path.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only the rows where the judge and a gold value (`output.gold`) differ; needs --out.
        #[arg(long)]
        disagreements: bool,
    },
    /// One self-contained HTML report of a job: cost, grade charts, failures, timings.
    ///
    /// The file needs no network to open: the plan and what it cost, the distribution of each
    /// graded property as a chart, failures by class and by chunk, and how long each chunk took.
    Report {
        /// Job name; default: the job a live process is working on, else the only job in the state folder.
        job: Option<String>,
        /// The HTML file to write (default: `<job>.report.html` in the current folder).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the simulated provider alone (OpenAI Files, Batches, Chat Completions; or Anthropic Message Batches with --api anthropic).
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
        validating: Duration,
        /// Time a batch spends in progress.
        #[arg(long, default_value = "2s", value_parser = parse_duration_arg)]
        in_progress: Duration,
        /// Time a batch spends finalizing.
        #[arg(long, default_value = "200ms", value_parser = parse_duration_arg)]
        finalizing: Duration,
        /// Share of requests that fail with a server error every time (5% or 0.05).
        #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate_arg)]
        request_failure_rate: f64,
        /// Share of requests answered HTTP 400 invalid_request_error every time (a batch line, an
        /// errored Anthropic result, a chat completion): a final error, like a gateway without its
        /// database or a server refusing the request's grammar.
        #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate_arg)]
        reject_requests: f64,
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
        /// Bill N more prompt tokens on every answered batch line than the plan counts, like a
        /// provider that counts otherwise.
        #[arg(long, value_name = "N", default_value_t = 0)]
        bill_extra_prompt_tokens: u64,
        /// Answer `metadata: null` on batches, like servers that do not keep it.
        #[arg(long)]
        drop_metadata: bool,
        /// With `--api anthropic`: cut every line of every results stream in the middle.
        #[arg(long)]
        malformed_results: bool,
        /// Share of batch creates that make a second batch behind the answer (a gateway
        /// retrying a create that made its batch and answered 500); the answer names the second.
        #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate_arg)]
        twin_create_rate: f64,
        /// The wire protocol: `openai` (Files + Batches) or `anthropic` (Message Batches,
        /// served at the root: the base URL has no /v1). With `anthropic`, token-limit
        /// refusals are 429s of a full queue and failures are `errored` result lines.
        #[arg(long, value_enum, default_value = "openai")]
        api: SimApiArg,
        /// For `parse: label` jobs: answer like a keyword classifier, with the first of these
        /// labels the last user message names (else one by hash; now and then untidy, or none).
        /// Requests with a JSON response_format are answered as before.
        #[arg(long, value_name = "A,B,C", value_delimiter = ',', value_parser = parse_label_arg)]
        labels: Vec<String>,
        /// For `parse: regex` jobs: answer with text this regex matches (a number, `Score: 7`,
        /// `7/10`, a letter A-E, yes/no, pass/fail, true/false or a label), where one does.
        #[arg(long, value_name = "REGEX", value_parser = parse_pattern_arg)]
        pattern: Option<String>,
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
        #[arg(long, value_parser = parse_count_arg)]
        max_tokens: Option<u64>,
        /// Most rows per part.
        #[arg(long, value_parser = parse_count_arg)]
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

/// A count of at least 1 (rows, tokens), in words when it is not one.
fn parse_count_arg(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    units::parse_size(s)
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    units::parse_duration(s)
}

/// A share as the spec takes it: `5%` or a fraction such as `0.05`.
/// A label of `--labels`: not blank (`a,,b` is a slip).
fn parse_label_arg(s: &str) -> Result<String, String> {
    let label = s.trim();
    if label.is_empty() {
        return Err("a label is empty; write e.g. --labels billing,bug,feature".into());
    }
    Ok(label.to_string())
}

/// `--pattern`: a regular expression as `output.pattern` takes it.
fn parse_pattern_arg(s: &str) -> Result<String, String> {
    crate::answer::compile_pattern(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("not a valid regular expression: {e}"))
}

/// The simulator's answer shape from `--labels` and `--pattern`: a pattern
/// wins (the labels are among the answers it tries).
fn answer_shape(labels: Vec<String>, pattern: Option<String>) -> AnswerShape {
    match pattern {
        Some(pattern) => AnswerShape::Pattern { pattern, labels },
        None if labels.is_empty() => AnswerShape::Free,
        None => AnswerShape::Labels(labels),
    }
}

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

impl Cli {
    /// The plain settings that commands take.
    pub fn resolve(self) -> (Global, Invocation) {
        let g = self.global;
        let new_state = matches!(
            self.command,
            Command::Plan {
                new_state: true,
                ..
            } | Command::Apply {
                new_state: true,
                ..
            }
        );
        let global = Global {
            state_explicit: g.state.is_some(),
            state_root: g.state.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE)),
            new_state,
            pricing: g.pricing,
            output: OutputMode {
                json: g.json,
                quiet: g.quiet,
                no_color: g.no_color,
            },
            typed: Vec::new(),
        };
        let invocation = match self.command {
            Command::Validate { spec } => Invocation::Validate { spec },
            Command::Schema => Invocation::Schema,
            Command::Plan {
                spec,
                detailed_exitcode,
                ..
            } => Invocation::Plan {
                spec,
                detailed_exitcode,
            },
            Command::Apply {
                spec,
                detach,
                yes,
                retry_failed,
                retry_parse_failures,
                sample,
                seed,
                ..
            } => Invocation::Apply(ApplySettings {
                spec,
                job: None,
                detach,
                yes,
                resume: false,
                retry_failed,
                retry_parse_failures,
                sample,
                seed,
            }),
            Command::Resume {
                job,
                detach,
                retry_failed,
                retry_parse_failures,
            } => Invocation::Apply(ApplySettings {
                spec: None,
                job,
                detach,
                yes: true,
                resume: true,
                retry_failed,
                retry_parse_failures,
                sample: None,
                seed: 0,
            }),
            Command::Status {
                job,
                watch,
                exit_status,
            } => Invocation::Status {
                job,
                watch,
                exit_status,
            },
            Command::Cancel { job } => Invocation::Cancel { job },
            Command::Costs { since } => Invocation::Costs { since },
            Command::Export {
                job,
                out,
                disagreements,
            } => Invocation::Export {
                job,
                out,
                disagreements,
            },
            Command::Report { job, out } => Invocation::Report { job, out },
            Command::SimulateServer {
                port,
                data_dir,
                api_key,
                validating,
                in_progress,
                finalizing,
                request_failure_rate,
                reject_requests,
                request_flake_rate,
                http_error_rate,
                rate_limit_rate,
                server_error_rate,
                create_commit_error_rate,
                token_limit_every,
                expire_every,
                bill_extra_prompt_tokens,
                drop_metadata,
                malformed_results,
                twin_create_rate,
                api,
                labels,
                pattern,
            } => Invocation::SimulateServer {
                config: SimConfig {
                    data_dir,
                    api_key,
                    validating,
                    in_progress,
                    finalizing,
                    request_failure_rate,
                    reject_rate: reject_requests,
                    request_flake_rate,
                    http_error_rate,
                    rate_limit_rate,
                    server_error_rate,
                    create_commit_error_rate,
                    token_limit_every,
                    expire_every,
                    seed: 0,
                    drop_metadata,
                    malformed_results,
                    twin_create_rate,
                    anthropic: api == SimApiArg::Anthropic,
                    answers: answer_shape(labels, pattern),
                    extra_prompt_tokens: bill_extra_prompt_tokens,
                },
                port,
            },
            Command::Tokens {
                target,
                count,
                limit,
            } => Invocation::Tokens {
                target: count.target(target),
                limit,
            },
            Command::Split {
                target,
                count,
                out_dir,
                max_tokens,
                max_rows,
                max_bytes,
            } => Invocation::Split {
                target: count.target(target),
                limits: SplitLimits {
                    max_tokens,
                    max_rows,
                    max_bytes,
                },
                out_dir,
            },
        };
        (global, invocation)
    }
}

impl CountArgs {
    fn target(self, path: PathBuf) -> CountTarget {
        CountTarget {
            path,
            model: self.model,
            column: self.column,
            format: self.format,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn resume_never_asks_and_never_replans() {
        let cli = parse(["batchgrader", "--state", "s", "resume", "job", "--detach"]).unwrap();
        let (global, inv) = cli.resolve();
        assert_eq!(global.state_root, PathBuf::from("s"));
        match inv {
            Invocation::Apply(a) => {
                assert!(a.resume && a.yes && a.detach && a.spec.is_none());
                assert_eq!(a.job.as_deref(), Some("job"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failure_rates_are_shares() {
        for bad in ["1.5", "-0.1", "lots"] {
            let flag = format!("--http-error-rate={bad}");
            let e = parse(["batchgrader", "simulate-server", &flag]).unwrap_err();
            assert!(e.to_string().contains("e.g. 5%"), "{e}");
        }
        for good in ["0.5", "5%", "0"] {
            assert!(parse(["batchgrader", "simulate-server", "--http-error-rate", good]).is_ok());
        }
    }

    #[test]
    fn labels_and_a_pattern_set_the_answer_shape() {
        let shape = |args: &[&str]| {
            let mut argv = vec!["batchgrader", "simulate-server"];
            argv.extend_from_slice(args);
            match parse(argv).unwrap().resolve().1 {
                Invocation::SimulateServer { config, .. } => config.answers,
                other => panic!("{other:?}"),
            }
        };
        let ab = vec!["a".to_string(), "b c".into()];
        assert_eq!(shape(&[]), AnswerShape::Free);
        assert_eq!(
            shape(&["--labels", "a, b c"]),
            AnswerShape::Labels(ab.clone())
        );
        assert_eq!(
            shape(&["--labels", "a", "--labels", "b c"]),
            AnswerShape::Labels(ab.clone())
        );
        assert_eq!(
            shape(&["--pattern", r"(\d+)", "--labels", "a,b c"]),
            AnswerShape::Pattern {
                pattern: r"(\d+)".into(),
                labels: ab
            }
        );
        for bad in [&["--labels", "a,,b"][..], &["--pattern", "("]] {
            let mut argv = vec!["batchgrader", "simulate-server"];
            argv.extend_from_slice(bad);
            assert!(parse(argv).is_err(), "{bad:?}");
        }
    }
}

/// `simulate-server --api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimApiArg {
    Openai,
    Anthropic,
}
