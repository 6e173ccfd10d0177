//! `simulate-server`: the simulated provider on its own, until Ctrl-C.

use std::path::PathBuf;

use super::connect::runtime;
use crate::error::{Error, Result};
use crate::exit::Code;
use crate::simulate::SimConfig;
use crate::ui::Ui;

pub fn run(config: SimConfig, port: u16, ui: &Ui) -> Result<Code> {
    if let Some(dir) = &config.data_dir {
        super::must_be_folder("--data-dir", dir)?;
    }
    if let Some(note) = config.answers.note() {
        // On stderr: the first line on stdout is the URL, for scripts.
        ui.warn(&note);
    }
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
