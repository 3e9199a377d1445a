//! Pure analysis verdicts. (being completed)
