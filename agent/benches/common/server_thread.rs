//! A server thread inside a network namespace, for the benchmarks that send real traffic
//! between namespaces: it enters the namespace, pins itself to a CPU, opens its listeners,
//! says so, and serves them until stopped. Dropping it stops it and waits for it.
//!
//! A module of its own beside `common`, included only by the benchmarks that use it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use crate::lab::{enter_netns, pin};

/// A running server thread; see the module documentation.
pub struct ServerThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
    /// Names it in messages, e.g. "policy bench: the server".
    label: String,
}

impl ServerThread {
    /// Starts thread `name` in network namespace `netns` on CPU `cpu`: `listen` opens what it
    /// serves, then `serve` runs until the flag it is given is set. Returns once `listen`
    /// succeeded, or with its error.
    pub fn start<L: 'static>(
        name: String,
        label: String,
        netns: String,
        cpu: usize,
        listen: impl FnOnce() -> Result<L> + Send + 'static,
        serve: impl FnOnce(&L, &AtomicBool) -> Result<()> + Send + 'static,
    ) -> Result<ServerThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let listeners = enter_netns(&netns)
                        .and_then(|()| pin(cpu))
                        .and_then(|()| listen());
                    match listeners {
                        Ok(listeners) => {
                            let _ = ready_tx.send(Ok(()));
                            serve(&listeners, &stop)
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            Ok(())
                        }
                    }
                })
                .with_context(|| format!("starting {label}'s thread"))?
        };
        let server = ServerThread {
            stop,
            thread: Some(thread),
            label,
        };
        ready_rx
            .recv()
            .context("the server thread ended before listening")??;
        Ok(server)
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("{} failed: {e:#}", self.label),
                Err(_) => eprintln!("{}'s thread panicked", self.label),
            }
        }
    }
}
