//! Lines on the stdin of `corral mcp`, as the server reads them (src/mcp/framing.rs): the
//! stream is cut into bounded lines by `Lines`, and each line is judged by `judge` (a
//! message for the service, or the JSON-RPC error reply to send).
//!
//! The first byte sets the line bound (so the oversized path is reached with small
//! inputs) and where the stream is cut in two. Invariants: no panic; the pieces are the
//! same however the stream is cut; no more than the bound is ever held; every reply is one
//! line of JSON-RPC 2.0 error with code -32700, -32600 or -32602 and an id that is null, a
//! string or an integer; a message judged good, written back as the SDK writes it, is one
//! line judged good again.

#![no_main]

use corral::mcp::framing::{Frame, Lines, Piece, judge, oversized_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knob, stream)) = data.split_first() else { return };
    let max = 1 + (knob as usize % 64) * 16;
    let cut = if stream.is_empty() { 0 } else { (knob as usize * 7) % stream.len() };

    let mut whole = Lines::with_max(max);
    let mut a = whole.feed(stream);
    a.extend(whole.finish());
    let mut split = Lines::with_max(max);
    let mut b = split.feed(&stream[..cut]);
    assert!(split.held() <= max, "{} bytes held past a bound of {max}", split.held());
    b.extend(split.feed(&stream[cut..]));
    b.extend(split.finish());
    assert_eq!(a, b, "cutting the stream changed its lines");

    for p in a {
        match p {
            Piece::Line(l) => {
                assert!(l.len() <= max && !l.contains(&b'\n'));
                check(judge(&l));
            }
            Piece::Oversized => check(Frame::Reply(oversized_reply())),
        }
    }
    // Each line also judged whole, whatever its length.
    for line in stream.split(|b| *b == b'\n') {
        check(judge(line));
    }
});

fn check(f: Frame) {
    match f {
        Frame::Skip => {}
        Frame::Reply(r) => {
            assert!(!r.contains('\n'), "reply spans lines: {r}");
            let v: serde_json::Value = serde_json::from_str(&r).expect("a reply is JSON");
            assert_eq!(v["jsonrpc"], "2.0");
            let code = v["error"]["code"].as_i64().expect("a reply has an error code");
            assert!([-32700, -32600, -32602].contains(&code), "code {code}");
            assert!(v["error"]["message"].is_string());
            let id = &v["id"];
            assert!(id.is_null() || id.is_string() || id.is_i64() || id.is_u64(), "id {id}");
        }
        Frame::Message(m) => {
            let line = serde_json::to_vec(&*m).expect("a message serializes");
            assert!(!line.contains(&b'\n'));
            assert!(
                matches!(judge(&line), Frame::Message(_)),
                "a message written back is refused: {}",
                String::from_utf8_lossy(&line)
            );
        }
    }
}
