//! Crash safety and hostile conditions through the real binary: SIGKILL at random moments, 429 storms with faults, repeatable full walks, a repository that keeps failing.
