//! The forge.toml frontend.
