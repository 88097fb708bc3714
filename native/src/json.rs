//! Writing JSON byte-identical to orjson.dumps of the same Python values (compact, keys in insertion order,
//! non-ASCII as UTF-8, control characters escaped like orjson), and reading back what the Python core stored.

use serde_json::Value;

/// Bytes that JSON strings must escape: control characters, the quote and the backslash.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

pub fn push_str(out: &mut String, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push('"');
    // the common case (ids, rule texts, instants): nothing to escape, one copy
    let Some(first) = bytes.iter().position(|&byte| NEEDS_ESCAPE[byte as usize]) else {
        out.push_str(text);
        out.push('"');
        return;
    };
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate().skip(first) {
        if !NEEDS_ESCAPE[byte as usize] {
            continue;
        }
        out.push_str(&text[start..index]);
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\r' => out.push_str("\\r"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[(byte >> 4) as usize] as char);
                out.push(HEX[(byte & 0xf) as usize] as char);
            }
        }
        start = index + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

pub fn push_opt_str(out: &mut String, text: Option<&str>) {
    match text {
        Some(text) => push_str(out, text),
        None => out.push_str("null"),
    }
}

pub fn push_i64(out: &mut String, value: i64) {
    let mut buffer = itoa_buffer();
    out.push_str(format_i64(&mut buffer, value));
}

pub fn push_opt_i64(out: &mut String, value: Option<i64>) {
    match value {
        Some(value) => push_i64(out, value),
        None => out.push_str("null"),
    }
}

/// `"key":` after a comma unless it is the first member.
pub fn push_key(out: &mut String, key: &str, first: bool) {
    out.reserve(key.len() + 4);
    if !first {
        out.push(',');
    }
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
}

fn itoa_buffer() -> [u8; 24] {
    [0u8; 24]
}

fn format_i64(buffer: &mut [u8; 24], value: i64) -> &str {
    let negative = value < 0;
    let mut magnitude = value.unsigned_abs();
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if negative {
        at -= 1;
        buffer[at] = b'-';
    }
    // only ASCII digits and '-' were written
    std::str::from_utf8(&buffer[at..]).unwrap_or("0")
}

// ---------------------------------------------------------------- reading (states stored by the Python core)

pub fn as_i64(value: &Value) -> Result<i64, String> {
    value.as_i64().ok_or_else(|| format!("expected an integer, got {value}"))
}

pub fn as_opt_i64(value: &Value) -> Result<Option<i64>, String> {
    if value.is_null() {
        Ok(None)
    } else {
        as_i64(value).map(Some)
    }
}

pub fn as_string(value: &Value) -> Result<String, String> {
    value.as_str().map(str::to_owned).ok_or_else(|| format!("expected a string, got {value}"))
}

pub fn as_opt_string(value: &Value) -> Result<Option<String>, String> {
    if value.is_null() {
        Ok(None)
    } else {
        as_string(value).map(Some)
    }
}

pub fn as_array(value: &Value) -> Result<&Vec<Value>, String> {
    value.as_array().ok_or_else(|| format!("expected an array, got {value}"))
}

pub fn item(items: &[Value], index: usize) -> Result<&Value, String> {
    items.get(index).ok_or_else(|| format!("missing item {index}"))
}
