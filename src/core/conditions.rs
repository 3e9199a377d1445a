//! Condition merging. (being completed)
