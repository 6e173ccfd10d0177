//! A failed answer as a [`ProviderError`]: its kind from the retry
//! classifier's reason, the server's own error (redacted), and a hint of
//! what the user can do about it.

use reqwest::Url;

use super::{Call, HttpClient};
use crate::provider::api_error::ApiError;
use crate::provider::bounded::{self, cap_text};
use crate::provider::config::{ORG_ENV, PROJECT_ENV};
use crate::provider::error::{ErrorKind, ProviderError, human_wait};
use crate::provider::retry::Reason;

impl HttpClient {
    /// The hint of an answer that is not this API's.
    pub(super) fn api_hint(&self) -> String {
        format!(
            "check that {} is an {} API (a wrong base URL, a proxy or a captive portal answers \
             with pages of its own); the call is tried again later",
            self.display_base_url(),
            self.api.name
        )
    }

    /// A 2xx answer larger than any answer of this call can be: reading
    /// stopped at the cap.
    pub(super) fn too_large(
        &self,
        call: &Call<'_>,
        status: u16,
        request_id: Option<String>,
        head: &[u8],
        declared: Option<u64>,
    ) -> ProviderError {
        let size = match declared {
            Some(n) => format!("{n} bytes"),
            None => format!("more than {}", cap_text(call.cap)),
        };
        let what = bounded::describe_body(&self.redact(&String::from_utf8_lossy(head)));
        ProviderError::new(call.op.clone(), ErrorKind::Protocol)
            .with_status(Some(status))
            .with_request_id(request_id)
            .with_detail(format!(
                "the answer is {size}, above the {} this call accepts (stopped reading); it begins: {what}",
                cap_text(call.cap)
            ))
            .with_hint(Some(self.api_hint()))
    }

    /// Builds the error for a non-2xx answer; `reason` is `None` for an
    /// unclear create.
    pub(super) fn http_error(
        &self,
        call: &Call<'_>,
        reason: Option<&Reason>,
        status: u16,
        request_id: Option<String>,
        body: &str,
        attempts: u32,
    ) -> ProviderError {
        let api = ApiError::from_body(body).map(|a| ApiError {
            message: a.message.map(|m| self.redact(&m)),
            ..a
        });
        let kind = match reason {
            Some(Reason::Quota) => ErrorKind::Quota,
            Some(Reason::Unauthorized) => ErrorKind::Auth,
            Some(Reason::Forbidden) => ErrorKind::Permission,
            Some(Reason::NotFound) => ErrorKind::NotFound,
            Some(Reason::Rejected | Reason::ServerSaidNo) => ErrorKind::Rejected,
            Some(Reason::RetryAfterTooLong { .. }) => ErrorKind::RetryAfterTooLong,
            Some(Reason::Exhausted { .. }) | None if status == 429 => ErrorKind::RateLimited,
            Some(Reason::Exhausted { .. }) | None => ErrorKind::Server,
        };
        let env = &self.config.api_key_env;
        let base = self.display_base_url();
        let detail = match reason {
            Some(Reason::Unauthorized) => Some(format!("the API key in {env} was refused")),
            Some(Reason::RetryAfterTooLong { wait }) => Some(format!(
                "the server asked to wait {} before retrying",
                human_wait(*wait)
            )),
            _ if api.as_ref().is_some_and(|a| a.message.is_some()) => None,
            _ if body.trim().is_empty() => None,
            _ => Some(bounded::describe_body(&self.redact(body))),
        };
        let hint = match (kind, reason) {
            (ErrorKind::Auth, _) => Some(format!(
                "check that {env} holds a valid, active key for {base}"
            )),
            (ErrorKind::Permission, _) => Some(format!(
                "the key in {env} may not do this; check its permissions and the project and \
                 organization it belongs to ({PROJECT_ENV}, {ORG_ENV})"
            )),
            (ErrorKind::Quota, _) => Some(self.quota_hint()),
            (ErrorKind::NotFound, _) => Some((self.api.not_found_hint)(&base)),
            (ErrorKind::RetryAfterTooLong, Some(Reason::RetryAfterTooLong { wait })) => {
                Some(format!("run the command again in {}", human_wait(*wait)))
            }
            (ErrorKind::RateLimited, _) => {
                Some("the provider is rate limiting; run the command again later".into())
            }
            (ErrorKind::Server, _) => {
                Some("the provider is having trouble; run the command again later".into())
            }
            _ => None,
        };
        let mut err = ProviderError::new(call.op.clone(), kind)
            .with_status(Some(status))
            .with_request_id(request_id)
            .with_api(api)
            .with_attempts(attempts)
            .with_hint(hint);
        if let Some(d) = detail {
            err = err.with_detail(d);
        }
        err
    }

    fn quota_hint(&self) -> String {
        let openai = Url::parse(&self.config.base_url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.ends_with("openai.com")))
            .unwrap_or(false);
        if openai {
            "the account is out of credit or over its spend limit: add credit or raise the limit \
             on your billing page (https://platform.openai.com/settings/organization/billing), \
             then run the command again"
                .into()
        } else {
            "the account is out of credit or over its spend limit: add credit or raise the limit \
             on your provider's billing page, then run the command again"
                .into()
        }
    }
}
