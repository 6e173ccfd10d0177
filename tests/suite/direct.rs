//! Direct mode (`provider.mode: direct`) end to end: the real binary against
//! the simulated provider's chat completions endpoint, run in its own
//! process so it outlives an `apply` that is killed, and counting every
//! request it answered.

use crate::common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::sim::Server;
use common::{Anthropic, Direct, DirectAnthropic, Job, Run, Sandbox, wait_for_store_release};

/// A direct job against `urls` (one, or a YAML list), `extra` appended.
fn direct_job(name: &str, urls: &[&str], in_flight: u32, extra: &str) -> String {
    Job::new(Direct, name, &common::url_list(urls))
        .in_flight(in_flight)
        .yaml(extra)
}

fn apply(sb: &Sandbox, env: &[(&str, &str)]) -> Run {
    Direct.run(sb, &["apply", "job.yaml", "--yes"], env)
}

fn resume(sb: &Sandbox) -> Run {
    Direct.run(sb, &["resume"], &[])
}

fn answered(server: &Server) -> u64 {
    server.stats()["chat_completions"].as_u64().unwrap()
}

/// Complete lines in the job's outcome log: the answers recorded durably.
fn recorded(sb: &Sandbox, job: &str) -> usize {
    let text = std::fs::read(sb.path(&format!("state/{job}/outcomes.jsonl"))).unwrap_or_default();
    text.iter().filter(|b| **b == b'\n').count()
}

#[test]
fn injected_429s_and_5xx_still_answer_every_row_once_in_input_order() {
    let rows = 120;
    let want = common::reference_output(Direct, rows);
    let sb = Sandbox::new();
    let server = Server::start(
        &sb,
        &["--rate-limit-rate", "15%", "--server-error-rate", "15%"],
    );
    sb.write("in.csv", common::standard_input(Direct, rows));
    sb.write("job.yaml", direct_job("faults", &[&server.url], 16, ""));
    let r = apply(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let stats = server.stats();
    assert!(stats["injected_429"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["injected_5xx"].as_u64().unwrap() > 0, "{stats}");
    // Each row was answered exactly once: faults come before any answer.
    assert_eq!(answered(&server), rows as u64, "{stats}");
    assert_eq!(recorded(&sb, "faults"), rows);
    let out = sb.read("out/graded.csv");
    assert_eq!(out, want, "same output as a run without faults");
    assert_eq!(out.lines().count(), rows + 1);
    // The summary names direct mode's figures, and status shows the run.
    assert!(r.stderr.contains(&format!("{rows} graded")), "{r:?}");
    let st = sb.run(&["status", "faults"]);
    assert!(
        st.stdout.contains("req/s") || st.stderr.contains("req/s"),
        "{st:?}"
    );
    assert!(
        format!("{}{}", st.stdout, st.stderr).contains("rate_limited"),
        "errors by class: {st:?}"
    );
}

#[test]
fn sigkill_mid_run_then_resume_resends_only_what_was_in_flight() {
    let rows = 400;
    let in_flight = 8u32;
    let want = common::reference_output(Direct, rows);
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    sb.write("in.csv", common::standard_input(Direct, rows));
    sb.write(
        "job.yaml",
        direct_job("kill", &[&server.url], in_flight, ""),
    );
    let r = apply(&sb, &[("BATCHGRADER_TEST_KILL_AT", "direct-commit:150")]);
    assert_eq!(r.signal, Some(9), "killed by its own hook: {r:?}");
    // Requests already on the wire still reach the server; let them land.
    std::thread::sleep(Duration::from_millis(300));
    let sent_before_kill = answered(&server);
    let durable = recorded(&sb, "kill") as u64;
    assert!(durable >= 150 && durable < rows as u64, "{durable}");
    let in_flight_at_kill = sent_before_kill - durable;
    assert!(
        in_flight_at_kill <= u64::from(in_flight) * 4,
        "{in_flight_at_kill} sent and not recorded"
    );
    wait_for_store_release(&sb, "kill");
    let r = resume(&sb);
    assert_eq!(r.code, 0, "{r:?}");
    let resent = answered(&server) - rows as u64;
    assert_eq!(
        resent, in_flight_at_kill,
        "only the requests without a recorded answer were sent again"
    );
    assert_eq!(sb.read("out/graded.csv"), want, "byte-identical output");
    // The killed run wrote no ledger line (it writes every 30 s and at its
    // end); the resume puts in what the first run recorded, so the ledger
    // holds each answer's tokens once: what the server billed, less the
    // answers it sent twice.
    let ledger = common::ledger_tokens(&sb, "kill");
    let stats = server.stats();
    let billed = (
        stats["chat_usage"]["input_tokens"].as_u64().unwrap(),
        stats["chat_usage"]["output_tokens"].as_u64().unwrap(),
    );
    let held = outcome_tokens(&sb, "kill");
    assert_eq!(ledger, held, "the ledger holds each recorded answer once");
    assert!(
        ledger.0 <= billed.0 && ledger.1 <= billed.1,
        "{ledger:?} {billed:?}"
    );
    assert_eq!(
        ledger == billed,
        resent == 0,
        "{ledger:?} {billed:?} {resent}"
    );
    let text = std::fs::read_to_string(sb.path("state/usage.jsonl")).unwrap();
    assert!(text.contains("-recovered\""), "{text}");
    // A run with nothing to do adds nothing.
    let r = resume(&sb);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(common::ledger_tokens(&sb, "kill"), held);
}

/// The tokens of the answers in the job's outcome log (the last line per
/// request).
fn outcome_tokens(sb: &Sandbox, job: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(sb.path(&format!("state/{job}/outcomes.jsonl"))).unwrap();
    let mut last = std::collections::HashMap::new();
    for l in text.lines() {
        let json = l.split('\t').next().unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        last.insert(v["f"].as_str().unwrap().to_string(), v);
    }
    last.values()
        .filter(|v| v["kind"] == "success")
        .fold((0, 0), |t, v| {
            (
                t.0 + v["input_tokens"].as_u64().unwrap(),
                t.1 + v["output_tokens"].as_u64().unwrap(),
            )
        })
}

#[test]
fn two_endpoints_one_down_the_job_completes_on_the_other() {
    let rows = 60;
    let want = common::reference_output(Direct, rows);
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    // A port nobody listens on: connections are refused.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/v1", l.local_addr().unwrap().port())
    };
    sb.write("in.csv", common::standard_input(Direct, rows));
    sb.write("job.yaml", direct_job("two", &[&dead, &server.url], 8, ""));
    let r = apply(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(answered(&server), rows as u64);
    assert_eq!(sb.read("out/graded.csv"), want);
    assert!(
        r.stderr.contains(&format!("endpoint {dead} left out")),
        "{r:?}"
    );
}

/// A replica that takes every request and never answers: it reads what
/// comes and holds the connection open for two minutes.
fn hung_replica() -> String {
    use std::io::Read;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    format!("http://127.0.0.1:{port}/v1")
}

#[test]
fn a_hung_replica_is_hedged_to_a_healthy_one_and_each_row_is_recorded_once() {
    let rows = 40;
    let want = common::reference_output(Direct, rows);
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    let hung = hung_replica();
    sb.write("in.csv", common::standard_input(Direct, rows));
    sb.write(
        "job.yaml",
        direct_job("hedge", &[&hung, &server.url], 4, ""),
    );
    // Each call may wait a minute: without hedging, the requests sent to
    // the hung replica would hold the run that long.
    let t = Instant::now();
    let r = apply(&sb, &[("BATCHGRADER_HTTP_TIMEOUT", "60s")]);
    let took = t.elapsed();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(took < Duration::from_secs(50), "{took:?}: {r:?}");
    // Every row answered by the healthy replica once (a hung copy never
    // answers), recorded once, in input order.
    assert_eq!(answered(&server), rows as u64);
    assert_eq!(recorded(&sb, "hedge"), rows);
    assert_eq!(sb.read("out/graded.csv"), want);
    // The ledger holds each answer once.
    assert_eq!(
        common::ledger_tokens(&sb, "hedge"),
        outcome_tokens(&sb, "hedge")
    );
    let stats = server.stats();
    assert_eq!(
        common::ledger_tokens(&sb, "hedge"),
        (
            stats["chat_usage"]["input_tokens"].as_u64().unwrap(),
            stats["chat_usage"]["output_tokens"].as_u64().unwrap()
        )
    );
    // Said once, naming the replica it waited on and the one it went to.
    let said = format!(
        "{hung} has not answered a chat completion in 5s, 4× its recent answers' 95th percentile (at least 5s): sent to {} as well",
        server.url
    );
    assert_eq!(r.stderr.matches(&said).count(), 1, "{r:?}");
    // The plain progress line names the request it waits on.
    let host = hung.trim_start_matches("http://").trim_end_matches("/v1");
    assert!(
        r.stderr
            .contains(&format!("waiting for {host}: chat completion, ")),
        "{r:?}"
    );
}

#[test]
fn ctrl_c_stops_sending_at_once_and_resume_finishes() {
    let rows = 80;
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    sb.write("in.csv", common::standard_input(Direct, rows));
    // 600 a minute: ten a second, so the run takes eight seconds.
    sb.write(
        "job.yaml",
        direct_job("stop", &[&server.url], 4, "  requests_per_minute: 600\n"),
    );
    let child = sb
        .command(&["apply", "job.yaml", "--yes"])
        .env(Direct.key_env(), Direct.key())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `status` works while it runs, from the snapshot.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = sb.run(&["status", "stop"]);
        let text = format!("{}{}", st.stdout, st.stderr);
        if text.contains("running") && text.contains("req/s") {
            break;
        }
        assert!(Instant::now() < deadline, "no live status: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let stopped_at = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        stopped_at.elapsed() < Duration::from_secs(3),
        "Ctrl-C stops at once"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("batchgrader resume"), "{stderr}");
    let sent = answered(&server);
    assert!(sent < rows as u64, "stopped before the end: {sent}");
    // Ten a second at most (a one-second burst allowed).
    wait_for_store_release(&sb, "stop");
    let r = resume(&sb);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sb.read("out/graded.csv").lines().count(), rows + 1);
    assert!(
        answered(&server) - (rows as u64) <= 4,
        "at most the in-flight ones again"
    );
}

#[test]
fn a_failure_rate_above_the_policy_halts_and_writes_what_was_graded() {
    let rows = 40;
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    sb.write("in.csv", common::standard_input(Direct, rows));
    // The server refuses a max_tokens above its model's output limit with a
    // 400 (only the server knows the limit): every row is a final failure.
    let spec = direct_job(
        "halt",
        &[&server.url],
        4,
        "halt:\n  max_failure_rate: 10%\n",
    )
    .replace("  max_tokens: 4\n", "  max_tokens: 100000\n");
    sb.write("job.yaml", spec);
    let r = apply(&sb, &[]);
    assert_eq!(r.code, 4, "halted by policy: {r:?}");
    assert!(r.stderr.contains("max_failure_rate"), "{r:?}");
    assert!(sb.path("out/graded.csv").exists());
}

#[test]
fn the_report_and_costs_show_a_direct_jobs_spend_from_the_ledger() {
    let rows = 40;
    let sb = Sandbox::new();
    let server = Server::start(&sb, &[]);
    sb.write("in.csv", common::standard_input(Direct, rows));
    sb.write("job.yaml", direct_job("spend", &[&server.url], 8, ""));
    let r = apply(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let (input, output) = common::ledger_tokens(&sb, "spend");
    assert!(input > 0 && output > 0, "{input} {output}");
    let cost: f64 = sb
        .read("state/usage.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["job"] == "spend")
        .map(|v| v["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(cost > 0.0, "a priced model's direct run costs something");
    let rep = sb.run(&["report", "spend", "--out", "r.html"]);
    assert_eq!(rep.code, 0, "{rep:?}");
    let html = sb.read("r.html");
    assert!(html.contains("paid (direct, standard prices)"), "{html}");
    assert!(html.contains(&batchgrader::cost::usd(cost)), "{cost}");
    let billed = format!(
        "{} in, {} out",
        batchgrader::ui::num(input),
        batchgrader::ui::num(output)
    );
    assert!(html.contains(&billed), "{billed}");
    assert!(!html.contains("$-0"), "no negative zero");
    assert!(!html.contains("No chunk was submitted yet."));
    let costs = sb.run(&["costs"]);
    let text = format!("{}{}", costs.stdout, costs.stderr);
    assert!(text.contains("direct (standard prices)"), "{text}");
    assert!(text.contains("direct runs"), "{text}");
    assert!(
        !text.contains("0 batches"),
        "a direct run is no batch: {text}"
    );
    // The plan names the price the lane pays.
    let plan = sb.run(&["plan", "job.yaml"]);
    assert!(
        plan.stderr.contains("cost (direct, standard prices)")
            || plan.stdout.contains("cost (direct, standard prices)"),
        "{plan:?}"
    );
}

// ------------------------------------------------------------ Claude direct

/// Messages the simulated Anthropic API answered.
fn messages_answered(server: &Server) -> u64 {
    server.stats()["messages"].as_u64().unwrap()
}

/// The tokens the simulated Anthropic API billed for direct messages.
fn messages_billed(server: &Server) -> (u64, u64) {
    let s = server.stats();
    (
        s["messages_usage"]["input_tokens"].as_u64().unwrap(),
        s["messages_usage"]["output_tokens"].as_u64().unwrap(),
    )
}

#[test]
fn claude_direct_through_429_and_529_storms_answers_every_row_once_as_its_batches_do() {
    let rows = 40;
    let job = common::standard_name(DirectAnthropic);
    let sb = Sandbox::new();
    let server = DirectAnthropic.server(
        &sb,
        &["--rate-limit-rate", "20%", "--server-error-rate", "20%"],
    );
    common::standard_job(&sb, DirectAnthropic, &server.url, rows, "");
    let r = DirectAnthropic.run(&sb, &["apply", "job.yaml", "--yes"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let stats = server.stats();
    assert!(stats["injected_429"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["injected_5xx"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["batches_created"], 0, "direct mode makes no batches");
    // Faults come before any answer: each row was answered exactly once.
    assert_eq!(messages_answered(&server), rows as u64, "{stats}");
    assert_eq!(recorded(&sb, job), rows);
    let out = sb.read("out/graded.csv");
    assert_eq!(
        out.lines().count(),
        rows + 1 + 1,
        "a cell holds a line break"
    );
    // In input order, and what the Message Batches lane writes for the
    // same rows: the simulator answers a request alike in both lanes.
    assert_eq!(out, common::reference_output(Anthropic, rows));
    assert_eq!(out, common::reference_output(DirectAnthropic, rows));
    // The ledger holds what the server billed, at standard prices
    // (claude-haiku-4-5: $1 / $5 per million input / output tokens).
    let billed = messages_billed(&server);
    assert_eq!(common::ledger_tokens(&sb, job), billed);
    let text = sb.read("state/usage.jsonl");
    let mut cost = 0.0;
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["provider"], "anthropic", "{l}");
        assert_eq!(v["cost_usd"], v["standard_cost_usd"], "{l}");
        cost += v["cost_usd"].as_f64().unwrap();
    }
    let want = (billed.0 as f64 * 1.0 + billed.1 as f64 * 5.0) / 1e6;
    assert!((cost - want).abs() < 1e-9, "{cost} {want}");
    let st = sb.run(&["status", job]);
    let shown = format!("{}{}", st.stdout, st.stderr);
    assert!(shown.contains("rate_limited"), "{shown}");
    assert!(shown.contains("server_error"), "{shown}");
    common::assert_key_nowhere(&sb, DirectAnthropic.key(), &[&r, &st]);
}

#[test]
fn claude_direct_sigkill_then_resume_resends_only_what_was_in_flight() {
    let rows = 200;
    let in_flight = 8u64;
    let job = common::standard_name(DirectAnthropic);
    let sb = Sandbox::new();
    let server = DirectAnthropic.server(&sb, &[]);
    common::standard_job(&sb, DirectAnthropic, &server.url, rows, "");
    let r = DirectAnthropic.run(
        &sb,
        &["apply", "job.yaml", "--yes"],
        &[("BATCHGRADER_TEST_KILL_AT", "direct-commit:80")],
    );
    assert_eq!(r.signal, Some(9), "killed by its own hook: {r:?}");
    std::thread::sleep(Duration::from_millis(300));
    let sent_before_kill = messages_answered(&server);
    let durable = recorded(&sb, job) as u64;
    assert!(durable >= 80 && durable < rows as u64, "{durable}");
    let in_flight_at_kill = sent_before_kill - durable;
    assert!(
        in_flight_at_kill <= in_flight * 4,
        "{in_flight_at_kill} sent and not recorded"
    );
    wait_for_store_release(&sb, job);
    let r = DirectAnthropic.run(&sb, &["resume"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let resent = messages_answered(&server) - rows as u64;
    assert_eq!(
        resent, in_flight_at_kill,
        "only the requests without a recorded answer were sent again"
    );
    assert_eq!(
        sb.read("out/graded.csv"),
        common::reference_output(DirectAnthropic, rows),
        "the output of a run never killed"
    );
    // The resume put in what the killed run recorded and never ledgered:
    // each recorded answer once.
    let held = outcome_tokens(&sb, job);
    assert_eq!(common::ledger_tokens(&sb, job), held);
    let billed = messages_billed(&server);
    assert!(
        held.0 <= billed.0 && held.1 <= billed.1,
        "{held:?} {billed:?}"
    );
    assert!(sb.read("state/usage.jsonl").contains("-recovered\""));
}
