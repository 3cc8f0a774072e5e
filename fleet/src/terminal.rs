//! The local terminal for `fleet exec -t`: raw mode while the command runs, and its size.
use std::os::fd::AsFd;

/// The terminal in raw mode (keys go to the remote command as they are typed); the old
/// settings come back on drop.
pub struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    pub fn enter() -> std::io::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin.as_fd(), rustix::termios::OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin().as_fd(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// Whether stdin is a terminal.
pub fn is_terminal() -> bool {
    rustix::termios::isatty(std::io::stdin().as_fd())
}

/// The terminal's (columns, rows).
pub fn size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout().as_fd()).ok()?;
    Some((ws.ws_col, ws.ws_row))
}

/// Every later size of the terminal (on SIGWINCH).
pub fn resizes() -> std::io::Result<tokio::sync::mpsc::Receiver<(u16, u16)>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut winch = signal(SignalKind::window_change())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while winch.recv().await.is_some() {
            if let Some(s) = size()
                && tx.send(s).await.is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}
