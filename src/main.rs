use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = batchgrader::Cli::parse();
    ExitCode::from(batchgrader::run(cli))
}
