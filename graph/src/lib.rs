//! forge graph.
