//! Building a reqwest client: how the key is sent ([`Auth`]), the user
//! agent, the connect timeout and TLS. The batch backends and direct mode
//! all build theirs here.

use std::time::Duration;

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use super::error_chain;
use crate::provider::config::{ClientConfig, ORG_ENV, PROJECT_ENV};
use crate::provider::error::ProviderError;

const OP: &str = "configure provider";

/// How a server wants the key, and the headers that go with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth<'a> {
    /// OpenAI's API and every server of its protocol (Azure's OpenAI v1
    /// endpoints, LiteLLM, vLLM, ...): `Authorization: Bearer <key>`, with
    /// `OpenAI-Organization` and `OpenAI-Project` when they are set
    /// (openai-python `_client.py`).
    Bearer,
    /// Anthropic's API: the key in `x-api-key`, and `anthropic-version` on
    /// every call (anthropic-sdk-python `_client.py`).
    Anthropic { version: &'a str },
}

impl Auth<'_> {
    /// The headers every call of a client with `config` carries. The key's
    /// header is marked sensitive, so it stays out of reqwest's and hyper's
    /// `Debug` output.
    pub(crate) fn headers(&self, config: &ClientConfig) -> Result<HeaderMap, ProviderError> {
        let mut headers = HeaderMap::new();
        match self {
            Auth::Bearer => {
                let auth = secret_header(config, &format!("Bearer {}", config.api_key.expose()))?;
                headers.insert(AUTHORIZATION, auth);
                for (name, value, var) in [
                    ("openai-organization", &config.organization, ORG_ENV),
                    ("openai-project", &config.project, PROJECT_ENV),
                ] {
                    if let Some(v) = value {
                        let v = HeaderValue::from_str(v).map_err(|_| {
                            ProviderError::config(
                                OP,
                                format!("{var} is not a valid header value"),
                                None,
                            )
                        })?;
                        headers.insert(HeaderName::from_static(name), v);
                    }
                }
            }
            Auth::Anthropic { version } => {
                let key = secret_header(config, config.api_key.expose())?;
                headers.insert(HeaderName::from_static("x-api-key"), key);
                let v = HeaderValue::from_str(version).map_err(|_| {
                    ProviderError::config(
                        OP,
                        format!(
                            "`provider.anthropic_version` {version:?} is not a valid header value"
                        ),
                        None,
                    )
                })?;
                headers.insert(HeaderName::from_static("anthropic-version"), v);
            }
        }
        Ok(headers)
    }
}

/// A reqwest builder with `headers` on every call, batchgrader's user
/// agent and the connect timeout. `plain_http`: every base URL is `http`,
/// so no CA roots are loaded. The caller adds what is its own (a total
/// timeout, a pool size) and calls [`build`].
pub(crate) fn client_builder(
    headers: HeaderMap,
    connect_timeout: Duration,
    plain_http: bool,
) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .default_headers(headers)
        .user_agent(concat!("batchgrader/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect_timeout);
    if plain_http {
        // Plain http needs no roots; with the platform's, reqwest fails to
        // build a client on a machine without CA certificates, even for
        // http.
        builder.tls_certs_only(Vec::<reqwest::Certificate>::new())
    } else {
        builder
    }
}

/// The client, or the configuration error that says why there is none.
pub(crate) fn build(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, ProviderError> {
    builder.build().map_err(|e| {
        ProviderError::config(
            OP,
            format!("cannot set up the HTTP client: {}", error_chain(&e)),
            Some(
                "https needs the system's CA certificates; install them (e.g. the \
                 ca-certificates package)"
                    .into(),
            ),
        )
    })
}

/// The key as a header value, marked sensitive.
fn secret_header(config: &ClientConfig, value: &str) -> Result<HeaderValue, ProviderError> {
    let env = &config.api_key_env;
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        ProviderError::config(
            OP,
            format!("the value of {env} cannot be sent in an HTTP header"),
            Some(format!("check that {env} holds only the key")),
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// `host:port` of a base URL, without user or password: what the live
/// view names when it waits for a call.
pub(crate) fn host_port(base: &str) -> String {
    match Url::parse(base) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => "the provider".into(),
        },
        Err(_) => "the provider".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::config::Secret;

    fn config() -> ClientConfig {
        let mut c = ClientConfig::new("http://127.0.0.1:9/v1", Secret::new("sk-very-secret"), "K");
        c.organization = Some("org-1".into());
        c
    }

    #[test]
    fn each_auth_kind_sends_the_key_its_way() {
        let bearer = Auth::Bearer.headers(&config()).unwrap();
        assert_eq!(bearer[AUTHORIZATION], "Bearer sk-very-secret");
        assert!(bearer[AUTHORIZATION].is_sensitive());
        assert_eq!(bearer["openai-organization"], "org-1");
        assert!(!bearer.contains_key("x-api-key"));

        let anthropic = Auth::Anthropic {
            version: "2023-06-01",
        }
        .headers(&config())
        .unwrap();
        assert_eq!(anthropic["x-api-key"], "sk-very-secret");
        assert!(anthropic["x-api-key"].is_sensitive());
        assert_eq!(anthropic["anthropic-version"], "2023-06-01");
        assert!(!anthropic.contains_key(AUTHORIZATION));
        assert!(!anthropic.contains_key("openai-organization"));
    }

    #[test]
    fn bad_header_values_are_configuration_errors() {
        let mut c = config();
        c.api_key = Secret::new("sk-with\nnewline");
        let e = Auth::Bearer.headers(&c).unwrap_err();
        assert!(
            e.to_string().contains("cannot be sent in an HTTP header"),
            "{e}"
        );
        assert!(!e.to_string().contains("sk-with"), "{e}");
        let e = Auth::Anthropic { version: "2023\n" }
            .headers(&config())
            .unwrap_err();
        assert!(e.to_string().contains("anthropic_version"), "{e}");
    }

    #[test]
    fn clients_build_and_never_show_the_key() {
        for plain in [true, false] {
            let headers = Auth::Bearer.headers(&config()).unwrap();
            let http = build(client_builder(headers, Duration::from_secs(1), plain)).unwrap();
            assert!(!format!("{http:?}").contains("sk-very-secret"));
        }
    }

    #[test]
    fn host_port_of_base_urls() {
        assert_eq!(
            host_port("https://user:pw@api.openai.com/v1"),
            "api.openai.com:443"
        );
        assert_eq!(host_port("http://127.0.0.1:8000/v1"), "127.0.0.1:8000");
        assert_eq!(host_port("not a url"), "the provider");
    }
}
