//! The control socket's open connections, as the server sees them: what each is doing and
//! how many bytes it holds of a request not finished yet. It decides which connection gives
//! way when descriptors run short or unfinished requests take too much memory: first those
//! that never sent a byte (oldest first), then served ones idle between requests (longest
//! idle first), then half-sent requests (oldest first), and only when nothing else is left,
//! the oldest event stream (its client sees the stream end; the events stay stored). A
//! connection whose request is being answered is never shed: no reply is lost.

use std::collections::HashMap;
use std::time::Instant;

/// Bytes held for unfinished request lines across all connections. One request may be up
/// to `MAX_REQUEST_BYTES`; many half-sent ones may not add up to more than this.
pub const MAX_BUFFERED_TOTAL: usize = 4 * crate::ipc::MAX_REQUEST_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connected, nothing sent yet.
    Fresh,
    /// Between requests: everything it asked was answered.
    Idle,
    /// Part of a request line has arrived: this many bytes are held for it.
    Partial(usize),
    /// A request of it is with the supervisor, or its reply is being written.
    Busy,
    /// Streaming events (`events --follow`, `wait`).
    Following,
}

struct Conn {
    state: State,
    /// When it entered its state.
    since: Instant,
    abort: Option<tokio::task::AbortHandle>,
}

#[derive(Default)]
pub struct Table {
    next: u64,
    conns: HashMap<u64, Conn>,
    buffered: usize,
}

impl Table {
    /// A new connection; its task's abort handle is given with [`Table::attach`].
    pub fn open(&mut self, now: Instant) -> u64 {
        self.next += 1;
        self.conns.insert(self.next, Conn { state: State::Fresh, since: now, abort: None });
        self.next
    }

    pub fn attach(&mut self, id: u64, abort: tokio::task::AbortHandle) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.abort = Some(abort);
        }
    }

    /// Forgets a connection (its task ended or was shed); frees what it held.
    pub fn close(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            self.release(c.state);
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn buffered(&self) -> usize {
        self.buffered
    }

    pub fn set(&mut self, id: u64, state: State, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let old = std::mem::replace(&mut c.state, state);
        if old != state {
            c.since = now;
        }
        self.release(old);
        if let State::Partial(n) = state {
            self.buffered += n;
        }
    }

    fn release(&mut self, state: State) {
        if let State::Partial(n) = state {
            self.buffered -= n;
        }
    }

    /// The connection to shed next, other than `except`: see the module doc for the order.
    pub fn victim(&self, except: Option<u64>, want: Want) -> Option<u64> {
        let rank = |s: State| match (s, want) {
            (State::Fresh, Want::Descriptor | Want::DescriptorOrPartial) => Some(0),
            (State::Idle, Want::Descriptor | Want::DescriptorOrPartial) => Some(1),
            (State::Partial(_), Want::DescriptorOrPartial | Want::Memory) => Some(2),
            // The last resort: better one stream ended than no new client ever served.
            (State::Following, Want::DescriptorOrPartial) => Some(3),
            _ => None,
        };
        self.conns
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter_map(|(id, c)| Some(((rank(c.state)?, c.since, *id), *id)))
            .min_by_key(|(key, _)| *key)
            .map(|(_, id)| id)
    }

    /// Sheds one connection (see [`Table::victim`]); whether there was one to shed. Its
    /// descriptor and buffer are freed when its task is dropped, at the runtime's next turn.
    pub fn shed(&mut self, except: Option<u64>, want: Want) -> bool {
        let Some(id) = self.victim(except, want) else { return false };
        if let Some(abort) = self.conns.get_mut(&id).and_then(|c| c.abort.take()) {
            abort.abort();
        }
        self.close(id);
        true
    }
}

/// What shedding a connection is to free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A descriptor, from a connection that holds no request.
    Descriptor,
    /// A descriptor, from a half-sent request if no connection is free of one.
    DescriptorOrPartial,
    /// Memory held for a half-sent request.
    Memory,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sheds_silent_then_idle_then_half_sent_never_busy() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut t = Table::default();
        let busy = t.open(at(0));
        t.set(busy, State::Busy, at(0));
        let follow = t.open(at(1));
        t.set(follow, State::Following, at(1));
        let half_old = t.open(at(2));
        t.set(half_old, State::Partial(10), at(2));
        let half_new = t.open(at(3));
        t.set(half_new, State::Partial(5), at(3));
        let idle_recent = t.open(at(4));
        t.set(idle_recent, State::Idle, at(9));
        let idle_long = t.open(at(5));
        t.set(idle_long, State::Idle, at(6));
        let silent = t.open(at(7));
        assert_eq!(t.buffered(), 15);

        assert_eq!(t.victim(None, Want::Descriptor), Some(silent));
        assert_eq!(t.victim(Some(silent), Want::Descriptor), Some(idle_long));
        assert_eq!(t.victim(None, Want::Memory), Some(half_old));
        let mut order = Vec::new();
        while let Some(v) = t.victim(None, Want::DescriptorOrPartial) {
            order.push(v);
            t.close(v);
        }
        assert_eq!(order, [silent, idle_long, idle_recent, half_old, half_new, follow]);
        assert_eq!(t.buffered(), 0);
        assert_eq!(t.len(), 1);
        assert!(!t.shed(None, Want::DescriptorOrPartial));
    }

    #[test]
    fn buffered_bytes_follow_state_changes() {
        let now = Instant::now();
        let mut t = Table::default();
        let a = t.open(now);
        t.set(a, State::Partial(100), now);
        t.set(a, State::Partial(300), now);
        assert_eq!(t.buffered(), 300);
        t.set(a, State::Busy, now);
        assert_eq!(t.buffered(), 0);
        t.set(a, State::Partial(7), now);
        t.close(a);
        t.close(a);
        assert_eq!((t.buffered(), t.len()), (0, 0));
    }
}
