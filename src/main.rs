use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(batchgrader::run(std::env::args_os()))
}
