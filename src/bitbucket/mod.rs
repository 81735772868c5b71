//! The Bitbucket Cloud API: payload models, the HTTP client (auth, paging,
//! origin checks), retry classification and the per-credential rate budget.
//! Knows nothing of actors or the store.

pub mod budget;
pub mod client;
pub mod error;
pub mod models;

pub use budget::{RateBudget, RateLimitBackoff};
pub use client::{
    BitbucketClient, BudgetTotals, ClientOptions, ClientStats, Pager, RetryBackoff, VisitedPages,
};
pub use error::ApiError;
