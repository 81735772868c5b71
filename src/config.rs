//! Configuration: TOML file + environment + flags → one validated [`Config`].
