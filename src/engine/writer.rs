//! The journal writer: a thread that owns the journal file and commits records in
//! groups. A caller that needs a record on disk before it goes on (an invocation about
//! to be sent, a run id about to be polled) waits for the flush, and concurrent records
//! share one fsync; records whose loss a resume can recover from (an attempt's or a
//! step's end, which resume re-reads from the remote run) are written without waiting
//! and flushed with the next durable record.

use std::sync::mpsc;

use tokio::sync::oneshot;

use super::journal::{Journal, Record};

pub enum Request {
    /// Write and flush; answer when on disk.
    Durable(Record, oneshot::Sender<Result<(), String>>),
    /// Write; flush with the next durable record.
    Lazy(Record),
}

/// A cloneable handle to the writer thread (or, inline, to the journal itself).
#[derive(Clone, Debug)]
pub enum JournalWriter {
    Thread(mpsc::Sender<Request>),
    /// Writes on the caller's thread. For tests in paused tokio time, where waiting on
    /// another thread would let the clock leap ahead.
    Inline(std::sync::Arc<std::sync::Mutex<Journal>>),
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("journal request")
    }
}

impl JournalWriter {
    pub fn inline(journal: Journal) -> JournalWriter {
        JournalWriter::Inline(std::sync::Arc::new(std::sync::Mutex::new(journal)))
    }

    pub fn spawn(mut journal: Journal) -> JournalWriter {
        let (tx, rx) = mpsc::channel::<Request>();
        let started = std::thread::Builder::new()
            .name("dwflow-journal".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    let mut records = Vec::with_capacity(batch.len());
                    let mut acks = Vec::new();
                    for req in batch {
                        match req {
                            Request::Durable(r, ack) => {
                                records.push(r);
                                acks.push(ack);
                            }
                            Request::Lazy(r) => records.push(r),
                        }
                    }
                    let refs: Vec<&Record> = records.iter().collect();
                    let result = if acks.is_empty() {
                        journal.write_all(&refs)
                    } else {
                        journal.append_all(&refs)
                    }
                    .map_err(|e| e.to_string());
                    if let Err(e) = &result {
                        tracing::error!("journal write failed: {e}");
                    }
                    for ack in acks {
                        let _ = ack.send(result.clone());
                    }
                }
                // The channel closed: flush whatever was written lazily.
                let _ = journal.append_all(&[]);
            });
        if let Err(e) = started {
            tracing::error!("cannot start the journal writer: {e}");
        }
        JournalWriter::Thread(tx)
    }

    /// Appends a record and waits until it is durable.
    pub async fn append(&self, record: Record) -> Result<(), String> {
        let tx = match self {
            JournalWriter::Thread(tx) => tx,
            JournalWriter::Inline(j) => {
                let mut j = j.lock().unwrap_or_else(|p| p.into_inner());
                return j.append(&record).map_err(|e| e.to_string());
            }
        };
        let (ack, done) = oneshot::channel();
        tx.send(Request::Durable(record, ack))
            .map_err(|_| "the journal writer has stopped".to_string())?;
        done.await
            .map_err(|_| "the journal writer has stopped".to_string())?
    }

    /// Appends a record without waiting for the disk; it is flushed with the next
    /// durable record (or when the writer stops).
    pub fn append_lazy(&self, record: Record) {
        match self {
            JournalWriter::Thread(tx) => {
                let _ = tx.send(Request::Lazy(record));
            }
            JournalWriter::Inline(j) => {
                let mut j = j.lock().unwrap_or_else(|p| p.into_inner());
                let _ = j.append(&record);
            }
        }
    }
}
