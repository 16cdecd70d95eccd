//! The streaming service (port 50053): skeleton, to be written.
