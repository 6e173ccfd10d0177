//! The integration tests, as one test binary: one link of the crate and its
//! dependencies instead of one per file. Each module is a group of tests of
//! the real binary or the library; `common` is the shared harness.

mod common;

mod agreement;
mod answer_shapes;
mod anthropic;
mod apply;
mod bad_input;
mod chaos;
mod cli_output;
mod deadline;
mod direct;
mod faults;
mod fuzz_readers;
mod hostile;
mod plan;
mod provider_client;
mod rehearsal;
mod reliability;
mod replan;
mod report_agreement;
mod request_schema;
mod retry_failed;
mod run_frame;
mod simulate_server;
mod split;
mod state_home;
mod structured;
mod tokens;
