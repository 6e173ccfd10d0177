//! `schema`: the JSON Schema of the job spec on stdout.

use std::io::Write;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::exit::Code;
use crate::spec;

pub fn run() -> Result<Code> {
    let mut out = std::io::stdout().lock();
    out.write_all(spec::schema_json().as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("write the schema to", PathBuf::from("stdout"), e))?;
    Ok(Code::Success)
}
