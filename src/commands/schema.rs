//! `schema`: the JSON Schema of the job spec on stdout.

use std::io::{ErrorKind, Write};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::exit::Code;
use crate::spec;

pub fn run() -> Result<Code> {
    let mut out = std::io::stdout().lock();
    match out
        .write_all(spec::schema_json().as_bytes())
        .and_then(|()| out.flush())
    {
        // A reader that stopped early (`| head`) got what it wanted.
        Err(e) if e.kind() != ErrorKind::BrokenPipe => {
            Err(Error::io("write the schema to", PathBuf::from("stdout"), e))
        }
        _ => Ok(Code::Success),
    }
}
