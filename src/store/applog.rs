//! The per-app execution log writer: the data plane hands each record for an app's request to a
//! bounded channel without waiting ([`crate::upstream::apps::Router::log`]), and this one thread takes
//! them in batches and inserts each batch in one database transaction, trimming every app to
//! `log_retention` entries. Management actions are logged by the store in the same transaction as
//! the change itself.

use std::io;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::background::{Background, StopSignal};
use crate::store::{LogEntry, Store};
use crate::upstream::apps::LOG_QUEUE;

/// Most entries written in one transaction.
const BATCH: usize = 1024;
/// Entries held while the database is unavailable, and the pause between two tries.
const HELD: usize = 4 * BATCH;
const RETRY: Duration = Duration::from_millis(500);

/// The running writer thread.
pub struct LogWriter {
    tx: Sender<LogEntry>,
    thread: Background,
}

impl LogWriter {
    /// Starts the writer on its own connection.
    pub fn start(store: Store) -> io::Result<LogWriter> {
        let (tx, rx) = crossbeam_channel::bounded(LOG_QUEUE);
        let thread = Background::spawn("pibl-applog", move |stop| run(&store, &rx, stop))?;
        Ok(LogWriter { tx, thread })
    }

    /// Where producers send entries.
    pub fn sender(&self) -> Sender<LogEntry> {
        self.tx.clone()
    }

    /// Writes what is queued and stops.
    pub fn shutdown(self) {
        self.thread.stop();
    }
}

fn run(store: &Store, rx: &Receiver<LogEntry>, stop: &StopSignal) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        crossbeam_channel::select! {
            recv(rx) -> entry => match entry {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            },
            recv(stop.stopped()) -> _ => break,
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        write(store, &mut batch);
    }
    // Stopping: whatever is still queued goes in too.
    batch.extend(rx.try_iter());
    if store.is_read_only() {
        return;
    }
    for chunk in batch.chunks(BATCH) {
        if let Err(e) = store.insert_logs(chunk) {
            log::error!("execution log: {} entries lost: {e}", chunk.len());
        }
    }
}

fn write(store: &Store, batch: &mut Vec<LogEntry>) {
    // A database opened read-only (said once, with a warning, when it was opened) cannot keep them:
    // dropped quietly rather than with an error line per batch for as long as it stays so.
    if store.is_read_only() {
        batch.clear();
        return;
    }
    match store.insert_logs(batch) {
        Ok(()) => batch.clear(),
        // [pg] A shared database out of reach: hold the entries (the newest HELD) and try again
        // shortly; meanwhile the queue fills and the data plane drops what it cannot hand over.
        Err(e) if e.is_unavailable() => {
            if batch.len() > HELD {
                let excess = batch.len() - HELD;
                batch.drain(..excess);
                log::warn!("execution log: the database is unavailable; {excess} oldest entries dropped");
            }
            std::thread::sleep(RETRY);
        }
        Err(e) => {
            log::error!("execution log: {} entries lost: {e}", batch.len());
            batch.clear();
        }
    }
}
