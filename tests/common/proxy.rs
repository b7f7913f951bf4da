//! A userspace TCP proxy on 127.0.0.1 in front of a server (the test PostgreSQL), to cut one
//! worker off from the database while the others still reach it. `blackhole(true)` stops
//! forwarding both ways while every socket stays open (bytes are held in the kernel's
//! buffers, nothing is reset: the peers see silence, as in a partition); `blackhole(false)`
//! forwards again, on new and held connections alike; `reset()` drops every connection.
//! Every thread ends when the proxy is dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a thread looks at the switches when nothing moves.
const TICK: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Switches {
    blackhole: AtomicBool,
    /// Bumped by `reset()`: a connection made before ends.
    generation: AtomicU64,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

pub struct Proxy {
    pub port: u16,
    sw: Arc<Switches>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 forwarding to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let sw = Arc::new(Switches::default());
        let s = sw.clone();
        let accept = std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => connection(&s, client, upstream),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK),
                    Err(_) => std::thread::sleep(TICK),
                }
                // Threads of connections that ended are joined as we go.
                let mut t = s.threads.lock().unwrap();
                let (done, live): (Vec<_>, Vec<_>) = t.drain(..).partition(|h| h.is_finished());
                *t = live;
                drop(t);
                for h in done {
                    let _ = h.join();
                }
            }
        });
        Self { port, sw, accept: Some(accept) }
    }

    /// A URL of database `db` as user `corral` through this proxy.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://corral@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops (`true`) or resumes (`false`) forwarding, both ways, on every connection.
    pub fn blackhole(&self, on: bool) {
        self.sw.blackhole.store(on, Ordering::SeqCst);
    }

    /// Drops every connection made so far; new ones are forwarded as before.
    pub fn reset(&self) {
        self.sw.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        // Two pumps per connection.
        self.sw.threads.lock().unwrap().iter().filter(|h| !h.is_finished()).count() / 2
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.sw.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let threads: Vec<_> = self.sw.threads.lock().unwrap().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// A new client connection: one upstream connection for it and a pump each way.
fn connection(sw: &Arc<Switches>, client: TcpStream, upstream: u16) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect_timeout(&([127, 0, 0, 1], upstream).into(), Duration::from_secs(2)) else {
        // Nothing to forward to (the server is down): the client sees the connection end.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let generation = sw.generation.load(Ordering::SeqCst);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    let mut t = sw.threads.lock().unwrap();
    let a = sw.clone();
    t.push(std::thread::spawn(move || pump(&a, generation, client, server)));
    let b = sw.clone();
    t.push(std::thread::spawn(move || pump(&b, generation, s2, c2)));
}

/// Copies `from` to `to` while forwarding is on; holds still while blackholed; ends both
/// sockets when either side closes, on `reset()` and when the proxy stops.
fn pump(sw: &Switches, generation: u64, mut from: TcpStream, mut to: TcpStream) {
    let _ = from.set_read_timeout(Some(TICK));
    let _ = to.set_write_timeout(Some(TICK));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if sw.stop.load(Ordering::SeqCst) || sw.generation.load(Ordering::SeqCst) != generation {
            break;
        }
        if sw.blackhole.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if sw.blackhole.load(Ordering::SeqCst) {
                    // Cut off while this was read: it is held until the heal, like the rest.
                    while sw.blackhole.load(Ordering::SeqCst)
                        && !sw.stop.load(Ordering::SeqCst)
                        && sw.generation.load(Ordering::SeqCst) == generation
                    {
                        std::thread::sleep(TICK);
                    }
                }
                if !send(sw, generation, &mut to, &buf[..n]) {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Writes all of `bytes`, looking at the switches between tries; false when the connection
/// is to end.
fn send(sw: &Switches, generation: u64, to: &mut TcpStream, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        if sw.stop.load(Ordering::SeqCst) || sw.generation.load(Ordering::SeqCst) != generation {
            return false;
        }
        match to.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => return false,
        }
    }
    true
}
