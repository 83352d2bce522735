//! A pseudo-terminal for `petctl exec -t`: the command runs as the leader
//! of a new session whose controlling terminal is the pty's slave; the
//! agent reads and writes the master, and sets its size when the client's
//! terminal changes (as the kubelet's streaming server does for
//! `kubectl exec -it`).

use std::os::fd::{AsFd as _, OwnedFd};

use petset_proto::v1;

/// An open pseudo-terminal.
#[derive(Debug)]
pub struct Pty {
    /// The master side (the agent's).
    pub master: OwnedFd,
    /// The slave side (the command's standard streams), until it started.
    pub slave: OwnedFd,
}

impl Pty {
    /// Opens a new pseudo-terminal pair.
    pub fn open() -> std::io::Result<Pty> {
        use rustix::fs::{Mode, OFlags};
        use rustix::pty::OpenptFlags;
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Pty { master, slave })
    }

    /// Makes the slave `command`'s standard streams; the command must
    /// make it its controlling terminal (started under `setsid --ctty`,
    /// see [`crate::runtime::Exec::command`]).
    pub fn attach(&self, command: &mut tokio::process::Command) -> std::io::Result<()> {
        command
            .stdin(std::fs::File::from(self.slave.try_clone()?))
            .stdout(std::fs::File::from(self.slave.try_clone()?))
            .stderr(std::fs::File::from(self.slave.try_clone()?));
        Ok(())
    }

    /// Sets the terminal's size.
    pub fn resize(master: &OwnedFd, size: &v1::TerminalSize) {
        let (cols, rows) = cells(size);
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let _ = rustix::termios::tcsetwinsize(master.as_fd(), size);
    }
}

/// A client's terminal size as a terminal takes it: columns and rows, each
/// at most `u16::MAX`.
pub fn cells(size: &v1::TerminalSize) -> (u16, u16) {
    let fit = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
    (fit(size.cols), fit(size.rows))
}
