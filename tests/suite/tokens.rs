//! Token counts against OpenAI's own tiktoken (values in
//! tests/fixtures/tiktoken_expected.json, made by tests/fixtures/gen/), and
//! the `tokens` command.

use crate::common;

use batchgrader::tokenize::{Counter, Encoding, encoding_for_model};
use common::{Sandbox, repo, spec};
use serde_json::Value;

fn fixture() -> Value {
    let text =
        std::fs::read_to_string(repo().join("tests/fixtures/tiktoken_expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn string_counts_match_tiktoken() {
    let f = fixture();
    let o200k = Counter::new(Encoding::O200kBase).unwrap();
    let cl100k = Counter::new(Encoding::Cl100kBase).unwrap();
    let cases = f["strings"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            o200k.count(text) as u64,
            case["o200k_base"].as_u64().unwrap(),
            "o200k {text:?}"
        );
        assert_eq!(
            cl100k.count(text) as u64,
            case["cl100k_base"].as_u64().unwrap(),
            "cl100k {text:?}"
        );
    }
}

#[test]
fn chat_counts_match_the_cookbook_with_tiktoken() {
    let f = fixture();
    for case in f["chats"].as_array().unwrap() {
        let model = case["model"].as_str().unwrap();
        let (encoding, guessed) = encoding_for_model(model);
        assert!(!guessed, "{model}");
        assert_eq!(
            encoding.to_string(),
            case["encoding"].as_str().unwrap(),
            "{model}"
        );
        let counter = Counter::new(encoding).unwrap();
        let messages: Vec<(&str, &str)> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let want = case["tokens"].as_u64().unwrap();
        assert_eq!(
            counter.chat_tokens(messages.iter().copied()) as u64,
            want,
            "{model} {messages:?}"
        );
        // The plan counts a system + user request as a fixed part plus the
        // user text; that shortcut must give the same number.
        if let [("system", system), ("user", user)] = messages.as_slice() {
            let shortcut = counter.fixed_chat_tokens(Some(system)) + counter.count(user);
            assert_eq!(shortcut as u64, want, "{model} shortcut");
        }
        if let [("user", user)] = messages.as_slice() {
            let shortcut = counter.fixed_chat_tokens(None) + counter.count(user);
            assert_eq!(shortcut as u64, want, "{model} shortcut without system");
        }
    }
}

#[test]
fn tokens_command_reports_per_row_statistics() {
    let sb = Sandbox::new();
    let texts = [
        "one",
        "two words",
        "three words here",
        "a much longer row of text than the others",
    ];
    let mut csv = String::from("id,text\n");
    for (i, t) in texts.iter().enumerate() {
        csv.push_str(&format!("{i},{t}\n"));
    }
    sb.write("in.csv", &csv);
    let counter = Counter::new(Encoding::O200kBase).unwrap();
    let counts: Vec<u64> = texts.iter().map(|t| counter.count(t) as u64).collect();

    let run = sb.run(&[
        "tokens", "in.csv", "--column", "text", "--limit", "3", "--json",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let v = run.json();
    assert_eq!(v["rows"], 4);
    assert_eq!(v["total"], counts.iter().sum::<u64>());
    assert_eq!(v["max"], *counts.iter().max().unwrap());
    assert_eq!(v["max_row"], "4");
    assert_eq!(
        v["over_limit"],
        counts.iter().filter(|c| **c > 3).count() as u64
    );
    assert_eq!(v["encoding"], "o200k_base");

    // With a spec, rows are counted as the requests the plan sends.
    sb.write("s.yaml", spec("tok", "in.csv", "Grade: {{ text }}", ""));
    let tokens = sb.run(&["tokens", "s.yaml", "--json"]);
    assert_eq!(tokens.code, 0, "{tokens:?}");
    let plan = sb.run(&["plan", "s.yaml", "--json"]);
    assert_eq!(tokens.json()["total"], plan.json()["prompt_tokens"]);

    let bad = sb.run(&["tokens", "in.csv", "--column", "nope"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("no column `nope`"), "{bad:?}");
}

/// The plan's "at most" is a bound on the simulated provider: it bills
/// prompts by the rule the plan counts with, in batch and direct mode, for
/// texts in several scripts, and the summary says nothing of passing it.
#[test]
fn the_simulated_provider_bills_what_the_plan_counted() {
    let texts = [
        "The sky is blue because of Rayleigh scattering.",
        "Le ciel est bleu à cause de la diffusion de Rayleigh.",
        "空が青いのはレイリー散乱のためです。",
        "Небо голубое из-за рэлеевского рассеяния.",
        "emoji 🌍🌈 and numbers 3.14159, 2,718",
    ];
    for mode in ["batch", "direct"] {
        let sb = Sandbox::new();
        let mut csv = String::from("text\n");
        for t in texts {
            csv.push_str(&format!("\"{t}\"\n"));
        }
        sb.write("in.csv", &csv);
        let provider = format!(
            "provider:\n  kind: simulated\n  mode: {mode}\n  simulated: {{ validating: 10ms, in_progress: 50ms, finalizing: 10ms }}\npoll:\n  interval: 50ms\n  max_interval: 100ms\n"
        );
        sb.write(
            "s.yaml",
            spec("bound", "in.csv", "Grade: {{ text }}", &provider),
        );
        let plan = sb.run(&["plan", "s.yaml", "--json"]);
        assert_eq!(plan.code, 0, "{mode}: {plan:?}");
        let p = plan.json();
        let at_most = p["estimate"]["high"]
            .as_f64()
            .expect("max_tokens gives a bound");
        let apply = sb.run(&["apply", "s.yaml", "--yes", "--json"]);
        assert_eq!(apply.code, 0, "{mode}: {apply:?}");
        let (billed_in, _) = common::ledger_tokens(&sb, "bound");
        assert_eq!(billed_in, p["prompt_tokens"].as_u64().unwrap(), "{mode}");
        let spent = apply.json()["actual_cost_usd"].as_f64().unwrap();
        assert!(
            spent > 0.0 && spent <= at_most,
            "{mode}: {spent} > {at_most}"
        );
        assert!(
            !apply.stderr.contains("more than the plan"),
            "{mode}: {apply:?}"
        );
    }
}

/// One price row of the shipped table, read here apart from the program's
/// own parser: (input, batch input, batch output, cached input, cache
/// write) per 1M.
fn shipped_price(model: &str) -> (f64, f64, f64, Option<f64>, Option<f64>) {
    let text = std::fs::read_to_string(repo().join("config/pricing.csv")).unwrap();
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("{model},")))
        .unwrap_or_else(|| panic!("no row for {model}"));
    let c: Vec<&str> = row.split(',').collect();
    assert_eq!(c.len(), 8, "{row}");
    let opt = |s: &str| (!s.is_empty()).then(|| s.parse::<f64>().unwrap());
    (
        c[1].parse().unwrap(),
        c[3].parse().unwrap(),
        c[4].parse().unwrap(),
        opt(c[5]),
        opt(c[6]),
    )
}

/// A job with a ~2,000-token rubric, graded in one batch on each simulated
/// provider: its request lines ask for caching, the simulator bills the
/// cache (its rule, worked out here from the rubric's length), and the
/// ledger's cost and the receipt's saving are what the price table says,
/// computed here without the program's cost code.
#[test]
fn a_long_rubric_is_cached_counted_and_priced_on_both_providers() {
    const ROWS: u64 = 6;
    let rubric = "Grade the essay for clarity and evidence. ".repeat(250);
    for (api, model) in [
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-sonnet-4-5"),
    ] {
        let sb = Sandbox::new();
        let mut csv = String::from("id,text\n");
        for i in 1..=ROWS {
            csv.push_str(&format!("k{i},essay number {i}\n"));
        }
        sb.write("in.csv", csv);
        let yaml = spec("job", "in.csv", "Grade: {{ text }}", "")
            .replace("model: gpt-4o-mini\n", &format!("model: {model}\n"))
            .replace(
                "name: job\n",
                &format!("name: job\nprovider:\n  kind: simulated\n  simulated: {{api: {api}, validating: 10ms, in_progress: 50ms, finalizing: 10ms}}\npoll: {{interval: 100ms, max_interval: 200ms}}\n"),
            )
            .replace("  system: Grade it.\n", &format!("  system: {rubric:?}\n"));
        sb.write("s.yaml", &yaml);
        // The plan's estimate gives the prompt's cost with cache hits
        // beside the one without, which its figures assume.
        let plan = sb.run(&["plan", "s.yaml", "--json"]);
        assert_eq!(plan.code, 0, "{api}: {plan:?}");
        let e = &plan.json()["estimate"];
        let with_hits = e["cached"]["low"].as_f64().unwrap();
        assert!(with_hits < e["low"].as_f64().unwrap(), "{api}: {e}");
        let plan = sb.run(&["plan", "s.yaml"]);
        assert!(
            plan.stderr.contains("shared prefix") && plan.stderr.contains("assume no cache hits"),
            "{api}: {plan:?}"
        );
        let run = sb.run(&["apply", "s.yaml"]);
        assert_eq!(run.code, 0, "{api}: {run:?}");
        let lines = common::chunk_lines(&sb, "job");
        assert_eq!(lines.len() as u64, ROWS);
        let field = if api == "openai" {
            "prompt_cache_key"
        } else {
            "cache_control"
        };
        assert!(
            lines.iter().all(|l| l["body"].get(field).is_some()),
            "{api}: every line asks for caching"
        );

        // The simulator's rule: the system message counts as the plan
        // counts it (OpenAI's chat format: 3 tokens, then the role and the
        // content in o200k_base, counted here with tiktoken itself); the
        // batch's first request writes it, the others read it (OpenAI: in
        // whole 128-token blocks).
        let bpe = tiktoken_rs::o200k_base().unwrap();
        let prefix =
            (3 + bpe.encode_ordinary("system").len() + bpe.encode_ordinary(&rubric).len()) as u64;
        let (write, read) = if api == "openai" {
            (0, (ROWS - 1) * (prefix / 128 * 128))
        } else {
            (prefix, (ROWS - 1) * prefix)
        };
        let ledger = sb.read("state/usage.jsonl");
        let entries: Vec<Value> = ledger
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(entries.len(), 1, "{api}: one batch: {ledger}");
        let e = &entries[0];
        let n = |k: &str| e[k].as_u64().unwrap_or(0);
        assert_eq!(
            (n("cache_write_tokens"), n("cache_read_tokens")),
            (write, read),
            "{api}: {e}"
        );

        let (input, batch_input, output_price, cached, cache_write) = shipped_price(model);
        let discount = batch_input / input;
        let read_price = cached.unwrap_or(input) * discount;
        let write_price = cache_write.unwrap_or(input) * discount;
        let saved = ((write + read) as f64 * batch_input
            - write as f64 * write_price
            - read as f64 * read_price)
            / 1e6;
        assert!(saved > 0.0, "{api}: the cache paid off");
        let got = e["cache_saved_usd"].as_f64().unwrap();
        assert!(
            (got - saved).abs() < 1e-12,
            "{api}: saved {got}, want {saved}"
        );
        // The receipt says the same.
        let status = sb.run(&["status", "job", "--json"]);
        let r = &status.json()["receipt"];
        let receipt = r["cache_saved_usd"].as_f64().unwrap();
        assert!((receipt - saved).abs() < 1e-12, "{api}: receipt {r}");
        // And the ledger's cost is the table's prices over its tokens.
        let cost = (n("input_tokens") as f64 * batch_input
            + n("output_tokens") as f64 * output_price
            + write as f64 * write_price
            + read as f64 * read_price)
            / 1e6;
        let paid = e["cost_usd"].as_f64().unwrap();
        assert!(
            (paid - cost).abs() < 1e-12,
            "{api}: paid {paid}, want {cost}"
        );
    }
}
