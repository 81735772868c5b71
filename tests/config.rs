//! Configuration: precedence, workspace URLs, secrets, errors.
