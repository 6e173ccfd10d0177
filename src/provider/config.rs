//! Client configuration: base URL, key, optional organization and project
//! headers, attempt budget and timeouts (OpenAPI spec `servers`;
//! openai-python `_client.py`).
//!
//! The key comes from an environment variable named by the spec
//! (`api_key_env`); it is held in [`Secret`] so that no `Debug` or `Display`
//! of the configuration can print it.

use std::fmt;
use std::time::Duration;

use super::error::ProviderError;
use super::retry::DEFAULT_MAX_ATTEMPTS;

/// The public OpenAI endpoint (OpenAPI spec, `servers`).
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// Overrides the spec's base URL, as in the SDK (openai-python `_client.py`).
pub const BASE_URL_ENV: &str = "OPENAI_BASE_URL";
/// Sent as `OpenAI-Organization` when set (openai-python `_client.py`).
pub const ORG_ENV: &str = "OPENAI_ORG_ID";
/// Sent as `OpenAI-Project` when set (openai-python `_client.py`).
pub const PROJECT_ENV: &str = "OPENAI_PROJECT_ID";

/// The longest one HTTP call may take (for uploads and downloads: the
/// longest stall), e.g. `30s` or `5m`; default 2 minutes. Connecting gets at
/// most 10 seconds of it. For slow servers (a local model writing long
/// answers in direct mode) and for tests of hung servers.
pub const TIMEOUT_ENV: &str = "BATCHGRADER_HTTP_TIMEOUT";

/// Space a download leaves free on the disk it writes to, e.g. `5GB`;
/// default 1 GiB, `0` for none. A result file is streamed to disk as it
/// comes, with no size known before: a server that sends without end (or a
/// file far beyond the job's size) stops here instead of filling the disk.
pub const MIN_FREE_DISK_ENV: &str = "BATCHGRADER_MIN_FREE_DISK";

const DEFAULT_MIN_FREE_DISK: u64 = 1 << 30;

const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const OPERATION: &str = "configure provider";

/// A secret string whose `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: only for building the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// E.g. `https://api.openai.com/v1`; paths such as `/batches` go after it.
    /// A query string (Azure's `?api-version=`) is kept on every request.
    pub base_url: String,
    pub api_key: Secret,
    /// Name of the variable the key came from, for messages.
    pub api_key_env: String,
    pub organization: Option<String>,
    pub project: Option<String>,
    /// Attempts per call, first try included.
    pub max_attempts: u32,
    /// Total time for one control-plane request; for uploads and downloads,
    /// the longest stall allowed (see `provider::http`).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Bytes a download leaves free on its disk ([`MIN_FREE_DISK_ENV`]).
    pub min_free_disk: u64,
}

impl ClientConfig {
    /// A configuration with the default budget: 5 attempts, 120 s per request,
    /// 10 s to connect.
    pub fn new(
        base_url: impl Into<String>,
        api_key: Secret,
        api_key_env: impl Into<String>,
    ) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            api_key,
            api_key_env: api_key_env.into(),
            organization: None,
            project: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            min_free_disk: DEFAULT_MIN_FREE_DISK,
        }
    }

    /// Sets the timeouts from `BATCHGRADER_HTTP_TIMEOUT` when `lookup` has
    /// it (see [`TIMEOUT_ENV`]).
    pub fn with_timeout_from(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ClientConfig, ProviderError> {
        if let Some((request, connect)) = timeouts(lookup(TIMEOUT_ENV).as_deref())? {
            self.request_timeout = request;
            self.connect_timeout = connect;
        }
        if let Some(floor) = min_free_disk(lookup(MIN_FREE_DISK_ENV).as_deref())? {
            self.min_free_disk = floor;
        }
        Ok(self)
    }

    /// [`ClientConfig::with_timeout_from`] the process environment.
    pub fn with_timeout_from_env(self) -> Result<ClientConfig, ProviderError> {
        self.with_timeout_from(|n| std::env::var(n).ok())
    }

    /// Reads the key from `api_key_env`, the base URL from `OPENAI_BASE_URL`,
    /// else `base_url_from_spec`, else the OpenAI default, and the optional
    /// `OPENAI_ORG_ID` / `OPENAI_PROJECT_ID`.
    pub fn from_env(
        base_url_from_spec: Option<&str>,
        api_key_env: &str,
    ) -> Result<ClientConfig, ProviderError> {
        ClientConfig::from_lookup(base_url_from_spec, api_key_env, |name| {
            std::env::var(name).ok()
        })
    }

    /// `from_env` over any variable lookup, so it can be tested without
    /// touching the process environment.
    pub fn from_lookup(
        base_url_from_spec: Option<&str>,
        api_key_env: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ClientConfig, ProviderError> {
        ClientConfig::from_lookup_for(
            base_url_from_spec,
            api_key_env,
            (BASE_URL_ENV, DEFAULT_BASE_URL),
            lookup,
        )
    }

    /// `from_lookup` for a provider whose base URL comes from another
    /// variable and has another default (`base`: the variable and the
    /// default), e.g. Anthropic's `ANTHROPIC_BASE_URL`.
    pub fn from_lookup_for(
        base_url_from_spec: Option<&str>,
        api_key_env: &str,
        base: (&str, &str),
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ClientConfig, ProviderError> {
        let (base_env, default_base) = base;
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let Some(key) = get(api_key_env) else {
            return Err(ProviderError::config(
                OPERATION,
                format!(
                    "environment variable {api_key_env} is not set or is empty; it must hold the API key"
                ),
                Some(format!(
                    "export {api_key_env}=<your key>, or name another variable in the spec's `provider.api_key_env`"
                )),
            ));
        };
        // A header value must be visible ASCII; say so without showing the key.
        if !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(ProviderError::config(
                OPERATION,
                format!(
                    "the value of {api_key_env} contains characters that cannot be sent in an HTTP header"
                ),
                Some(format!(
                    "check that {api_key_env} holds only the key, without quotes or spaces"
                )),
            ));
        }
        let base_url = get(base_env)
            .or_else(|| {
                base_url_from_spec
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| default_base.to_string());
        validate_base_url(&base_url)?;
        let mut config = ClientConfig::new(base_url, Secret::new(key), api_key_env)
            .with_timeout_from(&lookup)?;
        config.organization = get(ORG_ENV);
        config.project = get(PROJECT_ENV);
        Ok(config)
    }

    /// What no message may show: the key and the base URL's query values.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = vec![self.api_key.expose().to_string()];
        out.extend(url_query_secrets(&self.base_url));
        out
    }

    /// True for `http://` base URLs: no TLS, so no CA certificates are needed.
    pub fn is_plain_http(&self) -> bool {
        self.base_url
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
    }
}

/// The floor a value of [`MIN_FREE_DISK_ENV`] sets (None: unset or empty).
fn min_free_disk(value: Option<&str>) -> Result<Option<u64>, ProviderError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if v == "0" {
        return Ok(Some(0));
    }
    crate::spec::units::parse_size(v).map(Some).map_err(|why| {
        ProviderError::config(
            OPERATION,
            format!("{MIN_FREE_DISK_ENV}={v:?}: {why}"),
            Some(format!(
                "set {MIN_FREE_DISK_ENV} to a size such as 5GB, or 0 for no floor, or unset it for the default (1 GiB)"
            )),
        )
    })
}

/// The request and connect timeouts a value of [`TIMEOUT_ENV`] sets;
/// `None` when it is unset or blank.
fn timeouts(value: Option<&str>) -> Result<Option<(Duration, Duration)>, ProviderError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    match humantime::parse_duration(v) {
        Ok(d) if d >= Duration::from_millis(100) && d <= Duration::from_secs(24 * 3600) => {
            Ok(Some((d, d.min(DEFAULT_CONNECT_TIMEOUT))))
        }
        _ => Err(ProviderError::config(
            OPERATION,
            format!("{TIMEOUT_ENV}={v:?} is not a duration from 100ms to 24h"),
            Some(format!(
                "set {TIMEOUT_ENV} to a duration such as 30s or 5m, or unset it for the default (2m)"
            )),
        )),
    }
}

/// Query parameters of a base URL that are shown as they are: Azure's API
/// version says nothing secret. Any other value may be a token.
const PLAIN_QUERY_KEYS: &[&str] = &["api-version"];

/// The values of a base URL's query that no message may show (see
/// `PLAIN_QUERY_KEYS`), as written and decoded; values under 4 bytes are
/// left (too short to be a secret, too common to take out of text).
pub fn url_query_secrets(base: &str) -> Vec<String> {
    let Some(query) = base
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(q))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if PLAIN_QUERY_KEYS.contains(&k) || v.len() < 4 {
            continue;
        }
        out.push(v.to_string());
        let decoded: String = reqwest::Url::parse(&format!("http://x/?v={v}"))
            .ok()
            .and_then(|u| u.query_pairs().next().map(|(_, d)| d.into_owned()))
            .unwrap_or_default();
        if decoded.len() >= 4 && decoded != v {
            out.push(decoded);
        }
    }
    out
}

/// A base URL as messages and status files may show it: no user or
/// password, and `***` for every query value but `PLAIN_QUERY_KEYS`.
pub fn shown_url(base: &str) -> String {
    match reqwest::Url::parse(base) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if PLAIN_QUERY_KEYS.contains(&k.as_ref()) {
                        v.into_owned()
                    } else {
                        "***".to_string()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => base.to_string(),
    }
}

/// `text` with the key and every secret of the base URL taken out.
pub fn redact_all(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_string(), |t, s| super::error::redact(&t, s))
}

/// The base URL must be an absolute `http` or `https` URL.
pub(crate) fn validate_base_url(base: &str) -> Result<(), ProviderError> {
    match reqwest::Url::parse(base) {
        // reqwest would send them as Basic auth instead of the key, and a
        // server that echoes its Authorization header would put them in
        // every message; the URL itself is not shown, as it holds them.
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            Err(ProviderError::config(
                OPERATION,
                "the base URL (from the environment or the spec) holds a user name or password (`user:pass@`)".to_string(),
                Some("remove them: the key goes in the variable named by provider.api_key_env".to_string()),
            ))
        }
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
        _ => Err(ProviderError::config(
            OPERATION,
            format!("base URL `{base}` is not an http(s) URL"),
            Some(format!(
                "set `provider.base_url` or {BASE_URL_ENV} to something like {DEFAULT_BASE_URL}"
            )),
        )),
    }
}

/// Percent-encodes one path segment. Ids are opaque and may be long
/// base64-ish strings with `=`, `/` or `+` (a LiteLLM proxy's), so everything
/// outside RFC 3986's unreserved set is escaped.
pub fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `base` + `/` + `path`, keeping a query string of the base (Azure's
/// `?api-version=`, see openai-python `lib/azure.py`) after the path. `path`
/// must already be encoded.
pub(crate) fn join_url(base: &str, path: &str) -> Result<reqwest::Url, ProviderError> {
    let (prefix, query) = match base.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base, None),
    };
    let mut s = format!(
        "{}/{}",
        prefix.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        s.push('?');
        s.push_str(q);
    }
    reqwest::Url::parse(&s).map_err(|e| {
        ProviderError::config(
            OPERATION,
            format!("cannot build a URL from `{base}`: {e}"),
            None,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn base_url_precedence() {
        let cases = [
            (&[("K", "sk-1")][..], None, DEFAULT_BASE_URL),
            (
                &[("K", "sk-1")][..],
                Some("http://spec/v1"),
                "http://spec/v1",
            ),
            (
                &[("K", "sk-1"), (BASE_URL_ENV, "http://env/v1")][..],
                Some("http://spec/v1"),
                "http://env/v1",
            ),
            (
                &[("K", "sk-1"), (BASE_URL_ENV, "  ")][..],
                Some("http://spec/v1"),
                "http://spec/v1",
            ),
        ];
        for (vars, spec, want) in cases {
            let c = ClientConfig::from_lookup(spec, "K", lookup(vars)).unwrap();
            assert_eq!(c.base_url, want);
        }
    }

    #[test]
    fn key_org_project() {
        let c = ClientConfig::from_lookup(
            None,
            "MY_KEY",
            lookup(&[
                ("MY_KEY", " sk-abc\n"),
                (ORG_ENV, "org-1"),
                (PROJECT_ENV, "proj_2"),
            ]),
        )
        .unwrap();
        assert_eq!(c.api_key.expose(), "sk-abc");
        assert_eq!(c.api_key_env, "MY_KEY");
        assert_eq!(c.organization.as_deref(), Some("org-1"));
        assert_eq!(c.project.as_deref(), Some("proj_2"));
        assert!(!format!("{c:?}").contains("sk-abc"));
        assert_eq!(format!("{}", c.api_key), "***");
    }

    #[test]
    fn missing_or_bad_key_names_the_variable() {
        for vars in [&[][..], &[("MY_KEY", "")][..], &[("MY_KEY", "sk one")][..]] {
            let e = ClientConfig::from_lookup(None, "MY_KEY", lookup(vars)).unwrap_err();
            assert!(e.to_string().contains("MY_KEY"), "{e}");
            assert!(e.hint().unwrap().contains("MY_KEY"));
            assert!(!e.to_string().contains("sk one"));
            assert!(e.is_setup_fault());
        }
        let e = ClientConfig::from_lookup(None, "MY_KEY", lookup(&[])).unwrap_err();
        assert!(e.hint().unwrap().contains("export MY_KEY="));
    }

    #[test]
    fn timeouts_table() {
        let s = Duration::from_secs;
        type Timeouts = Option<(Duration, Duration)>;
        let cases: &[(Option<&str>, Timeouts)] = &[
            (None, None),
            (Some("  "), None),
            (Some("2s"), Some((s(2), s(2)))),
            (Some("5m"), Some((s(300), s(10)))),
            (
                Some("500ms"),
                Some((Duration::from_millis(500), Duration::from_millis(500))),
            ),
        ];
        for (v, want) in cases {
            assert_eq!(timeouts(*v).unwrap(), *want, "{v:?}");
        }
        for bad in ["abc", "0s", "10", "2d"] {
            let e = timeouts(Some(bad)).unwrap_err();
            assert!(e.to_string().contains(TIMEOUT_ENV), "{e}");
            assert!(e.is_setup_fault());
        }
        let c = ClientConfig::from_lookup(None, "K", lookup(&[("K", "k"), (TIMEOUT_ENV, "3s")]))
            .unwrap();
        assert_eq!((c.request_timeout, c.connect_timeout), (s(3), s(3)));
        let c = ClientConfig::from_lookup(None, "K", lookup(&[("K", "k")])).unwrap();
        assert_eq!((c.request_timeout, c.connect_timeout), (s(120), s(10)));
    }

    #[test]
    fn query_values_of_the_base_url_are_kept_out_of_messages() {
        let cases: &[(&str, &[&str], &str)] = &[
            (
                "https://api.openai.com/v1",
                &[],
                "https://api.openai.com/v1",
            ),
            (
                "https://x.openai.azure.com/openai?api-version=2024-10-21",
                &[],
                "https://x.openai.azure.com/openai?api-version=2024-10-21",
            ),
            (
                "http://127.0.0.1:1/v1?token=SECRETQ&api-version=2024",
                &["SECRETQ"],
                "http://127.0.0.1:1/v1?token=***&api-version=2024",
            ),
            (
                "http://h/v1?sig=a%2Bb%3Dcd&x=1",
                &["a%2Bb%3Dcd", "a+b=cd"],
                "http://h/v1?sig=***&x=***",
            ),
            ("http://u:p@h/v1", &[], "http://h/v1"),
        ];
        for (base, secrets, shown) in cases {
            assert_eq!(url_query_secrets(base), *secrets, "{base}");
            assert_eq!(shown_url(base), *shown, "{base}");
        }
        let c = ClientConfig::from_lookup(
            Some("http://127.0.0.1:1/v1?token=SECRETQ"),
            "K",
            lookup(&[("K", "sk-key-1234")]),
        )
        .unwrap();
        let text = "error sending request for url (http://127.0.0.1:1/v1/x?token=SECRETQ) with sk-key-1234";
        let clean = redact_all(text, &c.secrets());
        assert!(
            !clean.contains("SECRETQ") && !clean.contains("sk-key-1234"),
            "{clean}"
        );
    }

    #[test]
    fn min_free_disk_table() {
        let cases: &[(Option<&str>, Option<u64>)] = &[
            (None, None),
            (Some(" "), None),
            (Some("0"), Some(0)),
            (Some("5GB"), Some(5_000_000_000)),
            (Some("512MiB"), Some(512 << 20)),
            (Some("1000"), Some(1000)),
        ];
        for (v, want) in cases {
            assert_eq!(min_free_disk(*v).unwrap(), *want, "{v:?}");
        }
        for bad in ["lots", "-1", "5 parsecs"] {
            let e = min_free_disk(Some(bad)).unwrap_err();
            assert!(e.to_string().contains(MIN_FREE_DISK_ENV), "{e}");
            assert!(e.is_setup_fault());
        }
        let c = ClientConfig::from_lookup(None, "K", lookup(&[("K", "k")])).unwrap();
        assert_eq!(c.min_free_disk, 1 << 30);
        let c =
            ClientConfig::from_lookup(None, "K", lookup(&[("K", "k"), (MIN_FREE_DISK_ENV, "2GB")]))
                .unwrap();
        assert_eq!(c.min_free_disk, 2_000_000_000);
    }

    #[test]
    fn bad_base_url() {
        for bad in ["ftp://x/v1", "not a url", "/v1"] {
            let e = ClientConfig::from_lookup(Some(bad), "K", lookup(&[("K", "k")])).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn path_segments() {
        let cases = [
            ("batch_abc123", "batch_abc123"),
            ("file-0a1B~.x", "file-0a1B~.x"),
            ("bGl0ZWxsbTpjdXN0b20=", "bGl0ZWxsbTpjdXN0b20%3D"),
            ("a/b+c d", "a%2Fb%2Bc%20d"),
            ("..", ".."),
            ("é", "%C3%A9"),
            ("?#%", "%3F%23%25"),
        ];
        for (raw, want) in cases {
            assert_eq!(encode_path_segment(raw), want);
        }
    }

    #[test]
    fn url_joining() {
        let cases = [
            ("http://h:1/v1", "batches", "http://h:1/v1/batches"),
            ("http://h:1/v1/", "/batches", "http://h:1/v1/batches"),
            (
                "https://r.openai.azure.com/openai?api-version=2024-10-21",
                "files/file-1/content",
                "https://r.openai.azure.com/openai/files/file-1/content?api-version=2024-10-21",
            ),
            (
                "http://h/v1",
                "files/a%2Fb%3D",
                "http://h/v1/files/a%2Fb%3D",
            ),
        ];
        for (base, path, want) in cases {
            assert_eq!(join_url(base, path).unwrap().as_str(), want);
        }
    }

    #[test]
    fn plain_http() {
        let c = ClientConfig::new("HTTP://127.0.0.1:9/v1", Secret::new("k"), "K");
        assert!(c.is_plain_http());
        let c = ClientConfig::new(DEFAULT_BASE_URL, Secret::new("k"), "K");
        assert!(!c.is_plain_http());
    }
}
