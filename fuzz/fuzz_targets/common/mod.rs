//! Helpers shared by the fuzz targets.
#![allow(dead_code)] // each target uses a part

use serde_json::Value;

/// The text the real readers see: `read_bounded` refuses more than `MAX_FILE_BYTES` and
/// anything that is not UTF-8 before a parser runs.
pub fn as_file_text(data: &[u8]) -> Option<&str> {
    if data.len() as u64 > corral::protocol::files::MAX_FILE_BYTES {
        return None;
    }
    std::str::from_utf8(data).ok()
}

/// Structural equality of two JSON values, up to float precision where the JSON parser
/// has it: when serde_json parses floats exactly (its `float_roundtrip` feature), a float
/// must come back bit for bit; without it (serde_json's default, best-effort parsing) a
/// rewrite may move a float by a few ULPs, and only that is tolerated. Anything else (a key,
/// a string, an integer, the shape) must be identical.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x.is_f64() || y.is_f64() {
                match (x.as_f64(), y.as_f64()) {
                    (Some(p), Some(q)) => same_f64(p, q),
                    _ => false,
                }
            } else {
                x == y
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

pub fn same_f64(p: f64, q: f64) -> bool {
    if p == q || p.to_bits() == q.to_bits() {
        return true;
    }
    !exact_float_parsing() && p.is_finite() && q.is_finite() && (p - q).abs() <= (8.0 * f64::EPSILON * p.abs().max(q.abs())).max(f64::from_bits(8))
}

/// Whether the serde_json linked into corral parses floats exactly: tried once on a number
/// that best-effort parsing gets wrong.
fn exact_float_parsing() -> bool {
    static EXACT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *EXACT.get_or_init(|| {
        let text = "1.2222222222222221e+61";
        serde_json::from_str::<f64>(text).ok() == text.parse::<f64>().ok()
    })
}

/// One line, so a reason fits in `corral status` output and in a JSON reply on one line.
pub fn assert_one_line(what: &str, s: &str) {
    assert!(!s.contains('\n') && !s.contains('\r'), "{what} spans several lines: {s:?}");
}

/// What an accepted agent id must never be: it names files under the data dir, so it
/// cannot hold a separator, a parent step, a NUL or be hidden, and it stays one path
/// component, the same one, wherever it is joined.
pub fn check_accepted_id(id: &str) {
    use std::path::{Component, Path};
    assert!(!id.is_empty(), "empty id accepted");
    assert!(!id.contains('/'), "id with '/' accepted: {id:?}");
    assert!(!id.contains('\\'), "id with '\\' accepted: {id:?}");
    assert!(!id.contains(".."), "id with '..' accepted: {id:?}");
    assert!(!id.contains('\0'), "id with NUL accepted: {id:?}");
    assert!(!id.starts_with('.'), "hidden id accepted: {id:?}");
    assert!(id.len() <= corral::protocol::ids::MAX_NAME_LEN, "overlong id accepted: {id:?}");
    let parts: Vec<Component> = Path::new(id).components().collect();
    assert_eq!(parts, [Component::Normal(id.as_ref())], "id {id:?} is not a single file name");
}
