//! The crawl through the real binary against the simulator (SPEC section 5).
