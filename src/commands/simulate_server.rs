//! `simulate-server`: the simulated provider on its own, until Ctrl-C.

use std::path::PathBuf;

use super::connect::runtime;
use crate::error::{Error, Result};
use crate::exit::Code;
use crate::simulate::SimConfig;

pub fn run(config: SimConfig, port: u16) -> Result<Code> {
    let rt = runtime()?;
    rt.block_on(crate::simulate::run_forever(config, port))
        .map_err(|e| {
            Error::io(
                "run the simulated server on port",
                PathBuf::from(port.to_string()),
                e,
            )
        })?;
    Ok(Code::Success)
}
