//! Operator control by Unix signal: the only place that registers signal handlers.
//!
//! Signals become [`Command`]s on a channel. The supervisor owns every state change and acts on
//! them ([`crate::supervisor::run`]); `main` only wires the two together, and tests or the demo can
//! hand the supervisor a channel of their own (as mini-redis injects its shutdown signal).
//!
//! | signal | command | what the daemon does |
//! |---|---|---|
//! | `SIGUSR1` | [`Command::Pause`] | pause every loaded job, recorded in the progress table |
//! | `SIGUSR2` | [`Command::Resume`] | resume every loaded job that is paused |
//! | `SIGHUP` | [`Command::Reload`] | rescan the jobs directory, re-read `DATABASE_URL_FILE` |
//! | `SIGTERM`, `SIGINT` | [`Command::Drain`] | bounded drain, then exit 0 |
//! | the same, again | [`Command::Exit`] | exit at once |

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use tokio::sync::mpsc;

/// What an operator asked the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Pause every job this daemon has loaded (`SIGUSR1`).
    Pause,
    /// Resume every job this daemon has loaded that is paused (`SIGUSR2`).
    Resume,
    /// Rescan the jobs directory and re-read the database URL file (`SIGHUP`).
    Reload,
    /// Stop taking batches, let the ones in flight commit, release claims, exit (`SIGTERM`/`SIGINT`).
    Drain,
    /// Exit now (a second `SIGTERM`/`SIGINT` while draining). Safe: batches are transactions.
    Exit,
}

impl Command {
    /// The signal's name, for log lines.
    pub fn signal_name(signal: i32) -> &'static str {
        match signal {
            SIGUSR1 => "SIGUSR1",
            SIGUSR2 => "SIGUSR2",
            SIGHUP => "SIGHUP",
            SIGTERM => "SIGTERM",
            SIGINT => "SIGINT",
            _ => "signal",
        }
    }
}

/// Commands towards the supervisor. Unbounded: signals are rare, and a handler must never block.
pub type Sender = mpsc::UnboundedSender<Command>;
pub type Receiver = mpsc::UnboundedReceiver<Command>;

pub fn channel() -> (Sender, Receiver) {
    mpsc::unbounded_channel()
}

/// The signals [`listen`] handles.
pub const SIGNALS: [i32; 5] = [SIGUSR1, SIGUSR2, SIGHUP, SIGTERM, SIGINT];

/// The command for `signal`; `draining` says whether a drain was already requested, which turns a
/// second SIGTERM/SIGINT into [`Command::Exit`].
pub fn command_for(signal: i32, draining: bool) -> Option<Command> {
    match signal {
        SIGUSR1 => Some(Command::Pause),
        SIGUSR2 => Some(Command::Resume),
        SIGHUP => Some(Command::Reload),
        SIGTERM | SIGINT if draining => Some(Command::Exit),
        SIGTERM | SIGINT => Some(Command::Drain),
        _ => None,
    }
}

/// Registered signal handlers; they stay registered until this is dropped (or the process ends).
pub struct Listener {
    handle: signal_hook_tokio::Handle,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// Register handlers for [`SIGNALS`] and forward each as a [`Command`] on `commands`.
///
/// Once registered, these signals no longer terminate the process by default: a daemon sent
/// SIGUSR1 pauses instead of dying. Must be called inside a tokio runtime.
pub fn listen(commands: Sender) -> std::io::Result<Listener> {
    use futures::StreamExt;
    let mut signals = signal_hook_tokio::Signals::new(SIGNALS)?;
    let handle = signals.handle();
    tokio::spawn(async move {
        let mut draining = false;
        while let Some(signal) = signals.next().await {
            let Some(command) = command_for(signal, draining) else { continue };
            draining |= command == Command::Drain;
            tracing::info!(signal = Command::signal_name(signal), command = ?command, "signal received");
            if command == Command::Exit {
                tracing::warn!("second shutdown signal: exiting now (progress is safe: batches are transactions)");
            }
            if commands.send(command).is_err() && command == Command::Exit {
                // Nobody listens any more (the daemon is already on its way out, or stuck there):
                // the operator still gets the immediate exit they asked for.
                std::process::exit(130);
            }
        }
    });
    Ok(Listener { handle })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_commands() {
        assert_eq!(command_for(SIGUSR1, false), Some(Command::Pause));
        assert_eq!(command_for(SIGUSR2, true), Some(Command::Resume));
        assert_eq!(command_for(SIGHUP, false), Some(Command::Reload));
        assert_eq!(command_for(SIGTERM, false), Some(Command::Drain));
        assert_eq!(command_for(SIGINT, false), Some(Command::Drain));
        assert_eq!(command_for(SIGTERM, true), Some(Command::Exit));
        assert_eq!(command_for(SIGINT, true), Some(Command::Exit));
        assert_eq!(command_for(signal_hook::consts::SIGQUIT, false), None);
    }

    #[tokio::test]
    async fn a_real_signal_becomes_a_command() {
        let (tx, mut rx) = channel();
        let _listener = listen(tx).expect("register handlers");
        // SIGHUP to ourselves: without the handler this would end the test process.
        signal_hook::low_level::raise(SIGHUP).expect("raise");
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await;
        assert_eq!(got.ok().flatten(), Some(Command::Reload));
    }
}
