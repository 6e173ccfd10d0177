//! The exit codes: one table for every command.
//!
//! The table is part of the user contract. `--help` prints it (see
//! `help_text`), README.md repeats it (a test keeps the two equal), and every
//! command turns its outcome into a code through the functions below, so a
//! pipeline can branch on the code without reading any text.

use crate::status::RunState;

/// A process exit code of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Success = 0,
    Runtime = 1,
    Usage = 2,
    RowsFailed = 3,
    Halted = 4,
    Running = 5,
    BelowGate = 6,
}

/// One line of the table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub code: Code,
    pub name: &'static str,
    /// One line, as `--help` and README show it.
    pub description: &'static str,
}

/// Every exit code, in order.
pub const TABLE: &[Row] = &[
    Row {
        code: Code::Success,
        name: "success",
        description: "success; with `plan --detailed-exitcode`: success and nothing to submit",
    },
    Row {
        code: Code::Runtime,
        name: "runtime error",
        description: "runtime error (I/O, state store, network; also: the job is locked by another process); with `plan --detailed-exitcode`: any error",
    },
    Row {
        code: Code::Usage,
        name: "usage error",
        description: "usage error, invalid spec or input; with `plan --detailed-exitcode`: success and there is work to submit",
    },
    Row {
        code: Code::RowsFailed,
        name: "rows failed",
        description: "finished, but some rows failed after all retries, did not parse, or were not graded",
    },
    Row {
        code: Code::Halted,
        name: "halted",
        description: "halted by policy (failure rate, budget, chunk failure), by `cancel`, or by answering no to `apply`'s cost question",
    },
    Row {
        code: Code::Running,
        name: "still running",
        description: "still running or stopped: after `apply --detach`, after Ctrl-C (batches keep running; `resume` continues; a plan stopped by Ctrl-C keeps the previous plan), or `status --exit-status` of an unfinished or planning job",
    },
    Row {
        code: Code::BelowGate,
        name: "below the quality gate",
        description: "finished, but the judge's agreement with the gold values (`output.gold`) is under `halt.min_kappa` or `halt.min_accuracy` (comes before 3)",
    },
];

impl Code {
    pub fn value(self) -> u8 {
        self as u8
    }

    fn row(self) -> &'static Row {
        TABLE
            .iter()
            .find(|r| r.code == self)
            .expect("every code has a row in TABLE")
    }

    pub fn name(self) -> &'static str {
        self.row().name
    }

    pub fn description(self) -> &'static str {
        self.row().description
    }
}

impl From<Code> for u8 {
    fn from(c: Code) -> u8 {
        c.value()
    }
}

/// How a command reports failure. `plan --detailed-exitcode` follows
/// Terraform, where 2 means "changes present", so no error may exit 2 there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Convention {
    #[default]
    Standard,
    DetailedPlan,
}

/// The code of a command that stopped on an error whose own code
/// (`Error::exit_code`) is `code`.
pub fn for_error(code: Code, convention: Convention) -> Code {
    match convention {
        Convention::Standard => code,
        Convention::DetailedPlan => Code::Runtime,
    }
}

/// The code of command-line arguments that clap refused, or of `--help` and
/// `--version`, which clap answers itself.
pub fn for_arguments(help_or_version: bool) -> Code {
    if help_or_version {
        Code::Success
    } else {
        Code::Usage
    }
}

/// The code of a plan that succeeded: with `--detailed-exitcode`, whether
/// there is work to submit.
pub fn for_plan(outstanding: u64, detailed_exitcode: bool) -> Code {
    if detailed_exitcode && outstanding > 0 {
        Code::Usage
    } else {
        Code::Success
    }
}

/// How an `apply` or `resume` run that stopped without an error ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every request has a final outcome; `rows_failed` when some failed,
    /// did not parse, or were not graded.
    Finished {
        rows_failed: bool,
        /// The quality gate (`halt.min_kappa`, `halt.min_accuracy`) failed.
        below_gate: bool,
    },
    Halted,
    /// Detached or interrupted: batches may still be out.
    StillRunning,
}

/// The code of an `apply` or `resume` run that ended without an error.
pub fn for_run(end: RunEnd) -> Code {
    match end {
        RunEnd::Finished {
            below_gate: true, ..
        } => Code::BelowGate,
        RunEnd::Finished {
            rows_failed: true, ..
        } => Code::RowsFailed,
        RunEnd::Finished { .. } => Code::Success,
        RunEnd::Halted => Code::Halted,
        RunEnd::StillRunning => Code::Running,
    }
}

/// `status --exit-status`: whether the job is done, halted or still going
/// (`below_gate`: finished under the quality gate).
pub fn for_run_state(state: RunState, below_gate: bool) -> Code {
    match state {
        RunState::Finished if below_gate => Code::BelowGate,
        RunState::Finished => Code::Success,
        RunState::Halted => Code::Halted,
        RunState::Planned | RunState::Running | RunState::Detached => Code::Running,
    }
}

/// The `Exit codes:` section of `--help`, wrapped to `width` columns.
pub fn help_text(width: usize) -> String {
    const INDENT: usize = 5;
    let mut out = String::from("Exit codes:");
    for row in TABLE {
        out.push_str(&format!("\n  {}  ", row.code.value()));
        let mut col = INDENT;
        for (i, word) in row.description.split(' ').enumerate() {
            if i > 0 && col + 1 + word.len() > width {
                out.push('\n');
                out.push_str(&" ".repeat(INDENT));
                col = INDENT;
            } else if i > 0 {
                out.push(' ');
                col += 1;
            }
            out.push_str(word);
            col += word.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_rows_in_order() {
        for (i, row) in TABLE.iter().enumerate() {
            assert_eq!(row.code.value() as usize, i, "{}", row.name);
            assert!(!row.description.contains('\n'), "{}", row.name);
        }
        assert_eq!(Code::Halted.name(), "halted");
        assert_eq!((Code::Usage.value(), Code::Runtime.value()), (2, 1));
    }

    /// README.md is the user's manual: its exit-code table must say what
    /// the binary does.
    #[test]
    fn readme_table_matches_the_code() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let section = readme
            .split("\n## Exit codes\n")
            .nth(1)
            .expect("README has an `## Exit codes` section");
        let rows: Vec<(u8, String)> = section
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| {
                let cells: Vec<&str> = l
                    .trim()
                    .strip_prefix('|')?
                    .strip_suffix('|')?
                    .split(" | ")
                    .collect();
                let code = cells.first()?.trim().parse().ok()?;
                Some((code, cells[1..].join(" | ").trim().to_string()))
            })
            .collect();
        let want: Vec<(u8, String)> = TABLE
            .iter()
            .map(|r| (r.code.value(), r.description.to_string()))
            .collect();
        assert_eq!(
            rows, want,
            "README's exit-code table differs from exit::TABLE"
        );
    }

    #[test]
    fn detailed_plan_follows_terraform() {
        assert_eq!(for_error(Code::Usage, Convention::Standard), Code::Usage);
        assert_eq!(
            for_error(Code::Usage, Convention::DetailedPlan),
            Code::Runtime
        );
        assert_eq!(for_plan(0, true), Code::Success);
        assert_eq!(for_plan(3, true), Code::Usage);
        assert_eq!(for_plan(3, false), Code::Success);
    }

    #[test]
    fn endings_and_states() {
        let cases = [
            (
                RunEnd::Finished {
                    rows_failed: false,
                    below_gate: false,
                },
                Code::Success,
            ),
            (
                RunEnd::Finished {
                    rows_failed: true,
                    below_gate: false,
                },
                Code::RowsFailed,
            ),
            (
                RunEnd::Finished {
                    rows_failed: false,
                    below_gate: true,
                },
                Code::BelowGate,
            ),
            (
                RunEnd::Finished {
                    rows_failed: true,
                    below_gate: true,
                },
                Code::BelowGate,
            ),
            (RunEnd::Halted, Code::Halted),
            (RunEnd::StillRunning, Code::Running),
        ];
        for (end, code) in cases {
            assert_eq!(for_run(end), code, "{end:?}");
        }
        assert_eq!(for_run_state(RunState::Finished, false), Code::Success);
        assert_eq!(for_run_state(RunState::Finished, true), Code::BelowGate);
        assert_eq!(for_run_state(RunState::Halted, true), Code::Halted);
        for st in [RunState::Planned, RunState::Running, RunState::Detached] {
            assert_eq!(for_run_state(st, false), Code::Running);
        }
    }

    #[test]
    fn help_text_wraps_under_its_code() {
        let text = help_text(60);
        assert!(text.starts_with("Exit codes:\n  0  success;"), "{text}");
        for line in text.lines() {
            assert!(line.len() <= 60, "{line:?}");
        }
        assert!(
            text.contains("\n     "),
            "continuation lines are indented: {text}"
        );
    }
}
