//! The AWS native engine (cargo feature `aws`).
