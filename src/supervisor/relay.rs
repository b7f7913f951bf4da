//! The output relay: what an attempt prints goes through a pipe to whoever watches the
//! attempt (its shim, or the supervisor after adopting it), which writes it to the log,
//! keeps one attempt's output within `max_log_size` and stamps when output last came.
//! Nothing here decides anything about the agent; an observer of the stream plugs in at
//! [`Relay::pump`].

use super::shim::RunFile;
use crate::protocol::time;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// How often, at most, the output stamp is written: the stamp is never older than the
/// newest output by more than this.
pub const STAMP_EVERY_MS: u64 = 250;

/// Width of the line that says how much output was dropped (rewritten in place).
const MARKER_LEN: u64 = 120;

/// One attempt's part of the log, capped: the head stays, then one line saying how many
/// bytes were dropped, then the newest tail. The tail is rotated in place when it has grown
/// by a quarter of its budget, so the attempt's part never exceeds the cap by more than that.
pub struct LogSink {
    file: File,
    /// Where the attempt's output starts, and where the file ends.
    start: u64,
    end: u64,
    cap: u64,
    /// Where the kept tail starts, once something was dropped.
    tail_start: Option<u64>,
    dropped: u64,
}

impl LogSink {
    /// `cap` 0: no limit. Writes go at the file's end as it is now, at explicit offsets
    /// (never through O_APPEND, under which positioned writes would append).
    pub fn new(file: File, cap: u64) -> io::Result<Self> {
        let end = file.metadata()?.len();
        Ok(Self { file, start: end, end, cap, tail_start: None, dropped: 0 })
    }

    /// A line of corral's own (header, footer): not counted against the cap. What it quotes
    /// (the command line, why a start failed) is escaped: `corral logs` prints it to a
    /// terminal, and it stays one line.
    pub fn note(&mut self, line: &str) {
        let mut b = crate::display::escape(line).into_owned().into_bytes();
        b.push(b'\n');
        if self.file.write_all_at(&b, self.end).is_ok() {
            self.end += b.len() as u64;
        }
    }

    pub fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, self.end)?;
        self.end += buf.len() as u64;
        if self.cap > 0 {
            self.rotate_if_full()?;
        }
        Ok(())
    }

    fn head(&self) -> u64 {
        self.cap / 2
    }

    fn tail_budget(&self) -> u64 {
        self.cap.saturating_sub(self.head() + MARKER_LEN).max(1)
    }

    fn rotate_if_full(&mut self) -> io::Result<()> {
        let slack = (self.tail_budget() / 4).max(4096);
        let tail_start = self.tail_start.unwrap_or(self.start + self.head() + MARKER_LEN);
        let first = self.tail_start.is_none();
        let used = if first { self.end - self.start } else { self.end - tail_start };
        let limit = if first { self.cap + slack } else { self.tail_budget() + slack };
        if used <= limit {
            return Ok(());
        }
        // Keep the newest tail_budget bytes, starting after a line break when one is near.
        let mut from = self.end - self.tail_budget();
        let mut probe = vec![0; 4096.min((self.end - from) as usize)];
        if let Ok(n) = self.file.read_at(&mut probe, from)
            && let Some(i) = probe[..n].iter().position(|b| *b == b'\n')
        {
            from += i as u64 + 1;
        }
        let keep = self.end - from;
        // Moving bytes towards the start of the file, chunk by chunk, front to back: every
        // chunk is read before anything is written over it.
        let mut buf = vec![0; 1 << 20];
        let mut done = 0;
        while done < keep {
            let n = (keep - done).min(buf.len() as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], from + done)?;
            self.file.write_all_at(&buf[..n], tail_start + done)?;
            done += n as u64;
        }
        // The first time, the marker itself takes the place of what followed the head.
        self.dropped += from - if first { tail_start - MARKER_LEN } else { tail_start };
        self.file.set_len(tail_start + keep)?;
        self.end = tail_start + keep;
        self.tail_start = Some(tail_start);
        let mut marker = format!(
            "\ncorral: {} bytes of output dropped here (max_log_size {}); the newest output follows",
            self.dropped, self.cap
        )
        .into_bytes();
        marker.resize(MARKER_LEN as usize - 1, b' ');
        marker.push(b'\n');
        self.file.write_all_at(&marker, tail_start - MARKER_LEN)?;
        Ok(())
    }
}

/// Reads the attempt's output pipe into the log and stamps the run file's output slot.
pub struct Relay {
    pipe: Option<OwnedFd>,
    pub sink: LogSink,
    last_stamp: u64,
    buf: Vec<u8>,
    /// The adapter's reader of the stream (adapter agents).
    pub observer: Option<super::stream::Observer>,
}

impl Relay {
    pub fn new(pipe: Option<OwnedFd>, sink: LogSink) -> Self {
        Self { pipe, sink, last_stamp: 0, buf: vec![0; 64 * 1024], observer: None }
    }

    /// The pipe's descriptor while it is open (-1 once every writer is gone).
    pub fn fd(&self) -> i32 {
        self.pipe.as_ref().map_or(-1, |p| p.as_raw_fd())
    }

    /// Moves what the pipe holds now into the log (a bounded amount per call, so a flood
    /// does not starve signals and deadlines).
    pub fn pump(&mut self, run: &mut RunFile) {
        let Some(pipe) = self.pipe.as_ref() else { return };
        let mut got = false;
        for _ in 0..16 {
            // SAFETY: reading into our own buffer from a descriptor we hold.
            let n = unsafe { libc::read(pipe.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len()) };
            let r = if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) };
            match r {
                Ok(0) => {
                    self.pipe = None;
                    break;
                }
                Ok(n) => {
                    got = true;
                    // The observer of the stream sees exactly what the log gets.
                    if let Err(e) = self.sink.write(&self.buf[..n]) {
                        crate::elog!("corral shim: cannot write the log: {e}");
                    }
                    if let Some(o) = self.observer.as_mut() {
                        o.observe(&self.buf[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock: drained for now
            }
        }
        if got {
            let now = time::mono_ms();
            if now >= self.last_stamp + STAMP_EVERY_MS {
                self.last_stamp = now;
                run.stamp_output(now);
            }
        }
    }
}
