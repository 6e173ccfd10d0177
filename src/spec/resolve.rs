//! A checked spec resolved into the settings the rest of the program reads:
//! the wire the job speaks, the run settings, the endpoint, the paths. The
//! YAML's serde types stay inside `spec/`; nothing else decides from them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::types::{
    Chunking, Input, JobSpec, Output, Prompt, ProviderKind, ProviderMode, Simulated, SimulatedApi,
};
use super::{Problem, SpecError, units};

/// The wire protocol a job's requests speak. Decided here once, from
/// `provider.kind` and `provider.simulated.api`; the checks, the request
/// encoding (structured output), the plan's limits and tokenizer note, the
/// backend and the simulator all ask it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI Chat Completions bodies (batch lines of the Files + Batches
    /// API, or `POST /chat/completions` in direct mode): OpenAI, Azure,
    /// LiteLLM, vLLM, llama.cpp, the simulated provider by default.
    OpenAiChat,
    /// Anthropic Messages bodies, sent through Message Batches (or `POST
    /// /v1/messages` in direct mode): Anthropic, or the simulated provider
    /// with `api: anthropic`.
    AnthropicMessages,
}

impl Wire {
    /// The one decision of which wire a provider block speaks.
    pub fn of(kind: ProviderKind, simulated_api: SimulatedApi) -> Wire {
        match (kind, simulated_api) {
            (ProviderKind::Anthropic, _) => Wire::AnthropicMessages,
            (ProviderKind::Simulated, SimulatedApi::Anthropic) => Wire::AnthropicMessages,
            (ProviderKind::Simulated, SimulatedApi::Openai) | (ProviderKind::Openai, _) => {
                Wire::OpenAiChat
            }
        }
    }

    /// The same decision over the spec's JSON, for the checks that run
    /// before it is deserialized (a value of the wrong type counts as unset:
    /// the schema check reports it).
    pub fn of_json(json: &Value) -> Wire {
        let provider = json.get("provider");
        let kind = provider
            .and_then(|p| p.get("kind"))
            .and_then(|k| serde_json::from_value(k.clone()).ok())
            .unwrap_or_default();
        let api = provider
            .and_then(|p| p.get("simulated"))
            .and_then(|s| s.get("api"))
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        Wire::of(kind, api)
    }

    /// The environment variable that holds the key when the spec names none.
    pub fn default_key_env(self) -> &'static str {
        match self {
            Wire::OpenAiChat => "OPENAI_API_KEY",
            Wire::AnthropicMessages => "ANTHROPIC_API_KEY",
        }
    }

    /// For people: the API the requests go to.
    pub fn label(self) -> &'static str {
        match self {
            Wire::OpenAiChat => "OpenAI Chat Completions",
            Wire::AnthropicMessages => "Anthropic Messages",
        }
    }
}

/// `anthropic-version` sent when the spec sets none
/// (<https://docs.anthropic.com/en/api/versioning>).
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// `halt:` of the spec, resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HaltPolicy {
    pub on_chunk_failure: bool,
    pub max_failure_rate: Option<f64>,
    pub max_cost_usd: Option<f64>,
    /// The quality gate, when `halt.min_kappa` or `halt.min_accuracy` is set.
    pub gate: Option<Gate>,
}

/// The quality gate: how well the judge must agree with the gold values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    pub min_kappa: Option<f64>,
    pub min_accuracy: Option<f64>,
    /// Gold rows graded before the gate is judged.
    pub min_gold_rows: u64,
    pub on: super::GateOn,
}

/// `halt.min_gold_rows` when the spec sets none.
pub const DEFAULT_MIN_GOLD_ROWS: u64 = 50;

/// How a run behaves, whatever its lane: halt policy, attempts, give-up,
/// how much may be in flight, how often batches are polled.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    pub halt: HaltPolicy,
    /// `retry.max_attempts`.
    pub max_attempts: u32,
    /// `retry.give_up_after`.
    pub give_up_after: Duration,
    pub max_batches_in_flight: u32,
    pub max_requests_in_flight: u32,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub poll_interval: Duration,
    pub poll_max_interval: Duration,
    /// `deadline:` and `deadline_margin:` as read; fixed at the first apply.
    pub deadline: Option<DeadlineSpec>,
}

/// The spec's deadline before the first apply fixes it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadlineSpec {
    /// The spec's words (`6h`, `2026-12-09T06:00:00Z`, and the margin):
    /// the job's fixed deadline is made again only when they change.
    pub text: String,
    pub when: crate::deadline::When,
    pub margin: Option<Duration>,
}

/// Where the requests go and how to authenticate.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub kind: ProviderKind,
    /// The lane: batch API or direct requests.
    pub mode: ProviderMode,
    /// The spec's base URLs, in order (none: the provider's default).
    pub base_urls: Vec<String>,
    /// The variable that holds the key, its default applied.
    pub key_env: String,
    pub anthropic_version: String,
    /// The simulated provider's behaviour (`kind: simulated`, defaults applied).
    pub simulated: Option<Simulated>,
}

impl Endpoint {
    /// The provider's name in messages and the ledger.
    pub fn provider_name(&self) -> &'static str {
        match self.kind {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Simulated => "simulated",
        }
    }

    pub fn is_simulated(&self) -> bool {
        self.kind == ProviderKind::Simulated
    }

    pub fn is_direct(&self) -> bool {
        self.mode == ProviderMode::Direct
    }
}

/// A spec that passed every check, with its paths resolved against the
/// spec file's folder, its units parsed and its decisions made.
#[derive(Debug, Clone)]
pub struct CheckedSpec {
    /// The spec as written; read through the accessors below.
    spec: JobSpec,
    /// The spec file, as given.
    pub file: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub output_path: PathBuf,
    pub system_file: Option<PathBuf>,
    pub examples_file: Option<PathBuf>,
    pub max_bytes: Option<u64>,
    /// The answer's JSON Schema: `output.schema`, or the content of `output.schema_file`.
    pub schema: Option<Value>,
    /// The graded fields with a gold column (`output.gold`), in output order.
    pub gold: Vec<super::GoldField>,
    pub wire: Wire,
    pub run: RunSettings,
    pub endpoint: Endpoint,
    /// What the spec may get wrong without being refused (a request key
    /// only a server of its own may take), placed in the file.
    pub warnings: Vec<super::Problem>,
}

impl CheckedSpec {
    /// The warnings, each as `FILE:LINE:COL: field: message`.
    pub fn warnings_text(&self) -> Vec<String> {
        self.warnings
            .iter()
            .map(|p| {
                format!(
                    "{}:{}:{}: {}: {}",
                    self.file.display(),
                    p.line,
                    p.column,
                    p.field,
                    p.message
                )
            })
            .collect()
    }

    /// The job's name (`name:`).
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn model(&self) -> &str {
        &self.spec.model
    }

    pub fn input(&self) -> &Input {
        &self.spec.input
    }

    pub fn prompt(&self) -> &Prompt {
        &self.spec.prompt
    }

    /// The spec's `request:` block, merged into every request body.
    pub fn request(&self) -> &Map<String, Value> {
        &self.spec.request
    }

    pub fn output(&self) -> &Output {
        &self.spec.output
    }

    pub fn chunking(&self) -> &Chunking {
        &self.spec.chunking
    }

    /// The spec as JSON, saved in the job's state (read back by [`from_saved`]).
    pub fn saved(&self) -> Value {
        serde_json::to_value(&self.spec).expect("a spec serializes")
    }
}

/// Rebuild a checked spec from the copy saved in the job's state (for
/// `resume`, which needs no spec file). Paths resolve against the folder of
/// the spec file the job was planned from, as they did then.
pub fn from_saved(spec_file: &Path, value: Value) -> Result<CheckedSpec, SpecError> {
    let spec: JobSpec = serde_json::from_value(value).map_err(|e| SpecError::Invalid {
        path: spec_file.to_path_buf(),
        problems: vec![Problem {
            line: 1,
            column: 1,
            field: "(saved spec)".into(),
            message: format!("the spec saved in the state cannot be read: {e}"),
        }],
    })?;
    Ok(resolve(spec_file, spec))
}

fn gate(h: &super::Halt) -> Option<Gate> {
    let min_accuracy = h.min_accuracy.as_ref().and_then(|r| r.fraction().ok());
    (h.min_kappa.is_some() || min_accuracy.is_some()).then(|| Gate {
        min_kappa: h.min_kappa,
        min_accuracy,
        min_gold_rows: h.min_gold_rows.unwrap_or(DEFAULT_MIN_GOLD_ROWS),
        on: h.gate_on.unwrap_or_default(),
    })
}

pub(super) fn resolve(file: &Path, spec: JobSpec) -> CheckedSpec {
    let base = file.parent().unwrap_or(Path::new(""));
    let rel = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            lexical_clean(&base.join(p))
        }
    };
    // Checked before; the fallbacks cannot be reached.
    let max_bytes = spec
        .chunking
        .max_bytes
        .as_ref()
        .and_then(|s| s.bytes().ok());
    let max_failure_rate = spec
        .halt
        .max_failure_rate
        .as_ref()
        .and_then(|r| r.fraction().ok());
    let p = &spec.provider;
    let simulated =
        (p.kind == ProviderKind::Simulated).then(|| p.simulated.clone().unwrap_or_default());
    let wire = Wire::of(
        p.kind,
        simulated.as_ref().map(|s| s.api).unwrap_or_default(),
    );
    let c = &spec.concurrency;
    let run = RunSettings {
        halt: HaltPolicy {
            on_chunk_failure: spec.halt.on_chunk_failure,
            max_failure_rate,
            max_cost_usd: spec.halt.max_cost_usd,
            gate: gate(&spec.halt),
        },
        max_attempts: spec.retry.max_attempts,
        give_up_after: units::parse_duration(&spec.retry.give_up_after)
            .unwrap_or(Duration::from_secs(3600)),
        max_batches_in_flight: c.max_batches_in_flight,
        max_requests_in_flight: c.max_requests_in_flight,
        requests_per_minute: c.requests_per_minute,
        tokens_per_minute: c.tokens_per_minute,
        poll_interval: units::parse_duration(&spec.poll.interval)
            .unwrap_or(Duration::from_secs(30)),
        poll_max_interval: units::parse_duration(&spec.poll.max_interval)
            .unwrap_or(Duration::from_secs(300)),
        deadline: spec.deadline.as_deref().and_then(|t| {
            let when = crate::deadline::parse(t).ok()?;
            let margin = spec
                .deadline_margin
                .as_deref()
                .and_then(|m| crate::deadline::parse_margin(m).ok());
            Some(DeadlineSpec {
                text: format!(
                    "{t} (margin {})",
                    spec.deadline_margin.as_deref().unwrap_or("default")
                ),
                when,
                margin,
            })
        }),
    };
    let endpoint = Endpoint {
        kind: p.kind,
        mode: p.mode,
        base_urls: p.base_urls(),
        key_env: p
            .api_key_env
            .clone()
            .unwrap_or_else(|| wire.default_key_env().to_string()),
        anthropic_version: p
            .anthropic_version
            .clone()
            .unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_string()),
        simulated,
    };
    CheckedSpec {
        inputs: spec.input.path.to_vec().iter().map(|p| rel(p)).collect(),
        output_path: rel(&spec.output.path),
        system_file: spec.prompt.system_file.as_deref().map(rel),
        examples_file: spec.prompt.examples_file.as_deref().map(rel),
        max_bytes,
        schema: spec.output.schema.clone().map(Value::Object),
        gold: super::gold::resolve(
            &spec.output,
            spec.output.schema.clone().map(Value::Object).as_ref(),
        ),
        wire,
        run,
        endpoint,
        warnings: Vec::new(),
        file: file.to_path_buf(),
        spec,
    }
}

/// `specs/../out/x.csv` → `out/x.csv`, without touching the file system
/// (the path may not exist yet), so messages show the path people expect.
pub(super) fn lexical_clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_wire_each_provider_block_speaks() {
        use ProviderKind as K;
        use SimulatedApi as A;
        let cases = [
            (K::Openai, A::Openai, Wire::OpenAiChat),
            (K::Openai, A::Anthropic, Wire::OpenAiChat),
            (K::Anthropic, A::Openai, Wire::AnthropicMessages),
            (K::Simulated, A::Openai, Wire::OpenAiChat),
            (K::Simulated, A::Anthropic, Wire::AnthropicMessages),
        ];
        for (kind, api, want) in cases {
            assert_eq!(Wire::of(kind, api), want, "{kind:?} {api:?}");
        }
    }

    #[test]
    fn the_json_decision_is_the_typed_one() {
        let cases = [
            (r#"{}"#, Wire::OpenAiChat),
            (
                r#"{"provider":{"kind":"anthropic"}}"#,
                Wire::AnthropicMessages,
            ),
            (r#"{"provider":{"kind":"simulated"}}"#, Wire::OpenAiChat),
            (
                r#"{"provider":{"kind":"simulated","simulated":{"api":"anthropic"}}}"#,
                Wire::AnthropicMessages,
            ),
            // api is the simulator's only: an OpenAI provider ignores it.
            (
                r#"{"provider":{"kind":"openai","simulated":{"api":"anthropic"}}}"#,
                Wire::OpenAiChat,
            ),
            (r#"{"provider":{"kind":7}}"#, Wire::OpenAiChat),
        ];
        for (json, want) in cases {
            let v: Value = serde_json::from_str(json).unwrap();
            assert_eq!(Wire::of_json(&v), want, "{json}");
        }
    }

    #[test]
    fn the_key_variable_defaults_by_wire() {
        assert_eq!(Wire::OpenAiChat.default_key_env(), "OPENAI_API_KEY");
        assert_eq!(
            Wire::AnthropicMessages.default_key_env(),
            "ANTHROPIC_API_KEY"
        );
    }
}
