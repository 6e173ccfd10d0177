//! The simulated provider in its own process (`batchgrader simulate-server`),
//! so that it outlives the `apply` processes a test kills.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use serde_json::Value;

use super::{Sandbox, bin};

/// A simulated provider in its own process.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    pub fn start(sb: &Sandbox, extra: &[&str]) -> Server {
        Server::start_at(sb, 0, "server-data", extra)
    }

    /// A server on `port` (0: any free one) keeping its data in the
    /// sandbox folder `data_dir`.
    pub fn start_at(sb: &Sandbox, port: u16, data_dir: &str, extra: &[&str]) -> Server {
        let data = sb.path(data_dir);
        let port = port.to_string();
        // Short batch timings, unless the test sets its own.
        let mut args: Vec<&str> = vec!["simulate-server", "--port", &port];
        for (flag, value) in [
            ("--validating", "50ms"),
            ("--in-progress", "300ms"),
            ("--finalizing", "50ms"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        let mut child = bin()
            .args(&args)
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start simulate-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("simulate-server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, url }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.url
            .trim_end_matches("/v1")
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the URL")
    }

    /// `/_sim/stats`: what the server saw and made.
    pub fn stats(&self) -> Value {
        let base = self.url.trim_end_matches("/v1");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            reqwest::get(format!("{base}/_sim/stats"))
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
