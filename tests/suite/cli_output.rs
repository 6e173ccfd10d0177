//! What the real binary shows a user, as snapshots: `--help` of every
//! command and the report of a spec error. Review a change here like code.

use crate::common;

use common::Sandbox;

/// Every command, as `batchgrader COMMAND --help` names it.
const COMMANDS: &[&str] = &[
    "validate",
    "schema",
    "plan",
    "apply",
    "resume",
    "status",
    "cancel",
    "export",
    "report",
    "costs",
    "tokens",
    "split",
    "simulate-server",
];

fn help(args: &[&str]) -> String {
    let sb = Sandbox::new();
    // Help wraps to the terminal; pin the width so the text is the same everywhere.
    let run = sb.run_env(args, &[("COLUMNS", "100")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stderr, "", "{run:?}");
    run.stdout
}

#[test]
fn top_level_help() {
    let text = help(&["--help"]);
    for c in COMMANDS {
        assert!(
            text.contains(&format!("\n  {c} ")),
            "`{c}` is listed: {text}"
        );
    }
    insta::assert_snapshot!(text);
}

#[test]
fn help_of_every_command() {
    for c in COMMANDS {
        insta::assert_snapshot!(format!("help_{c}"), help(&[c, "--help"]));
    }
}

#[test]
fn a_bad_spec_is_reported_with_places_and_exit_2() {
    let sb = Sandbox::new();
    sb.write(
        "specs/bad.yaml",
        "version: 1\nname: Essay Grades\nmodel: gpt-4o-mini\ninput:\n  path: data/in.csv\n  colour: red\nprompt:\n  user: \"{{ essay }}\"\noutput:\n  path: out/graded.csv\n  parse: label\npoll:\n  interval: soon\n",
    );
    for cmd in ["validate", "plan"] {
        let run = sb.run(&[cmd, "specs/bad.yaml"]);
        assert_eq!(run.code, 2, "{run:?}");
        assert_eq!(run.stdout, "", "{run:?}");
        let mut settings = insta::Settings::clone_current();
        // The sandbox is a fresh temporary folder each run.
        settings.add_filter(
            &regex::escape(&sb.dir.path().display().to_string()),
            "[SANDBOX]",
        );
        settings.bind(|| insta::assert_snapshot!(format!("spec_error_{cmd}"), run.stderr));
    }
}

#[test]
fn bad_arguments_exit_2_and_version_exits_0() {
    let sb = Sandbox::new();
    let run = sb.run(&["plan", "--no-such-flag", "s.yaml"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--no-such-flag"), "{run:?}");
    let run = sb.run(&["simulate-server", "--http-error-rate", "2"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("2 is not between 0 and 1"), "{run:?}");
    assert_eq!(sb.run(&["--version"]).code, 0);
}
