//! Fuzz and property tests of the readers of user files: the spec reader,
//! the CSV/JSON/JSONL row readers, the price table and the prompt template.
//!
//! Random bytes and mutations of valid files go in; nothing may panic (in
//! any thread: the JSON reader parses on its own thread), and every call
//! must finish in bounded time. Valid tables made of nasty cells must come
//! back cell for cell, and byte for byte for the raw text the output writer
//! copies. The generator is a fixed-seed PRNG written here, so a failure
//! names its seed and case and reproduces exactly; `FUZZ_SEED=N` tries
//! another seed, `FUZZ_ROUNDS=N` runs longer.

use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use batchgrader::cost::PriceTable;
use batchgrader::input::{Fields, RowReader, Source};
use batchgrader::spec::{self, Format};
use batchgrader::template::Template;

/// One call on one input; generous for a debug build on a loaded machine.
const CALL_LIMIT: Duration = Duration::from_secs(3);

/// splitmix64: small, fast, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_ba7c)
}

fn rounds(default: usize) -> usize {
    std::env::var("FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

static PANICKED: AtomicBool = AtomicBool::new(false);

/// Record a panic in any thread (the JSON reader's parser runs on its own,
/// and a panic there would otherwise look like the end of the file).
fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Run `f` on one input: no panic anywhere, and done within `CALL_LIMIT`.
fn guarded<T>(what: &str, input: &[u8], f: impl FnOnce() -> T) -> T {
    watch_panics();
    let start = Instant::now();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let took = start.elapsed();
    let shown = String::from_utf8_lossy(&input[..input.len().min(400)]).into_owned();
    match out {
        Ok(v) => {
            assert!(
                !PANICKED.load(Ordering::SeqCst),
                "{what}: a thread panicked on input {shown:?}"
            );
            assert!(
                took < CALL_LIMIT,
                "{what}: took {took:?} on input {shown:?}"
            );
            v
        }
        Err(_) => panic!("{what}: panicked on input {shown:?}"),
    }
}

// ------------------------------------------------------------------ specs

const VALID_SPEC: &str = r#"version: 1
name: fuzz-job
provider:
  kind: simulated
  simulated: { validating: 10ms, in_progress: 50ms, request_failure_rate: 2% }
model: gpt-4o-mini
input:
  path: [data/a.csv, data/b.jsonl]
  id: id
prompt:
  system: "Grade it: {{ not a placeholder here }}"
  examples_file: ex.txt
  user: "Grade {{ text }}\n\n{{ id }}"
request:
  max_tokens: 16
  temperature: 0
  response_format: { type: json_object }
output:
  path: out/x.csv
  field: grade
  parse: regex
  pattern: "Grade: (\\d+)"
  expected_output_tokens: 3
chunking: { max_requests: 100, max_bytes: 190MB, max_tokens: 2000000, chunks: 4 }
concurrency: { max_batches_in_flight: 2 }
poll: { interval: 1s, max_interval: 5m }
retry: { max_attempts: 3, give_up_after: 1h }
halt: { on_chunk_failure: true, max_failure_rate: 5%, max_cost_usd: 20 }
"#;

/// Fragments that YAML and the spec's checks care about.
const SPEC_TOKENS: &[&str] = &[
    ":",
    ": ",
    "-",
    "- ",
    "\n",
    "\n  ",
    "\t",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    "#",
    "&a",
    "*a",
    "!!str",
    "!!binary",
    "? ",
    "|",
    ">",
    "%",
    "0",
    "-1",
    "1e999",
    "null",
    "~",
    "true",
    "yes",
    "18446744073709551616",
    "5%",
    "150%",
    "0s",
    "10 parsecs",
    "{{",
    "}}",
    "{{ x }}",
    "\u{feff}",
    "é",
    "\u{0}",
    "<<: *a",
    "---",
    "...",
    "version",
    "name",
    "model",
    "input",
    "path",
    "output",
    "provider",
    "kind",
    "mode",
    "request",
    "max_tokens",
    "halt",
    "pattern",
    "(",
    "\\",
];

fn mutate_text(rng: &mut Rng, text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(8) {
            0 => {
                // Cut the file short.
                bytes.truncate(at);
            }
            1 => {
                let end = (at + 1 + rng.below(40)).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            2 | 3 => {
                let tok = rng.pick(SPEC_TOKENS).as_bytes();
                bytes.splice(at..at, tok.iter().copied());
            }
            4 => {
                if at < bytes.len() {
                    bytes[at] = rng.next() as u8;
                }
            }
            5 => {
                // Repeat a stretch (a duplicated key, a doubled line).
                let end = (at + rng.below(80)).min(bytes.len());
                let piece = bytes[at..end].to_vec();
                bytes.splice(end..end, piece);
            }
            6 => {
                // Swap two lines.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<&str> = text.split('\n').collect();
                if lines.len() > 1 {
                    let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                    lines.swap(a, b);
                }
                bytes = lines.join("\n").into_bytes();
            }
            _ => {
                // Re-indent a line.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
                let i = rng.below(lines.len());
                let pad = rng.pick(&["", " ", "   ", "\t", "      "]);
                lines[i] = format!("{pad}{}", lines[i].trim_start());
                bytes = lines.join("\n").into_bytes();
            }
        }
    }
    bytes
}

/// Where the fuzzed spec "lives": a folder holding the examples file the
/// seed spec names, since `check` reads prompt files as `validate` does.
fn spec_path() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ex.txt"), "Example: 7 is a good answer.").unwrap();
        d
    });
    dir.path().join("fuzz.yaml")
}

fn check_spec(what: &str, bytes: &[u8]) {
    // The spec loader reads text: bytes that are not UTF-8 stop it before
    // the parser (`cannot read spec`); give the parser the lossy text.
    let text = String::from_utf8_lossy(bytes);
    let result = guarded(what, bytes, || spec::check(&spec_path(), &text));
    if let Err(spec::SpecError::Invalid { problems, .. }) = &result {
        assert!(
            !problems.is_empty(),
            "{what}: an invalid spec with no problem"
        );
        let lines = text.lines().count().max(1);
        for p in problems {
            assert!(
                p.line >= 1 && p.line <= lines + 1 && p.column >= 1,
                "{what}: problem placed at {}:{} outside the {lines}-line file: {p:?}\n{text}",
                p.line,
                p.column
            );
            assert!(
                !p.message.is_empty() && !p.field.is_empty(),
                "{what}: {p:?}"
            );
        }
    }
}

#[test]
fn the_spec_reader_survives_random_and_mutated_specs() {
    let seed = seed();
    let mut rng = Rng(seed);
    assert!(
        spec::check(&spec_path(), VALID_SPEC).is_ok(),
        "the seed spec is valid"
    );
    let started = Instant::now();
    for i in 0..rounds(1500) {
        let what = format!("spec seed {seed} case {i}");
        let bytes = match i % 4 {
            0 => rng.bytes(300),
            1 => {
                // A soup of YAML-ish tokens.
                let n = rng.below(60);
                (0..n)
                    .map(|_| *rng.pick(SPEC_TOKENS))
                    .collect::<String>()
                    .into_bytes()
            }
            _ => mutate_text(&mut rng, VALID_SPEC),
        };
        check_spec(&what, &bytes);
    }
    // Deep nesting and long scalars, which recursive parsers choke on.
    for (i, text) in [
        "[".repeat(10_000),
        "{a: ".repeat(5_000),
        "- ".repeat(10_000),
        format!("name: {}", "x".repeat(1_000_000)),
        format!("&a [*a, {}]", "*a, ".repeat(1000)),
        "a: &a [x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d]\n".to_string(),
    ]
    .iter()
    .enumerate()
    {
        check_spec(&format!("deep spec {i}"), text.as_bytes());
    }
    eprintln!("specs: {:?}", started.elapsed());
}

// ----------------------------------------------------------------- inputs

/// Read every row of `bytes` as a file of `format`; the number of rows, or
/// the error text. Stops after the first error, as the reader does.
fn read_all(
    dir: &Path,
    name: &str,
    format: Format,
    bytes: &[u8],
    keep_raw: bool,
) -> Result<usize, String> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let source = Source::new(&path, Some(format)).unwrap();
    let mut rows = 0;
    for row in RowReader::new(vec![source], keep_raw) {
        match row {
            Ok(row) => {
                rows += 1;
                // Touch every cell, as the planner does.
                for (k, v) in row.cells() {
                    std::hint::black_box((k.len(), v.len()));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(name),
                    "an input error must name the file: {msg}"
                );
                return Err(msg);
            }
        }
    }
    Ok(rows)
}

/// Characters that break naive CSV and JSON handling.
const NASTY: &[&str] = &[
    ",", "\"", "\"\"", "\n", "\r\n", "\r", " ", "\t", "\\", "\\\"", "{", "}", "[", "]", ":", "é",
    "世界", "🎉", "\u{feff}", "\u{2028}", "\u{0}", "007", "-0", "1e5", "null", "=1+1", "a", "b",
];

fn nasty_cell(rng: &mut Rng) -> String {
    (0..rng.below(6)).map(|_| *rng.pick(NASTY)).collect()
}

fn csv_field(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) || cell.is_empty() {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_string()
    }
}

fn random_table(rng: &mut Rng) -> (Vec<String>, Vec<Vec<String>>) {
    let cols = 2 + rng.below(4);
    let header: Vec<String> = (0..cols).map(|c| format!("c{c}")).collect();
    let rows = (0..1 + rng.below(8))
        .map(|_| (0..cols).map(|_| nasty_cell(rng)).collect())
        .collect();
    (header, rows)
}

fn to_csv(rng: &mut Rng, header: &[String], rows: &[Vec<String>]) -> String {
    let eol = *rng.pick(&["\n", "\r\n"]);
    let mut out = String::new();
    for line in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let fields: Vec<String> = line.iter().map(|c| csv_field(c)).collect();
        out.push_str(&fields.join(","));
        out.push_str(eol);
    }
    out
}

fn to_jsonl(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    for row in rows {
        let obj: serde_json::Map<String, serde_json::Value> = header
            .iter()
            .cloned()
            .zip(row.iter().map(|c| serde_json::Value::String(c.clone())))
            .collect();
        out.push_str(&serde_json::to_string(&obj).unwrap());
        out.push('\n');
    }
    out
}

fn mutate_bytes(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    const SPICE: &[&[u8]] = &[
        b"\"",
        b",",
        b"\n",
        b"\r",
        b"\xff",
        b"\xc3",
        b"\xef\xbb\xbf",
        b"{",
        b"}",
        b"[",
        b"]",
        b"\0",
        b"\\",
        b"\"\"",
        b":",
        b"null",
        b"1e999999",
    ];
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(4) {
            0 => bytes.truncate(at),
            1 => {
                let s = *rng.pick(SPICE);
                bytes.splice(at..at, s.iter().copied());
            }
            2 => {
                if at < bytes.len() {
                    bytes.remove(at);
                }
            }
            _ => {
                if at < bytes.len() {
                    bytes[at] = rng.next() as u8;
                }
            }
        }
    }
    bytes
}

#[test]
fn the_input_readers_survive_random_and_mutated_files() {
    let seed = seed();
    let mut rng = Rng(seed ^ 0x1);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    for i in 0..rounds(1200) {
        let format = *rng.pick(&[Format::Csv, Format::Json, Format::Jsonl]);
        let bytes = if rng.chance(25) {
            rng.bytes(400)
        } else {
            let (header, rows) = random_table(&mut rng);
            let valid = match format {
                Format::Csv => to_csv(&mut rng, &header, &rows),
                Format::Jsonl => to_jsonl(&header, &rows),
                Format::Json => {
                    let jsonl = to_jsonl(&header, &rows);
                    let lines: Vec<&str> = jsonl.lines().collect();
                    format!("[\n{}\n]\n", lines.join(",\n"))
                }
            };
            mutate_bytes(&mut rng, valid.into_bytes())
        };
        let keep_raw = rng.chance(50);
        let what = format!("{format} input, seed {seed} case {i}");
        guarded(&what, &bytes, || {
            let _ = read_all(
                dir.path(),
                &format!("in.{format}"),
                format,
                &bytes,
                keep_raw,
            );
        });
    }
    // Big and deep: one huge line, a huge cell, deep nesting in a JSON cell.
    let huge_cell = format!("a,b\n1,\"{}\"\n", "x\n".repeat(2_000_000));
    let deep = format!(
        "{{\"a\": {}1{}}}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let deep_array = format!(
        "[{{\"a\": {}1{}}}]\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let long_line = format!("{{\"a\": \"{}\"}}\n", "y".repeat(5_000_000));
    let many_cols = format!(
        "{}\n{}\n",
        (0..20_000)
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(","),
        ",".repeat(19_999)
    );
    for (name, format, text) in [
        ("huge cell", Format::Csv, huge_cell),
        ("deep jsonl", Format::Jsonl, deep),
        ("deep json", Format::Json, deep_array),
        ("long line", Format::Jsonl, long_line),
        ("many columns", Format::Csv, many_cols),
    ] {
        guarded(name, &text.as_bytes()[..64], || {
            let _ = read_all(
                dir.path(),
                &format!("big.{format}"),
                format,
                text.as_bytes(),
                true,
            );
        });
    }
    eprintln!("inputs: {:?}", started.elapsed());
}

#[test]
fn valid_tables_of_nasty_cells_come_back_verbatim() {
    let seed = seed();
    let mut rng = Rng(seed ^ 0x2);
    let dir = tempfile::tempdir().unwrap();
    for i in 0..rounds(300) {
        let (header, rows) = random_table(&mut rng);
        let format = *rng.pick(&[Format::Csv, Format::Jsonl]);
        let text = match format {
            Format::Csv => to_csv(&mut rng, &header, &rows),
            _ => to_jsonl(&header, &rows),
        };
        let what = format!("{format} round trip, seed {seed} case {i}");
        let path = dir.path().join(format!("t.{format}"));
        std::fs::write(&path, &text).unwrap();
        let source = Source::new(&path, None).unwrap();
        let got: Vec<_> = guarded(&what, text.as_bytes(), || {
            RowReader::new(vec![source], true).collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_else(|e| panic!("{what}: a valid file was refused: {e}\n{text:?}"));
        assert_eq!(got.len(), rows.len(), "{what}: row count\n{text:?}");
        let mut raw = String::new();
        for (n, (row, want)) in got.iter().zip(&rows).enumerate() {
            let cells: Vec<(&str, &str)> = row.cells();
            let want: Vec<(&str, &str)> = header
                .iter()
                .map(String::as_str)
                .zip(want.iter().map(String::as_str))
                .collect();
            assert_eq!(cells, want, "{what}: row {}\n{text:?}", n + 1);
            assert_eq!(row.number, n as u64 + 1, "{what}");
            if n == 0
                && let Fields::Csv { header, .. } = &row.fields
            {
                raw.push_str(header.raw.as_deref().unwrap_or_default());
            }
            let r = row.raw.as_deref().expect("raw text was asked for");
            raw.push_str(r);
            if format == Format::Jsonl {
                raw.push('\n');
            }
        }
        // The output writer copies these bytes: together they are the file.
        assert_eq!(
            raw, text,
            "{what}: the raw text of the rows is not the file"
        );
    }
}

// ------------------------------------------------------ prices and prompts

#[test]
fn the_price_table_and_templates_survive_random_text() {
    let seed = seed();
    let mut rng = Rng(seed ^ 0x3);
    let valid = "model,input_per_1m,output_per_1m,batch_input_per_1m,batch_output_per_1m,prices_as_of\n\
                 gpt-4o-mini,0.15,0.6,0.075,0.3,2026-01-01\n# a comment\ngpt-4o,2.5,10,1.25,5,2026-01-01\n";
    for i in 0..rounds(1500) {
        let bytes = if i % 3 == 0 {
            rng.bytes(200)
        } else {
            mutate_bytes(&mut rng, valid.as_bytes().to_vec())
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let what = format!("price table, seed {seed} case {i}");
        guarded(&what, &bytes, || match PriceTable::parse("p.csv", &text) {
            Ok(table) => {
                for model in ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini-2024-07-18", "", "-"] {
                    if let Some(p) = table.lookup(model) {
                        let cost = batchgrader::cost::actual(p, 1_000_000, 1_000_000);
                        assert!(cost.is_finite() && cost >= 0.0, "{what}: cost {cost}");
                    }
                }
            }
            Err(e) => assert!(e.to_string().contains("p.csv"), "{what}: {e}"),
        });
    }
    for i in 0..rounds(1500) {
        let text: String = (0..rng.below(30))
            .map(|_| {
                *rng.pick(&[
                    "{{",
                    "}}",
                    "{",
                    "}",
                    " ",
                    "text",
                    "id",
                    "é",
                    "\n",
                    "{{ text }}",
                    "x",
                ])
            })
            .collect();
        let what = format!("template {text:?}, seed {seed} case {i}");
        guarded(&what, text.as_bytes(), || {
            if let Ok(t) = Template::parse(&text) {
                let rendered = t.render(|name| match name {
                    "text" => Some("T"),
                    "id" => Some("7"),
                    _ => None,
                });
                if let Ok(r) = rendered {
                    assert!(!r.contains("{{ text }}"), "{what}: {r}");
                }
            }
        });
    }
}
