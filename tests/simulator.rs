//! The simulator on its own: it must behave like the real Bitbucket API.
