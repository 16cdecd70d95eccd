//! The random number service (port 50052): skeleton, to be written.
