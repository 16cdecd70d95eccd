//! The logger service (port 50055): skeleton, to be written.
