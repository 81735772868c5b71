//! The Bitbucket Cloud API: payload models, the HTTP client (auth, paging,
//! origin checks), retry classification and the per-credential rate budget.
//! Knows nothing of actors or the store.

pub mod models;
