//! What `/healthz` reports: the last pass, the last success, a pass that
//! failed as a whole (503, with the `verify` code), and rate-limit pauses.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::api::{json_response, AppState};
use crate::actors::{PassError, PassSummary};

/// What `/healthz` reports.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// Passes ended (any result).
    passes: u64,
    /// The last pass that did not fail as a whole.
    last_pass: Option<PassSummary>,
    /// When such a pass last ended.
    last_success: Option<DateTime<Utc>>,
    /// Set while the last pass failed as a whole.
    failure: Option<PassFailure>,
}

impl Health {
    /// A pass ended without failing as a whole.
    pub(super) fn passed(&mut self, summary: PassSummary, at: DateTime<Utc>) {
        self.passes += 1;
        self.last_pass = Some(summary);
        self.last_success = Some(at);
        self.failure = None;
    }

    /// A pass failed as a whole.
    pub(super) fn failed(&mut self, error: &PassError, at: DateTime<Utc>) {
        self.passes += 1;
        self.failure = Some(PassFailure {
            at,
            code: failure_code(error),
            message: error.to_string(),
        });
    }
}

/// A pass that failed as a whole.
#[derive(Debug, Clone, Serialize)]
struct PassFailure {
    /// When it ended.
    at: DateTime<Utc>,
    /// `invalid_credentials`, `invalid_permissions`, `no_resources`,
    /// `connection_failed`, `api_error`, `store_error`, `low_disk` or
    /// `internal`.
    code: &'static str,
    /// The error chain, one line (never a secret: API errors carry none).
    message: String,
}

/// A short, stable code for a pass failure (the `verify` codes for API errors).
pub(super) fn failure_code(e: &PassError) -> &'static str {
    match e {
        PassError::Api { source, .. } => {
            crate::verify::VerifyCode::of(source).map_or("api_error", |c| c.as_str())
        }
        PassError::Store(crate::store::StoreError::LowDisk { .. }) => "low_disk",
        PassError::Store(_) => "store_error",
        PassError::Internal(_) => "internal",
    }
}

/// `GET /healthz`. While a credential is paused after a 429, `rate_limit`
/// says how many are and when the first resumes; `waiting` is true when
/// all are, so the pass is waiting on the limit. The status is unchanged
/// (still 200: waiting is what the limit needs, not a failure).
pub(super) async fn healthz(State(s): State<AppState>) -> Response {
    let budget = s.client.budget_totals();
    let rate_limit = budget.first_resume.map(|resume_in| {
        let until = Utc::now() + chrono::Duration::from_std(resume_in).unwrap_or_default();
        serde_json::json!({
            "waiting": budget.all_paused(),
            "credentials_paused": budget.paused,
            "credentials": budget.credentials,
            "resume_in_seconds": resume_in.as_secs(),
            "resume_at": until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    });
    let h = s.health();
    let (status, mut body) = match &h.failure {
        Some(f) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "status": "failed",
                "error": f,
                "last_pass": h.last_pass,
                "last_success": h.last_success,
            }),
        ),
        None => (
            StatusCode::OK,
            serde_json::json!({
                "status": if h.passes == 0 { "starting" } else { "ok" },
                "last_pass": h.last_pass,
                "last_success": h.last_success,
            }),
        ),
    };
    if let (Some(r), Some(obj)) = (rate_limit, body.as_object_mut()) {
        obj.insert("rate_limit".into(), r);
    }
    json_response(status, &body)
}
