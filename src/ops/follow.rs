//! The event stream, followed across supervisor restarts. A follower remembers the number
//! of the last event it saw; when the connection ends (the supervisor was killed, exited
//! idle, or was restarted) it connects again, starting a supervisor when none runs, and
//! asks for the events after that number: none is lost and none comes twice.

use super::{Failure, Target};
use crate::client::Client;
use crate::ipc::{Reply, Request};
use crate::store::EventRecord;
use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How often a note is printed while the supervisor cannot be reached.
const NOTE_EVERY: Duration = Duration::from_secs(5);

pub struct Follower<'a> {
    target: Target<'a>,
    agent: Option<String>,
    /// The number of the last event seen.
    after: u64,
    stream: Option<UnixStream>,
    /// Bytes read and not yet a whole line: a read that times out mid-line loses nothing.
    buf: Vec<u8>,
    /// How many times the stream was connected again.
    reconnects: u32,
    /// Told what happens while reconnecting (the CLI prints it on stderr).
    note: &'a dyn Fn(&str),
}

impl<'a> Follower<'a> {
    /// Follows the events after number `after` (of `agent` alone, when given).
    pub fn new(target: Target<'a>, after: u64, agent: Option<String>, note: &'a dyn Fn(&str)) -> Self {
        Self { target, agent, after, stream: None, buf: Vec::new(), reconnects: 0, note }
    }

    /// The number of the last event seen.
    pub fn last_seq(&self) -> u64 {
        self.after
    }

    /// How many times the stream had to be connected again (a caller re-checks what it
    /// waits for after one).
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// The next event, waiting at most `wait` (`None`: as long as it takes); `Ok(None)`
    /// when that time passed first.
    pub fn next(&mut self, wait: Option<Duration>) -> Result<Option<EventRecord>, Failure> {
        let deadline = wait.map(|w| Instant::now() + w);
        let mut chunk = [0u8; 8192];
        loop {
            while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                if let Ok(e) = serde_json::from_slice::<EventRecord>(&line) {
                    if e.seq <= self.after {
                        continue;
                    }
                    self.after = e.seq;
                    return Ok(Some(e));
                }
                if let Ok(r) = serde_json::from_slice::<Reply>(&line)
                    && !r.ok
                {
                    return Err(Failure::new(r.exit.unwrap_or(1), r.error.unwrap_or_else(|| "refused".into())));
                }
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()) {
                    Some(l) => Some(l),
                    None => return Ok(None),
                },
                None => None,
            };
            let Some(stream) = self.stream.as_mut() else {
                if !self.connect(deadline)? {
                    return Ok(None);
                }
                continue;
            };
            stream.set_read_timeout(left).map_err(|e| Failure::new(1, e.to_string()))?;
            match stream.read(&mut chunk) {
                Ok(0) => self.lost("the supervisor closed the event stream"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => self.lost(&format!("reading the event stream: {e}")),
            }
        }
    }

    fn lost(&mut self, why: &str) {
        self.stream = None;
        // A part line from the old connection is sent again, whole, by the next one.
        self.buf.clear();
        self.reconnects += 1;
        (self.note)(&format!("{why}; reconnecting (resuming after event {})", self.after));
    }

    /// Connects (starting a supervisor when none runs) and asks for the events after the
    /// last one seen; tries until `deadline`. Whether it is connected.
    fn connect(&mut self, deadline: Option<Instant>) -> Result<bool, Failure> {
        let started = Instant::now();
        let mut noted = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let attempt = Client::connect(self.target.data, self.target.root).and_then(|mut c| {
                c.send(&Request::Events { after: self.after, agent: self.agent.clone(), follow: true })?;
                Ok(c.stream().try_clone()?)
            });
            match attempt {
                Ok(s) => {
                    if self.reconnects > 0 {
                        (self.note)(&format!("reconnected; following from event {}", self.after + 1));
                    }
                    self.stream = Some(s);
                    return Ok(true);
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    // A socket that is not to be trusted is the user's to fix; waiting changes nothing.
                    if text.contains("refusing") || text.contains("not by you") {
                        return Err(Failure::new(1, text));
                    }
                    if noted.elapsed() >= NOTE_EVERY {
                        (self.note)(&format!(
                            "still reconnecting after {:.0}s: {text}",
                            started.elapsed().as_secs_f64()
                        ));
                        noted = Instant::now();
                    }
                }
            }
            if deadline.is_some_and(|d| Instant::now() + pause >= d) {
                return Ok(false);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}
