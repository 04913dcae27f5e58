//! The Dockerfile parser.
