//! Bytes moved and time taken by each local step of a run (upload,
//! download, ingest, output), so a run can say how fast each went: one
//! line in the events log at the end, which `bench/scale` reports as MB/s.

use std::time::Duration;

/// The steps, in the order a chunk goes through them.
pub const STEPS: [&str; 4] = ["upload", "download", "ingest", "output"];

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Throughput {
    /// Per step of `STEPS`: bytes and time.
    totals: [(u64, Duration); 4],
}

impl Throughput {
    /// Count `bytes` moved by `step` in `took`. An unknown step is a bug
    /// in the caller, and is ignored rather than stopping a job.
    pub fn add(&mut self, step: &str, bytes: u64, took: Duration) {
        if let Some(i) = STEPS.iter().position(|s| *s == step) {
            self.totals[i].0 += bytes;
            self.totals[i].1 += took;
        }
    }

    /// "upload 12.0 MB in 0.50 s (24.0 MB/s); …" over the steps that
    /// moved anything; None when none did. MB are 10^6 bytes.
    pub fn line(&self) -> Option<String> {
        let parts: Vec<String> = STEPS
            .iter()
            .zip(&self.totals)
            .filter(|(_, (bytes, _))| *bytes > 0)
            .map(|(step, (bytes, took))| {
                let mb = *bytes as f64 / 1e6;
                let secs = took.as_secs_f64();
                let rate = if secs > 0.0 {
                    format!("{:.1} MB/s", mb / secs)
                } else {
                    "too fast to time".to_string()
                };
                format!("{step} {mb:.1} MB in {secs:.2} s ({rate})")
            })
            .collect();
        (!parts.is_empty()).then(|| format!("throughput: {}", parts.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_each_step_that_moved_bytes() {
        let ms = Duration::from_millis;
        type Adds<'a> = Vec<(&'a str, u64, Duration)>;
        let cases: Vec<(Adds, Option<&str>)> = vec![
            (vec![], None),
            (vec![("upload", 0, ms(5))], None),
            (
                vec![("upload", 12_000_000, ms(250)), ("upload", 0, ms(250))],
                Some("throughput: upload 12.0 MB in 0.50 s (24.0 MB/s)"),
            ),
            (
                vec![
                    ("output", 3_000_000, ms(1000)),
                    ("download", 1_500_000, ms(0)),
                    ("nonsense", 9, ms(9)),
                ],
                Some(
                    "throughput: download 1.5 MB in 0.00 s (too fast to time); \
                     output 3.0 MB in 1.00 s (3.0 MB/s)",
                ),
            ),
        ];
        for (adds, want) in cases {
            let mut t = Throughput::default();
            for (step, bytes, took) in &adds {
                t.add(step, *bytes, *took);
            }
            assert_eq!(t.line().as_deref(), want, "{adds:?}");
        }
    }
}
