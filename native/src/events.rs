//! The fast path of fatigue/events.py's `parse_event`: the common well-formed contact, call_ended and email_opened
//! events, decoded and checked in one pass. `parse_fast` returns an event only where Python's `parse_event` returns
//! an Event with exactly the same fields, and None for anything else (malformed, other types, doubtful), which the
//! caller then hands to Python's `parse_event`, so every rejection and its reason stay Python's own.
//!
//! Python decodes with orjson; a document orjson refuses must never be accepted here, and every value must decode
//! to what orjson makes of it. Two decoders share that duty:
//! - `scan_simple`, for flat objects without escapes (nearly every real event): a small hand-written scanner,
//!   it runs about 40% fewer instructions than serde_json on the same lines;
//! - `decode_general`, serde_json, for everything else. Every value (also of fields the contract does not name) is
//!   fully decoded rather than skipped: serde_json's skipping does not check what orjson refuses (lone surrogate
//!   escapes, numbers that overflow to infinity).
//!
//! Where the two libraries could differ (duplicate keys, which orjson resolves to the last; integers beyond i64;
//! floats near overflow; `-0`, an int for orjson but -0.0 for serde_json), the message is declined.

use std::borrow::Cow;
use std::fmt;

use pyo3::prelude::*;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::timeutil::{self, MAX_TS_MS, MIN_TS_MS};

pub const CHANNELS: [&str; 3] = ["email", "sms", "call"];
pub const CATEGORIES: [&str; 3] = ["marketing", "service", "transactional"];
const MAX_ID_CHARS: usize = 128;
const MAX_LABEL_CHARS: usize = 128;
const MAX_TS_TEXT_CHARS: usize = 64;
/// Durations at or above this (about 31 years) are left to Python: beyond 2**53 an integer literal and its float
/// could differ between the two decoders, and no call lasts that long.
const MAX_FAST_DURATION_S: f64 = 1e9;
/// Numbers this large are left to Python anywhere in a document: orjson refuses those that overflow to infinity,
/// and right at that boundary the two decoders' rounding need not agree.
const MAX_FAST_MAGNITUDE: f64 = 1e300;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EventType {
    Contact,
    CallEnded,
    EmailOpened,
    // parsed by Python only (fatigue.events.parse_event), decided here
    Unsubscribe,
    Complaint,
    SmsStop,
    Preference,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            EventType::Contact => "contact",
            EventType::CallEnded => "call_ended",
            EventType::EmailOpened => "email_opened",
            EventType::Unsubscribe => "unsubscribe",
            EventType::Complaint => "complaint",
            EventType::SmsStop => "sms_stop",
            EventType::Preference => "preference",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventType,
    pub event_id: String,
    pub customer_id: String,
    pub ts_ms: i64,
    /// index into CHANNELS (call_ended is always 2 "call", email_opened 0 "email")
    pub channel: usize,
    /// index into CATEGORIES; 0 (marketing) for non-contact events
    pub category: usize,
    pub sender: Option<String>,
    pub campaign: Option<String>,
    /// the `ref` field
    pub reference: Option<String>,
    /// call_ended: float(duration_s); else 0.0
    pub duration_s: f64,
    pub answered: bool,
    pub machine: bool,
    /// preference events: the fields present (see Prefs)
    pub prefs: Option<Prefs>,
}

/// A preference event's fields, each Some when present in the event (the inner Option: null, which clears it).
#[derive(Clone, Debug, Default)]
pub struct Prefs {
    /// None: all channels (the event has no channel)
    pub channel: Option<usize>,
    pub opt_out: Option<bool>,
    /// (count, window_ms)
    pub max_contacts: Option<Option<(i64, i64)>>,
    /// (start minute, end minute)
    pub quiet_hours: Option<Option<(i64, i64)>>,
    pub timezone: Option<Option<String>>,
}

/// One decoded JSON value, as far as the contract cares: its Python type and, for the scalars, its value.
/// `Missing` is a field that is absent; `Null` one that is present as null (Python's `.get` sees both as None,
/// but `.get(field, default)` does not).
#[derive(Debug, Default)]
enum Val<'a> {
    #[default]
    Missing,
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    /// an integer above i64::MAX (orjson: an int up to 2**64-1)
    BigInt,
    Float(f64),
    Bool(bool),
    /// a list or an object (fully decoded and checked, then dropped)
    Other,
}

fn check_magnitude<E: de::Error>(value: f64) -> Result<(), E> {
    if value.abs() < MAX_FAST_MAGNITUDE {
        Ok(())
    } else {
        Err(E::custom("number left to the Python decoder"))
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(value))
    }
    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Val<'de>, E> {
        Ok(Val::Int(value))
    }
    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Val<'de>, E> {
        Ok(i64::try_from(value).map_or(Val::BigInt, Val::Int))
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Val<'de>, E> {
        check_magnitude(value)?;
        Ok(Val::Float(value))
    }
    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(value)))
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(value.to_owned())))
    }
    fn visit_string<E: de::Error>(self, value: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(value)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Val::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Val::Other)
    }
}

impl<'de> Deserialize<'de> for Val<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValVisitor)
    }
}

/// A value the contract does not read, decoded anyway (never skipped: see the module's comment) and dropped.
struct Checked;

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Checked, E> {
        check_magnitude(value)?;
        Ok(Checked)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_none<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // deserialize_any, not deserialize_ignored_any: the value must be decoded to be checked
        deserializer.deserialize_any(CheckedVisitor)
    }
}

/// The contract's fields, as slots of `Body::values`.
const F_TYPE: usize = 0;
const F_EVENT_ID: usize = 1;
const F_CUSTOMER_ID: usize = 2;
const F_TS: usize = 3;
const F_CHANNEL: usize = 4;
const F_CATEGORY: usize = 5;
const F_SENDER: usize = 6;
const F_CAMPAIGN: usize = 7;
const F_REF: usize = 8;
const F_DURATION: usize = 9;
const F_ANSWERED: usize = 10;
const F_MACHINE: usize = 11;
const FIELD_COUNT: usize = 12;
const F_UNKNOWN: usize = FIELD_COUNT;

fn field_slot(name: &[u8]) -> usize {
    match name {
        b"type" => F_TYPE,
        b"event_id" => F_EVENT_ID,
        b"customer_id" => F_CUSTOMER_ID,
        b"ts" => F_TS,
        b"channel" => F_CHANNEL,
        b"category" => F_CATEGORY,
        b"sender" => F_SENDER,
        b"campaign" => F_CAMPAIGN,
        b"ref" => F_REF,
        b"duration_s" => F_DURATION,
        b"answered" => F_ANSWERED,
        b"machine" => F_MACHINE,
        _ => F_UNKNOWN,
    }
}

/// An object key, resolved to its slot (keys are compared after unescaping, as Python sees them).
struct Key(usize);

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<Key, E> {
        Ok(Key(field_slot(value.as_bytes())))
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The top-level object: the contract's fields, each at most once.
struct Body<'a> {
    values: [Val<'a>; FIELD_COUNT],
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body<'de>, A::Error> {
        let mut body = Body { values: Default::default() };
        while let Some(Key(slot)) = map.next_key::<Key>()? {
            if slot == F_UNKNOWN {
                map.next_value::<Checked>()?;
                continue;
            }
            // orjson keeps the last of duplicate keys; rare enough to leave to Python rather than reason about
            if !matches!(body.values[slot], Val::Missing) {
                return Err(de::Error::custom("duplicate contract field"));
            }
            body.values[slot] = map.next_value::<Val>()?;
        }
        Ok(body)
    }
}

impl<'de> Deserialize<'de> for Body<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BodyVisitor)
    }
}

/// Python's `len(text) <= max`: code points, not bytes.
#[inline]
fn at_most_chars(text: &str, max: usize) -> bool {
    // a UTF-8 text of at most `max` bytes has at most `max` code points: counting is needed only beyond that
    text.len() <= max || text.chars().count() <= max
}

/// `type(x) is str and 0 < len(x) <= 128`
#[inline]
fn id_of(value: Val<'_>) -> Option<String> {
    match value {
        Val::Str(text) if !text.is_empty() && at_most_chars(&text, MAX_ID_CHARS) => Some(text.into_owned()),
        _ => None,
    }
}

/// `x is None or (type(x) is str and len(x) <= 128)`: Ok(None) for a missing or null label, Err for a bad one.
#[inline]
fn label_of(value: Val<'_>) -> Result<Option<String>, ()> {
    match value {
        Val::Missing | Val::Null => Ok(None),
        Val::Str(text) if at_most_chars(&text, MAX_LABEL_CHARS) => Ok(Some(text.into_owned())),
        _ => Err(()),
    }
}

/// `x is None or (type(x) is str and 0 < len(x) <= 128)`
#[inline]
fn optional_id_of(value: Val<'_>) -> Result<Option<String>, ()> {
    match value {
        Val::Missing | Val::Null => Ok(None),
        other => id_of(other).map(Some).ok_or(()),
    }
}

/// `body.get(field, default)` that must be a bool
#[inline]
fn flag_of(value: &Val<'_>, default: bool) -> Option<bool> {
    match value {
        Val::Missing => Some(default),
        Val::Bool(flag) => Some(*flag),
        _ => None,
    }
}

fn index_of(names: &[&str; 3], value: &Val<'_>) -> Option<usize> {
    match value {
        Val::Str(text) => names.iter().position(|name| *name == text.as_ref()),
        _ => None,
    }
}

/// The simple scanner: a flat object whose keys and string values have no escapes and whose values are strings,
/// numbers, booleans or null, as nearly every sender writes its events. It accepts only documents that are valid
/// JSON, decoded as orjson decodes them; anything else (escapes, control characters, nested values, long
/// integers, huge floats, duplicate fields, malformed text...) returns None and goes to `decode_general`.
struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of the lowest byte of `word` (little-endian: the first in memory) that is a quote, a backslash or
/// a control character is set (bits above it may be set spuriously: only the lowest one is used).
#[inline]
fn first_special_byte(word: u64) -> u64 {
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let zero_quote = quote.wrapping_sub(ONES) & !quote;
    let zero_backslash = backslash.wrapping_sub(ONES) & !backslash;
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    (zero_quote | zero_backslash | control) & HIGHS
}

impl<'a> Scanner<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        // JSON's four, and orjson's: no form feed, no non-ASCII space
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Option<()> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Some(())
        } else {
            None
        }
    }

    /// A string without escapes or control characters, at its opening quote.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        let bytes = self.bytes;
        let start = self.at + 1;
        let mut end = start;
        loop {
            // eight bytes at a time up to the first quote, backslash or control character
            while let Some(chunk) = bytes.get(end..end + 8) {
                let special = first_special_byte(u64::from_le_bytes(chunk.try_into().ok()?));
                if special != 0 {
                    end += (special.trailing_zeros() / 8) as usize;
                    break;
                }
                end += 8;
            }
            match *bytes.get(end)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => end += 1, // the tail, under eight bytes
            }
        }
        self.at = end + 1;
        // the text is valid UTF-8 and a quote byte never occurs inside a multi-byte sequence: a char boundary
        self.text.get(start..end)
    }

    fn literal(&mut self, text: &[u8], value: Val<'a>) -> Option<Val<'a>> {
        if self.bytes[self.at..].starts_with(text) {
            self.at += text.len();
            Some(value)
        } else {
            None
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    /// A number in JSON's grammar: an integer of at most 18 digits (so it fits i64) as `Int`, as orjson makes it an
    /// int (also `-0`: 0); one with a fraction or exponent as `Float`, correctly rounded like orjson's.
    fn number(&mut self) -> Option<Val<'a>> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let integer_start = self.at;
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        let integer_end = self.at;
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return None;
            }
            float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
            float = true;
        }
        if float {
            // Rust's parse is correctly rounded, as orjson is; numbers near overflow are left to the general path
            let value: f64 = self.text.get(start..self.at)?.parse().ok()?;
            return if value.abs() < MAX_FAST_MAGNITUDE { Some(Val::Float(value)) } else { None };
        }
        if integer_end - integer_start > 18 {
            return None;
        }
        let magnitude = self.bytes[integer_start..integer_end].iter().fold(0_i64, |n, d| n * 10 + i64::from(d - b'0'));
        Some(Val::Int(if negative { -magnitude } else { magnitude }))
    }

    fn value(&mut self) -> Option<Val<'a>> {
        match self.peek()? {
            b'"' => Some(Val::Str(Cow::Borrowed(self.string()?))),
            b't' => self.literal(b"true", Val::Bool(true)),
            b'f' => self.literal(b"false", Val::Bool(false)),
            b'n' => self.literal(b"null", Val::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None, // lists and objects (and garbage): the general path
        }
    }
}

fn scan_simple(raw: &[u8]) -> Option<Body<'_>> {
    // the whole document at once (orjson refuses invalid UTF-8 anywhere): strings are then slices of valid text
    let text = std::str::from_utf8(raw).ok()?;
    let mut scanner = Scanner { text, bytes: raw, at: 0 };
    let mut body = Body { values: Default::default() };
    scanner.skip_whitespace();
    scanner.expect(b'{')?;
    scanner.skip_whitespace();
    if scanner.peek() == Some(b'}') {
        scanner.at += 1;
    } else {
        loop {
            if scanner.peek() != Some(b'"') {
                return None;
            }
            let slot = field_slot(scanner.string()?.as_bytes());
            scanner.skip_whitespace();
            scanner.expect(b':')?;
            scanner.skip_whitespace();
            let value = scanner.value()?;
            if slot != F_UNKNOWN {
                if !matches!(body.values[slot], Val::Missing) {
                    return None; // a duplicate field: the general path refuses it
                }
                body.values[slot] = value;
            }
            scanner.skip_whitespace();
            match scanner.peek()? {
                b',' => {
                    scanner.at += 1;
                    scanner.skip_whitespace();
                }
                b'}' => {
                    scanner.at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    scanner.skip_whitespace();
    if scanner.at == raw.len() {
        Some(body)
    } else {
        None
    }
}

/// The event of `raw` when Python's `parse_event(raw, key, check_key=..., max_bytes=...)` would return an Event
/// with exactly these fields (see the module's comment); None for anything else, valid or not.
pub fn parse_fast(raw: &[u8], key: Option<&[u8]>, check_key: bool, max_bytes: usize) -> Option<Event> {
    if raw.len() > max_bytes {
        return None;
    }
    let body = match scan_simple(raw) {
        Some(body) => body,
        None => decode_general(raw)?,
    };
    validate(body, key, check_key)
}

/// `parse_fast` without the simple scanner: serde_json decodes every message (for the tests, which compare both).
pub fn parse_fast_general(raw: &[u8], key: Option<&[u8]>, check_key: bool, max_bytes: usize) -> Option<Event> {
    if raw.len() > max_bytes {
        return None;
    }
    validate(decode_general(raw)?, key, check_key)
}

/// Any JSON document, decoded with serde_json into the contract's fields; None for anything orjson may refuse.
fn decode_general(raw: &[u8]) -> Option<Body<'_>> {
    // all of it, not just the strings read: orjson refuses a document with invalid UTF-8 anywhere
    let text = std::str::from_utf8(raw).ok()?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let body = Body::deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?; // only whitespace may follow
    Some(body)
}

/// The checks of Python's `_fast_validate` (and of the Kafka key) on the decoded fields.
fn validate(body: Body<'_>, key: Option<&[u8]>, check_key: bool) -> Option<Event> {
    let [kind, event_id, customer_id, ts, channel, category, sender, campaign, reference, duration, answered, machine] =
        body.values;

    let kind = match &kind {
        Val::Str(name) => match name.as_ref() {
            "contact" => EventType::Contact,
            "call_ended" => EventType::CallEnded,
            "email_opened" => EventType::EmailOpened,
            _ => return None,
        },
        _ => return None,
    };
    let ts_ms = match &ts {
        Val::Int(ms) => *ms,
        // len(ts) <= 64 as Python checks it; parse_iso_ms itself accepts ASCII of at most 35 bytes
        Val::Str(text) if text.len() <= MAX_TS_TEXT_CHARS => timeutil::parse_iso_ms(text)?,
        _ => return None,
    };
    if !(MIN_TS_MS..MAX_TS_MS).contains(&ts_ms) {
        return None;
    }
    let event_id = id_of(event_id)?;
    let customer_id = id_of(customer_id)?;
    if check_key && key != Some(customer_id.as_bytes()) {
        return None;
    }
    let mut event = Event {
        kind,
        event_id,
        customer_id,
        ts_ms,
        channel: 0,
        category: 0,
        sender: None,
        campaign: None,
        reference: None,
        duration_s: 0.0,
        answered: true,
        machine: false,
        prefs: None,
    };
    match kind {
        EventType::Contact => {
            event.channel = index_of(&CHANNELS, &channel)?;
            event.category = match category {
                Val::Missing => 0,
                other => index_of(&CATEGORIES, &other)?,
            };
            event.sender = label_of(sender).ok()?;
            event.campaign = label_of(campaign).ok()?;
        }
        EventType::CallEnded => {
            event.channel = 2;
            event.duration_s = match duration {
                Val::Int(seconds) => seconds as f64, // exact: |seconds| is checked below 1e9
                // -0.0 is also what serde_json makes of "-0", which orjson reads as the int 0 (float: 0.0)
                Val::Float(seconds) if seconds.is_sign_positive() => seconds,
                _ => return None,
            };
            if !(0.0..MAX_FAST_DURATION_S).contains(&event.duration_s) {
                return None;
            }
            event.answered = flag_of(&answered, true)?;
            event.reference = optional_id_of(reference).ok()?;
        }
        EventType::EmailOpened => {
            event.channel = 0;
            event.reference = Some(id_of(reference)?);
            event.machine = flag_of(&machine, false)?;
        }
        EventType::Unsubscribe | EventType::Complaint | EventType::SmsStop | EventType::Preference => return None,
    }
    Some(event)
}

type EventTuple = (
    &'static str,
    String,
    String,
    i64,
    &'static str,
    &'static str,
    Option<String>,
    Option<String>,
    Option<String>,
    f64,
    bool,
    bool,
);

/// For the tests: `parse_fast` as (type, event_id, customer_id, ts_ms, channel, category, sender, campaign, ref,
/// duration_s, answered, machine), or None.
#[pyfunction]
#[pyo3(signature = (raw, key=None, check_key=false, max_bytes=16384))]
pub fn parse_fast_py(raw: &[u8], key: Option<&[u8]>, check_key: bool, max_bytes: usize) -> Option<EventTuple> {
    parse_fast(raw, key, check_key, max_bytes).map(event_tuple)
}

fn event_tuple(event: Event) -> EventTuple {
    (
        event.kind.name(),
        event.event_id,
        event.customer_id,
        event.ts_ms,
        CHANNELS[event.channel],
        CATEGORIES[event.category],
        event.sender,
        event.campaign,
        event.reference,
        event.duration_s,
        event.answered,
        event.machine,
    )
}

/// For the tests: `parse_fast_py` through the general decoder only (serde_json, never the simple scanner).
#[pyfunction]
#[pyo3(signature = (raw, key=None, check_key=false, max_bytes=16384))]
pub fn parse_fast_general_py(raw: &[u8], key: Option<&[u8]>, check_key: bool, max_bytes: usize) -> Option<EventTuple> {
    parse_fast_general(raw, key, check_key, max_bytes).map(event_tuple)
}

/// For the tests: `timeutil::format_ms`.
#[pyfunction]
pub fn format_ms_py(ms: i64) -> String {
    timeutil::format_ms(ms)
}

/// For the tests: `timeutil::format_duration`.
#[pyfunction]
pub fn format_duration_py(ms: i64) -> String {
    timeutil::format_duration(ms)
}

/// For the tests: `timeutil::parse_iso_ms`.
#[pyfunction]
pub fn parse_iso_ms_py(text: &str) -> Option<i64> {
    timeutil::parse_iso_ms(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTACT: &[u8] = br#"{"type":"contact","event_id":"ev-1","customer_id":"cust-1","ts":"2026-09-01T00:00:04.171Z","channel":"call","category":"service","sender":"dialer-team-b"}"#;

    #[test]
    fn common_events() {
        let event = parse_fast(CONTACT, None, false, 16_384).unwrap();
        assert_eq!(event.kind, EventType::Contact);
        assert_eq!((event.event_id.as_str(), event.customer_id.as_str()), ("ev-1", "cust-1"));
        assert_eq!((event.ts_ms, event.channel, event.category), (1_788_220_804_171, 2, 1));
        assert_eq!((event.sender.as_deref(), event.campaign.as_deref()), (Some("dialer-team-b"), None));
        let ended = br#"{"type":"call_ended","event_id":"e2","customer_id":"c","ts":1788220886000,"ref":"e1","duration_s":32,"answered":false}"#;
        let event = parse_fast(ended, Some(b"c"), true, 16_384).unwrap();
        assert_eq!(
            (event.kind, event.duration_s, event.answered, event.channel),
            (EventType::CallEnded, 32.0, false, 2)
        );
        assert_eq!(event.reference.as_deref(), Some("e1"));
        let opened = br#"{"type":"email_opened","event_id":"e3","customer_id":"c","ts":1788220886000,"ref":"e1"}"#;
        let event = parse_fast(opened, None, false, 16_384).unwrap();
        assert_eq!((event.kind, event.machine, event.channel), (EventType::EmailOpened, false, 0));
    }

    #[test]
    fn doubtful_input_is_left_to_python() {
        assert!(parse_fast(CONTACT, None, false, CONTACT.len() - 1).is_none());
        assert!(parse_fast(CONTACT, None, true, 16_384).is_none());
        assert!(parse_fast(CONTACT, Some(b"cust-2"), true, 16_384).is_none());
        assert!(parse_fast(CONTACT, Some(b"cust-1"), true, 16_384).is_some());
        for raw in [
            &br#"{"type":"contact","event_id":"e","customer_id":"c","ts":1788220886000,"channel":"sms","x":1e400}"#[..],
            br#"{"type":"contact","event_id":"e","customer_id":"c","ts":1788220886000,"channel":"sms","x":"\ud800"}"#,
            br#"{"type":"contact","event_id":"e","customer_id":"c","ts":1788220886000,"channel":"sms","x":["\udc00"]}"#,
            br#"{"type":"contact","event_id":"e","customer_id":"c","ts":1788220886000,"channel":"sms","channel":"sms"}"#,
            br#"{"type":"contact","event_id":"e","customer_id":"c","ts":1788220886000.0,"channel":"sms"}"#,
            br#"{"type":"contact","event_id":"e","customer_id":"c","ts":1788220886000,"channel":"sms","category":null}"#,
            br#"{"type":"contact","event_id":"e","customer_id":"c","ts":1788220886000,"channel":"sms"} x"#,
            br#"{"type":"call_ended","event_id":"e","customer_id":"c","ts":1788220886000,"duration_s":true}"#,
            br#"{"type":"call_ended","event_id":"e","customer_id":"c","ts":1788220886000,"duration_s":1,"answered":null}"#,
            br#"{"type":"email_opened","event_id":"e","customer_id":"c","ts":1788220886000,"ref":null}"#,
            b"{\"type\":\"contact\",\"event_id\":\"e\",\"customer_id\":\"c\",\"ts\":1788220886000,\"channel\":\"sms\",\"x\":\"\xff\"}",
        ] {
            assert!(parse_fast(raw, None, false, 16_384).is_none(), "{}", String::from_utf8_lossy(raw));
        }
    }

    /// `FATIGUE_BENCH_FILE=... cargo test --release --lib -- --ignored --nocapture bench_parse_file`
    #[test]
    #[ignore]
    fn bench_parse_file() {
        let path = std::env::var("FATIGUE_BENCH_FILE").expect("FATIGUE_BENCH_FILE");
        let data = std::fs::read(path).unwrap();
        let lines: Vec<&[u8]> = data.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()).collect();
        let time = |name: &str, f: &dyn Fn(&[u8]) -> bool| {
            let start = std::time::Instant::now();
            let n = lines.iter().filter(|line| f(line)).count();
            println!("{name}: {n} {:.0} ns/line", start.elapsed().as_nanos() as f64 / lines.len() as f64);
        };
        if std::env::var("FATIGUE_BENCH_PARTS").is_ok() {
            time("utf8", &|l| std::str::from_utf8(l).is_ok());
            time("scan_simple", &|l| scan_simple(l).is_some());
            time("decode_general", &|l| decode_general(l).is_some());
            time("parse_fast_general", &|l| parse_fast_general(l, None, false, 16_384).is_some());
        }
        for round in 0..3 {
            let start = std::time::Instant::now();
            let parsed = lines.iter().filter(|line| parse_fast(line, None, false, 16_384).is_some()).count();
            let elapsed = start.elapsed();
            println!(
                "round {round}: {} lines, {parsed} parsed, {:.0} ns/line",
                lines.len(),
                elapsed.as_nanos() as f64 / lines.len() as f64
            );
        }
    }

    #[test]
    fn minus_zero_is_the_int_zero() {
        // orjson reads -0 as the int 0 (float(0) is 0.0) but -0.0 as a float; serde_json reads both as -0.0
        let raw = br#"{"type":"call_ended","event_id":"e","customer_id":"c","ts":1788220886000,"duration_s":-0}"#;
        let duration = parse_fast(raw, None, false, 16_384).unwrap().duration_s;
        assert!(duration == 0.0 && duration.is_sign_positive());
        assert!(parse_fast_general(raw, None, false, 16_384).is_none());
        let raw = br#"{"type":"call_ended","event_id":"e","customer_id":"c","ts":1788220886000,"duration_s":-0.0}"#;
        assert!(parse_fast(raw, None, false, 16_384).is_none());
    }

    #[test]
    fn ids_count_code_points() {
        let make = |id: &str| {
            format!(r#"{{"type":"contact","event_id":"{id}","customer_id":"c","ts":1788220886000,"channel":"sms"}}"#)
        };
        assert!(parse_fast(make(&"é".repeat(128)).as_bytes(), None, false, 16_384).is_some());
        assert!(parse_fast(make(&"é".repeat(129)).as_bytes(), None, false, 16_384).is_none());
        assert!(parse_fast(make(&"\\u00e9".repeat(128)).as_bytes(), None, false, 16_384).is_some());
        assert!(parse_fast(make("").as_bytes(), None, false, 16_384).is_none());
    }
}
