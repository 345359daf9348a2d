//! A small GitHub REST client: workflow dispatch, repository dispatch, contents, runs.
