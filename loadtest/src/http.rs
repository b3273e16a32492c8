//! Minimal HTTP GET for /stats checks.
