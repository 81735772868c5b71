//! `query`, `show` and `export` through the real binary over a store filled by `sync`.
