//! `split`: parts under the limits, same format, rows copied verbatim.

use crate::common;

use common::Sandbox;

fn parts(sb: &Sandbox, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sb.path(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn csv_parts_keep_header_and_rows_byte_for_byte() {
    let sb = Sandbox::new();
    let header = "id,text\r\n";
    let rows = [
        "007,plain\r\n",
        "2,\"quoted, with \"\"quotes\"\"\"\r\n",
        "3,\"two\r\nlines\"\r\n",
        "4,\r\n",
        "5,last row without newline",
    ];
    sb.write("in.csv", format!("{header}{}", rows.concat()));
    let run = sb.run(&[
        "split",
        "in.csv",
        "--max-rows",
        "2",
        "--out-dir",
        "parts",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        parts(&sb, "parts"),
        ["in.part-0001.csv", "in.part-0002.csv", "in.part-0003.csv"]
    );
    assert_eq!(
        sb.read("parts/in.part-0001.csv"),
        format!("{header}{}{}", rows[0], rows[1])
    );
    assert_eq!(
        sb.read("parts/in.part-0002.csv"),
        format!("{header}{}{}", rows[2], rows[3])
    );
    assert_eq!(
        sb.read("parts/in.part-0003.csv"),
        format!("{header}{}\n", rows[4])
    );
    let v = run.json();
    let counts: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [2, 2, 1]);
}

#[test]
fn jsonl_and_json_parts() {
    let sb = Sandbox::new();
    let lines = [
        r#"{"t": "a", "n": 1.50}"#,
        r#"{"t": "b"}"#,
        r#"{"t": "c", "deep": {"x": [1, 2]}}"#,
    ];
    sb.write("in.jsonl", format!("{}\n", lines.join("\n")));
    let run = sb.run(&["split", "in.jsonl", "--max-rows", "2", "--out-dir", "p"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        sb.read("p/in.part-0001.jsonl"),
        format!("{}\n{}\n", lines[0], lines[1])
    );
    assert_eq!(sb.read("p/in.part-0002.jsonl"), format!("{}\n", lines[2]));

    sb.write(
        "in.json",
        format!("[\n  {},\n  {},\n  {}\n]\n", lines[0], lines[1], lines[2]),
    );
    let run = sb.run(&["split", "in.json", "--max-rows", "2", "--out-dir", "q"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        sb.read("q/in.part-0001.json"),
        format!("[\n{},\n{}\n]\n", lines[0], lines[1])
    );
    let part2: serde_json::Value = serde_json::from_str(&sb.read("q/in.part-0002.json")).unwrap();
    assert_eq!(part2[0]["deep"]["x"][1], 2);
}

#[test]
fn token_and_byte_limits() {
    let sb = Sandbox::new();
    let mut csv = String::from("text\n");
    for i in 0..20 {
        csv.push_str(&format!("row number {i} has a few words in it\n"));
    }
    sb.write("in.csv", &csv);
    let run = sb.run(&[
        "split",
        "in.csv",
        "--max-tokens",
        "50",
        "--out-dir",
        "t",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    for p in run.json().as_array().unwrap() {
        assert!(p["tokens"].as_u64().unwrap() <= 50, "{p}");
    }
    let run = sb.run(&[
        "split",
        "in.csv",
        "--max-bytes",
        "100B",
        "--out-dir",
        "b",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let total: u64 = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 20);
    // A single row over the limit is named.
    let run = sb.run(&["split", "in.csv", "--max-bytes", "10B", "--out-dir", "x"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("in.csv:2 (row 1)"), "{run:?}");
    // No limit at all is a usage error.
    let run = sb.run(&["split", "in.csv"]);
    assert_eq!(run.code, 2, "{run:?}");
}

#[test]
fn a_second_split_into_fewer_parts_leaves_none_of_the_first() {
    let sb = Sandbox::new();
    let mut csv = String::from("id,text\n");
    for i in 1..=60 {
        csv.push_str(&format!("{i},row {i}\n"));
    }
    sb.write("in.csv", csv);
    let run = sb.run(&["split", "in.csv", "--max-rows", "10", "--out-dir", "parts"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(parts(&sb, "parts").len(), 6);
    let run = sb.run(&["split", "in.csv", "--max-rows", "30", "--out-dir", "parts"]);
    assert_eq!(run.code, 0, "{run:?}");
    let names = parts(&sb, "parts");
    assert_eq!(names.len(), 2, "{names:?}");
    // Every row once across the parts.
    let rows: usize = names
        .iter()
        .map(|n| sb.read(&format!("parts/{n}")).lines().count() - 1)
        .sum();
    assert_eq!(rows, 60);
}
