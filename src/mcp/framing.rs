//! The stdio framing in front of the MCP service: every line the client sends is answered.
//!
//! The SDK's own stdio transport drops a line that is not JSON, and an oversized one,
//! without a word, and answers a JSON value that is not a valid message with an error that
//! does not carry the message's id. Here each line is judged first, as JSON-RPC 2.0 says:
//! not UTF-8 or not JSON is a parse error (-32700, id null); JSON that is not one valid
//! message (an array, a scalar, a wrong `jsonrpc`, a bad id or method) is an invalid
//! request (-32600, with the message's id when it has a usable one); a request to a known
//! method whose parameters do not fit is invalid params (-32602); a line longer than
//! [`MAX_MESSAGE_BYTES`] is an invalid request too, and its bytes are never buffered. Good
//! messages go on to the service; the server keeps serving after any of these.

use rmcp::RoleServer;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};

/// The longest line taken as one message: room for the largest handoff an agent may
/// submit (`MAX_HANDOFF`) however its text is escaped, bounded so a client that never
/// sends a newline cannot grow the server without end.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;

/// The methods a client calls on a server, whose parameters the SDK checks.
const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/call",
    "tools/list",
    "prompts/get",
    "prompts/list",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
];

/// What a line from the client is.
#[derive(Debug)]
pub enum Frame {
    /// A valid message, for the service.
    Message(Box<RxJsonRpcMessage<RoleServer>>),
    /// The error reply to send back, one JSON line without its newline.
    Reply(String),
    /// Nothing to do (a blank line).
    Skip,
}

/// A JSON-RPC error reply.
pub fn error_reply(id: &Value, code: i64, message: &str) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }).to_string()
}

/// The reply to a line longer than [`MAX_MESSAGE_BYTES`] (its id is never read).
pub fn oversized_reply() -> String {
    error_reply(
        &Value::Null,
        INVALID_REQUEST,
        &format!("Invalid Request: the message is longer than {MAX_MESSAGE_BYTES} bytes; it was not read"),
    )
}

/// An id JSON-RPC allows a reply to carry: a string or an integer.
fn usable_id(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| v.is_string() || v.is_i64() || v.is_u64())
}

/// Judges one line (without its newline).
pub fn judge(line: &[u8]) -> Frame {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Frame::Skip;
    }
    let null = Value::Null;
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => {
            let at = e.valid_up_to();
            return Frame::Reply(error_reply(
                &null,
                PARSE_ERROR,
                &format!("Parse error: the message is not UTF-8 (invalid byte at offset {at})"),
            ));
        }
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Frame::Reply(error_reply(&null, PARSE_ERROR, &format!("Parse error: not JSON: {e}"))),
    };
    let invalid = |id: Option<&Value>, why: &str| {
        Frame::Reply(error_reply(id.unwrap_or(&null), INVALID_REQUEST, &format!("Invalid Request: {why}")))
    };
    let obj = match &value {
        Value::Object(o) => o,
        Value::Array(_) => return invalid(None, "batches are not part of MCP; send one JSON object per line"),
        _ => return invalid(None, "a message is a JSON object"),
    };
    let raw_id = obj.get("id");
    let id = usable_id(raw_id);
    if raw_id.is_some() && id.is_none() {
        return invalid(None, "\"id\" must be a string or an integer");
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(id, "\"jsonrpc\" must be \"2.0\"");
    }
    let method = obj.get("method");
    let is_response = obj.contains_key("result") || obj.contains_key("error");
    match (method, is_response) {
        (Some(m), false) if !m.is_string() => return invalid(id, "\"method\" must be a string"),
        (Some(_), true) => return invalid(id, "a message is a request or a response, not both"),
        (None, false) => return invalid(id, "no \"method\" (a request) and no \"result\" or \"error\" (a response)"),
        (None, true) if id.is_none() => return invalid(None, "a response needs the id of its request"),
        _ => {}
    }
    // `null` is what the SDK itself writes for a notification without parameters.
    if let Some(p) = obj.get("params")
        && !(p.is_object() || p.is_array() || p.is_null())
    {
        return invalid(id, "\"params\" must be an object or an array");
    }
    match serde_json::from_value::<RxJsonRpcMessage<RoleServer>>(value.clone()) {
        // The SDK takes a request to a method it knows whose parameters do not fit as a
        // custom method, which the service would call unknown: it is invalid params.
        Ok(rmcp::model::JsonRpcMessage::Request(r)) if matches!(&r.request, rmcp::model::ClientRequest::CustomRequest(c) if KNOWN_METHODS.contains(&c.method.as_str())) =>
        {
            let m = method.and_then(Value::as_str).unwrap_or_default();
            Frame::Reply(error_reply(
                &serde_json::to_value(&r.id).unwrap_or(Value::Null),
                INVALID_PARAMS,
                &format!("Invalid params: the parameters do not fit what {m} takes"),
            ))
        }
        Ok(m) => Frame::Message(Box::new(m)),
        // The shape is a request's; only the method's own parameters can be wrong.
        Err(e) if method.is_some() && id.is_some() => {
            Frame::Reply(error_reply(id.unwrap_or(&null), INVALID_PARAMS, &format!("Invalid params: {e}")))
        }
        Err(e) => invalid(id, &e.to_string()),
    }
}

/// Splits a byte stream into lines without ever holding more than [`MAX_MESSAGE_BYTES`] of
/// one: the rest of an oversized line is skipped up to its newline.
pub struct Lines {
    buf: Vec<u8>,
    discarding: bool,
    max: usize,
}

impl Default for Lines {
    fn default() -> Self {
        Self::with_max(MAX_MESSAGE_BYTES)
    }
}

/// A piece of the stream: a whole line, or the mark of one too long to keep.
#[derive(Debug, PartialEq)]
pub enum Piece {
    Line(Vec<u8>),
    Oversized,
}

impl Lines {
    /// Lines of at most `max` bytes (the bound the server uses is [`MAX_MESSAGE_BYTES`]).
    pub fn with_max(max: usize) -> Self {
        Self { buf: Vec::new(), discarding: false, max }
    }

    /// How many bytes of an unfinished line are held.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// The pieces `chunk` completes, in order.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        while !chunk.is_empty() {
            let nl = chunk.iter().position(|&b| b == b'\n');
            let (part, rest) = match nl {
                Some(i) => (&chunk[..i], &chunk[i + 1..]),
                None => (chunk, &[][..]),
            };
            chunk = rest;
            if self.discarding {
                self.discarding = nl.is_none();
                continue;
            }
            if self.buf.len() + part.len() > self.max {
                self.buf = Vec::new();
                self.discarding = nl.is_none();
                out.push(Piece::Oversized);
                continue;
            }
            self.buf.extend_from_slice(part);
            if nl.is_some() {
                out.push(Piece::Line(std::mem::take(&mut self.buf)));
            }
        }
        out
    }

    /// What is left when the stream ends: a last line without a newline.
    pub fn finish(&mut self) -> Option<Piece> {
        let rest = std::mem::take(&mut self.buf);
        (!rest.is_empty() && !self.discarding).then_some(Piece::Line(rest))
    }
}

/// The transport the service runs on: messages judged good by the reader task, and
/// replies written whole, one line each, under one lock shared with the error replies.
pub struct Framed<W> {
    rx: mpsc::Receiver<RxJsonRpcMessage<RoleServer>>,
    out: Arc<Mutex<W>>,
}

async fn write_line<W: AsyncWrite + Unpin>(out: &Mutex<W>, mut line: Vec<u8>) -> std::io::Result<()> {
    line.push(b'\n');
    let mut w = out.lock().await;
    w.write_all(&line).await?;
    w.flush().await
}

/// Starts the reader task over `read` and returns the transport that writes to `write`.
pub fn framed<R, W>(mut read: R, write: W) -> Framed<W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let out = Arc::new(Mutex::new(write));
    let (tx, rx) = mpsc::channel(64);
    let replies = out.clone();
    tokio::spawn(async move {
        let mut lines = Lines::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match read.read(&mut buf).await {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            let pieces = if n == 0 { lines.finish().into_iter().collect() } else { lines.feed(&buf[..n]) };
            for p in pieces {
                let frame = match p {
                    Piece::Line(l) => judge(&l),
                    Piece::Oversized => Frame::Reply(oversized_reply()),
                };
                match frame {
                    Frame::Message(m) => {
                        if tx.send(*m).await.is_err() {
                            return;
                        }
                    }
                    Frame::Reply(r) => {
                        if write_line(&replies, r.into_bytes()).await.is_err() {
                            return;
                        }
                    }
                    Frame::Skip => {}
                }
            }
            if n == 0 {
                return; // the client closed its end: the service ends with the channel
            }
        }
    });
    Framed { rx, out }
}

impl<W: AsyncWrite + Unpin + Send + 'static> rmcp::transport::Transport<RoleServer> for Framed<W> {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let out = self.out.clone();
        async move {
            let line = serde_json::to_vec(&item)?;
            write_line(&out, line).await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        self.rx.recv().await
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.rx.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(line: &[u8]) -> Value {
        match judge(line) {
            Frame::Reply(r) => serde_json::from_str(&r).unwrap(),
            other => panic!("{:?}: expected an error reply, got {other:?}", String::from_utf8_lossy(line)),
        }
    }

    fn code_and_id(line: &[u8]) -> (i64, Value) {
        let r = reply(line);
        (r["error"]["code"].as_i64().unwrap(), r["id"].clone())
    }

    #[test]
    fn a_notification_with_null_params_is_a_message_as_the_sdk_writes_it() {
        let line = br#"{"jsonrpc":"2.0","method":"notifications/initialized","params":null}"#;
        assert!(matches!(judge(line), Frame::Message(_)));
        let bad = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":7}"#;
        assert!(matches!(judge(bad), Frame::Reply(_)));
    }

    #[test]
    fn every_malformed_message_gets_its_error() {
        let cases: &[(&[u8], i64, Value)] = &[
            (b"not json", PARSE_ERROR, Value::Null),
            (br#"{"jsonrpc":"2.0","id":1,"method":"ping""#, PARSE_ERROR, Value::Null),
            (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}", PARSE_ERROR, Value::Null),
            (b"{\"a\":\"\0\"}", PARSE_ERROR, Value::Null),
            (b"[]", INVALID_REQUEST, Value::Null),
            (br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, INVALID_REQUEST, Value::Null),
            (b"42", INVALID_REQUEST, Value::Null),
            (br#"{"jsonrpc":"1.0","id":7,"method":"ping"}"#, INVALID_REQUEST, json!(7)),
            (br#"{"id":"a","method":"ping"}"#, INVALID_REQUEST, json!("a")),
            (br#"{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}"#, INVALID_REQUEST, Value::Null),
            (br#"{"jsonrpc":"2.0","id":3,"method":5}"#, INVALID_REQUEST, json!(3)),
            (br#"{"jsonrpc":"2.0","id":4}"#, INVALID_REQUEST, json!(4)),
            (br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":"x"}"#, INVALID_REQUEST, json!(5)),
            (br#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":7}}"#, INVALID_PARAMS, json!(6)),
        ];
        for (line, code, id) in cases {
            assert_eq!(code_and_id(line), (*code, id.clone()), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn good_messages_and_blank_lines_pass() {
        assert!(matches!(judge(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), Frame::Message(_)));
        assert!(matches!(judge(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r"), Frame::Message(_)));
        assert!(matches!(judge(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#), Frame::Message(_)));
        assert!(matches!(judge(br#"{"jsonrpc":"2.0","id":2,"method":"no/such/method"}"#), Frame::Message(_)));
        assert!(matches!(judge(b"  \r"), Frame::Skip));
    }

    #[test]
    fn lines_are_bounded_and_split_anywhere() {
        let mut l = Lines::default();
        assert_eq!(l.feed(b"ab"), vec![]);
        assert_eq!(
            l.feed(b"c\nd\n\nef"),
            vec![Piece::Line(b"abc".to_vec()), Piece::Line(b"d".to_vec()), Piece::Line(vec![])]
        );
        assert_eq!(l.finish(), Some(Piece::Line(b"ef".to_vec())));
        let big = vec![b'x'; MAX_MESSAGE_BYTES];
        let mut l = Lines::default();
        assert_eq!(l.feed(&big), vec![]);
        assert_eq!(l.feed(b"yy"), vec![Piece::Oversized]);
        assert_eq!(l.feed(&big), vec![], "the rest of the long line is skipped, not kept");
        assert_eq!(l.feed(b"z\nok\n"), vec![Piece::Line(b"ok".to_vec())]);
        assert!(l.buf.capacity() < 1024 * 1024, "nothing of the long line is held");
    }
}
