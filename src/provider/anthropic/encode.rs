//! A chunk file (OpenAI batch lines, the runner's one request format) as
//! the body of a Message Batches create: each line becomes
//! `{"custom_id": <id>_<tag>, "params": {...}}`, where `params` is the
//! Messages create body: the system messages become the top-level `system`,
//! the other messages stay, every other key of the line's body passes
//! through (`model`, `max_tokens`, `temperature`, ...).
//!
//! The body is written to a file and streamed, so a 256 MB batch never sits
//! in memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::tagged;

/// Where the create body of a chunk's submit is written (removed after the
/// create).
pub fn body_path(chunk: &Path, submit: u32) -> PathBuf {
    let mut name = chunk.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".create-{submit}.json"));
    chunk.with_file_name(name)
}

/// One request line of a chunk as a Message Batches request.
pub fn request(line: &str, tag: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let custom_id = v
        .get("custom_id")
        .and_then(Value::as_str)
        .ok_or("no custom_id")?;
    let body = v.get("body").and_then(Value::as_object).ok_or("no body")?;
    Ok(serde_json::json!({
        "custom_id": tagged(custom_id, tag),
        "params": params(body),
    }))
}

/// A Chat Completions body as Messages create params.
pub fn params(body: &Map<String, Value>) -> Value {
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for m in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        if role == "system" || role == "developer" {
            if let Some(text) = m.get("content").and_then(Value::as_str) {
                system.push(text.to_string());
            }
        } else {
            messages.push(serde_json::json!({
                "role": role,
                "content": m.get("content").cloned().unwrap_or(Value::Null),
            }));
        }
    }
    // A line that asks for caching carries `cache_control`: it marks the
    // system block, the shared prefix (Messages API: `system` as a list of
    // text blocks, each may carry `cache_control`; prompt caching guide).
    let cache = body.get("cache_control");
    let mut out = Map::new();
    for (k, v) in body {
        match k.as_str() {
            "cache_control" => {}
            "messages" => {
                if !system.is_empty() {
                    let text = Value::String(system.join("\n\n"));
                    let system = match cache {
                        Some(c) => serde_json::json!([
                            {"type": "text", "text": text, "cache_control": c}
                        ]),
                        None => text,
                    };
                    out.insert("system".into(), system);
                }
                out.insert(
                    "messages".into(),
                    Value::Array(std::mem::take(&mut messages)),
                );
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

/// The body of one direct `POST /v1/messages` from a request line's chat
/// body: the same params a Message Batches request of that line carries
/// ([`params`]), so both lanes send one encoding.
pub fn message_body(chat_body: &str) -> Result<Vec<u8>, String> {
    let body: Map<String, Value> = serde_json::from_str(chat_body)
        .map_err(|e| format!("the request body is not a JSON object: {e}"))?;
    serde_json::to_vec(&params(&body)).map_err(|e| e.to_string())
}

/// Writes the create body for `chunk` to `dest` (fsynced); returns the
/// number of requests.
pub fn write_create_body(chunk: &Path, dest: &Path, tag: &str) -> io::Result<u64> {
    let input = BufReader::new(File::open(chunk)?);
    let mut out = BufWriter::new(File::create(dest)?);
    out.write_all(b"{\"requests\":[")?;
    let mut n = 0u64;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let req = request(&line, tag)
            .map_err(|e| io::Error::other(format!("{}:{}: {e}", chunk.display(), i + 1)))?;
        if n > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut out, &req)?;
        n += 1;
    }
    out.write_all(b"]}")?;
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_line_becomes_a_message_batches_request() {
        let line = r#"{"custom_id":"r7","method":"POST","url":"/v1/chat/completions","body":{"model":"claude-x","messages":[{"role":"system","content":"Grade it.\n\nExamples"},{"role":"user","content":"essay 7"}],"max_tokens":16,"temperature":0}}"#;
        let got = request(line, "0123456789").unwrap();
        let want = serde_json::json!({
            "custom_id": "r7_0123456789",
            "params": {
                "model": "claude-x",
                "system": "Grade it.\n\nExamples",
                "messages": [{"role": "user", "content": "essay 7"}],
                "max_tokens": 16,
                "temperature": 0
            }
        });
        assert_eq!(got, want);
        // Key order is kept: model first, then system and messages.
        let keys: Vec<&String> = got["params"].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["model", "system", "messages", "max_tokens", "temperature"]
        );
    }

    #[test]
    fn a_direct_message_carries_the_batch_requests_params() {
        let line = r#"{"custom_id":"r7","method":"POST","url":"/v1/chat/completions","body":{"model":"claude-x","messages":[{"role":"system","content":"Grade it."},{"role":"user","content":"essay 7"}],"max_tokens":16,"output_config":{"format":{"type":"json_schema","schema":{"type":"object"}}}}}"#;
        let v: Value = serde_json::from_str(line).unwrap();
        let direct: Value =
            serde_json::from_slice(&message_body(&v["body"].to_string()).unwrap()).unwrap();
        assert_eq!(direct, request(line, "0123456789").unwrap()["params"]);
        assert!(
            message_body("[1]")
                .unwrap_err()
                .contains("not a JSON object")
        );
    }

    #[test]
    fn a_line_asking_for_caching_marks_the_system_block() {
        let line = r#"{"custom_id":"r7","method":"POST","url":"/v1/chat/completions","body":{"model":"claude-x","messages":[{"role":"system","content":"Rubric."},{"role":"user","content":"essay 7"}],"max_tokens":16,"cache_control":{"type":"ephemeral","ttl":"1h"}}}"#;
        let r = request(line, "t").unwrap();
        let p = &r["params"];
        assert_eq!(
            p["system"],
            serde_json::json!([{"type": "text", "text": "Rubric.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
        );
        // Not a top-level parameter, and the row's message is not cached.
        assert!(p.get("cache_control").is_none(), "{p}");
        assert_eq!(
            p["messages"],
            serde_json::json!([{"role": "user", "content": "essay 7"}])
        );
        let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["model", "system", "messages", "max_tokens"]);
    }

    #[test]
    fn no_system_prompt_no_system_key() {
        let body = serde_json::json!({"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1});
        let p = params(body.as_object().unwrap());
        assert!(p.get("system").is_none());
        assert_eq!(p["messages"][0]["content"], "hi");
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(request("{", "t").unwrap_err().contains("not JSON"));
        assert!(
            request(r#"{"body":{}}"#, "t")
                .unwrap_err()
                .contains("custom_id")
        );
    }

    #[test]
    fn the_body_file_holds_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = dir.path().join("chunk-1.jsonl");
        std::fs::write(
            &chunk,
            "{\"custom_id\":\"r1\",\"body\":{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"max_tokens\":1}}\n\
             {\"custom_id\":\"r2\",\"body\":{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"b\"}],\"max_tokens\":1}}\n",
        )
        .unwrap();
        let dest = body_path(&chunk, 3);
        assert!(dest.ends_with("chunk-1.jsonl.create-3.json"));
        assert_eq!(write_create_body(&chunk, &dest, "abcdefabcd").unwrap(), 2);
        let v: Value = serde_json::from_slice(&std::fs::read(&dest).unwrap()).unwrap();
        let ids: Vec<&str> = v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["custom_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["r1_abcdefabcd", "r2_abcdefabcd"]);
    }
}
