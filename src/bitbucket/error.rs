//! What can go wrong talking to Bitbucket, classified the way the crawler
//! must react: retry, give up on this request, or stop everything.

use thiserror::Error;

/// An error from the Bitbucket client. Messages never contain a secret:
/// credentials travel only in headers, and URLs are printed without them.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ApiError {
    /// HTTP 401: the credential is not valid (wrong, expired, an API token
    /// sent as Bearer, an app password used with an e-mail). Stops a sync.
    #[error("HTTP 401 from Bitbucket: {message}")]
    InvalidCredentials {
        /// Bitbucket's error message.
        message: String,
    },
    /// HTTP 403: a valid credential without the scope this call needs.
    /// Stops a sync.
    #[error("HTTP 403 from Bitbucket: {message}")]
    InvalidPermissions {
        /// Bitbucket's error message.
        message: String,
        /// Scopes the credential has, when Bitbucket says.
        granted: Option<Vec<String>>,
        /// Scopes the call needs, when Bitbucket says.
        required: Option<Vec<String>>,
    },
    /// HTTP 404: the workspace, repository, branch or commit does not exist
    /// or is not visible to the credential. Not retried.
    #[error("HTTP 404 from Bitbucket: {message}")]
    NotFound {
        /// Bitbucket's error message.
        message: String,
        /// Unknown commit hashes (`error.data.shas`), when Bitbucket lists them.
        shas: Vec<String>,
    },
    /// Another 4xx (400 "Invalid page", 410 Gone, …). Not retried.
    #[error("HTTP {status} from Bitbucket: {message}")]
    Rejected {
        /// The status code.
        status: u16,
        /// Bitbucket's error message (or the start of the body).
        message: String,
    },
    /// No connection could be made or kept (DNS, TCP, TLS, timeout), still
    /// after every retry.
    #[error("could not reach Bitbucket at {origin}: {message}")]
    Connection {
        /// Scheme, host and port of the API.
        origin: String,
        /// What failed.
        message: String,
    },
    /// Transient failures (429, 5xx, broken bodies) outlasted `max_retries`.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A `next` link or redirect pointed away from the API origin; nothing
    /// was sent there.
    #[error("refused to follow a link to {origin}: only {api_origin} is trusted with credentials")]
    ForeignOrigin {
        /// The foreign origin.
        origin: String,
        /// The configured API origin.
        api_origin: String,
    },
    /// A response body exceeded the size cap.
    #[error("response body larger than {limit} bytes refused")]
    BodyTooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// A workspace, slug or branch name that cannot be a path segment.
    #[error("invalid {what} name {value:?}")]
    InvalidName {
        /// "workspace", "repository" or "branch".
        what: &'static str,
        /// The offending name.
        value: String,
    },
    /// A link that is not a valid URL.
    #[error("invalid URL in response: {0}")]
    InvalidUrl(String),
    /// A `next` link led back to a page this walk already fetched (a broken
    /// proxy or cache): following it would never end. Nothing was sent.
    #[error("`next` links go round in a circle: {path} was already fetched in this walk ({pages} pages fetched); stopping this walk")]
    LinkCycle {
        /// Path of the page linked to again (no query: it may be long).
        path: String,
        /// Pages the walk had fetched.
        pages: usize,
    },
}

impl ApiError {
    /// The exit code: the `verify` code's (3, 4, 5), else 1.
    pub fn exit_code(&self) -> u8 {
        crate::verify::VerifyCode::of(self).map_or(crate::exit::RUNTIME, |c| c.exit_code())
    }
}

impl ApiError {
    /// Whether this error must stop a whole sync (401 / 403).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ApiError::InvalidCredentials { .. } | ApiError::InvalidPermissions { .. }
        )
    }

    /// The HTTP status behind the error, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::InvalidCredentials { .. } => Some(401),
            ApiError::InvalidPermissions { .. } => Some(403),
            ApiError::NotFound { .. } => Some(404),
            ApiError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}
