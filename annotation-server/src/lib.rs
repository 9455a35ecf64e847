//! Annotation server: labeler UI, researcher REST API, assignment, export.
pub mod cli;
