//! Reporters: subscribers to engine events. Terminal progress (live with indicatif on
//! a TTY, plain lines otherwise) and the end-of-run summary (a table, or JSON).

pub mod progress;
pub mod summary;
