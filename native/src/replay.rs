//! fatigue/replay.py's Replay (without partitions) driving the native engine. Lines its fast parser leaves alone
//! are parsed by Python's parse_event through a bridge object (fatigue/native.py); an erasure is applied by
//! Python's Guard to the customer's state serialised exactly as the Python core serialises it, read back after.

use std::cell::RefCell;
use std::collections::HashMap;

use indexmap::IndexMap;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::engine::{Engine, LocalTime};
use crate::events::{parse_fast, Event, EventType, Prefs, CATEGORIES, CHANNELS};
use crate::policy::Policy;
use crate::state::State;

pub(crate) type RejectionTuple = (String, String, Option<String>, Option<String>);
/// fatigue.native._prefs_tuple: (present, value) for opt_out, max_contacts, quiet_hours, timezone
type Present<T> = (bool, Option<T>);
type PrefsTuple = (Present<bool>, Present<(i64, i64)>, Present<(i64, i64)>, Present<String>);

#[derive(Default)]
pub struct Outcome {
    pub decisions: Vec<String>,
    pub violations: Vec<String>,
    pub rejection: Option<RejectionTuple>,
}

/// The offset from UTC, in minutes, of a zone over one quarter of an hour: zone offsets and the instants they
/// change at are whole quarters of an hour in every zone since the 1970s, so one lookup serves the whole quarter.
/// None: not so for this quarter (a zone with seconds in its offset, or a change inside it), every instant in it
/// is then looked up. Keyed by (zone, quarter); emptied when large.
pub(crate) type ZoneOffsets = HashMap<(String, i64), Option<i64>, ahash::RandomState>;

const QUARTER_MS: i64 = 900_000;
const MAX_ZONE_OFFSETS: usize = 1 << 20;

pub(crate) struct BridgeClock<'a, 'py> {
    pub(crate) bridge: &'a Bound<'py, PyAny>,
    pub(crate) offsets: &'a RefCell<ZoneOffsets>,
}

impl BridgeClock<'_, '_> {
    /// Python's local minute of the day (Guard._quiet_rule_at's expression, zoneinfo's data).
    fn python_minute(&self, ts_ms: i64, zone: &str) -> i64 {
        // the zone was validated by Python when it was stored, and the default by the policy loader
        self.bridge
            .call_method1("local_minute", (ts_ms, zone))
            .and_then(|minute| minute.extract::<i64>())
            .expect("fatigue.native bridge: local_minute failed")
    }

    /// The whole-minute offset at `ts_ms` as Python places it, if the sample says it is one.
    fn offset_at(&self, ts_ms: i64, zone: &str) -> i64 {
        (self.python_minute(ts_ms, zone) - utc_minute(ts_ms)).rem_euclid(1440)
    }
}

fn utc_minute(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(60_000).rem_euclid(1440)
}

impl LocalTime for BridgeClock<'_, '_> {
    fn local_minute(&self, ts_ms: i64, zone: &str) -> i64 {
        let quarter = ts_ms.div_euclid(QUARTER_MS);
        let known = self.offsets.borrow().get(&(zone.to_owned(), quarter)).copied();
        let offset = match known {
            Some(offset) => offset,
            None => {
                let start = quarter * QUARTER_MS;
                let first = self.offset_at(start, zone);
                // the same offset at the quarter's end, and no seconds in it (59.999 s into a minute would then
                // fall in the next local minute)
                let constant = first == self.offset_at(start + QUARTER_MS - 1, zone)
                    && first == self.offset_at(start + 59_999, zone);
                let offset = constant.then_some(first);
                let mut offsets = self.offsets.borrow_mut();
                if offsets.len() >= MAX_ZONE_OFFSETS {
                    offsets.clear();
                }
                offsets.insert((zone.to_owned(), quarter), offset);
                offset
            }
        };
        match offset {
            Some(offset) => (utc_minute(ts_ms) + offset).rem_euclid(1440),
            None => self.python_minute(ts_ms, zone),
        }
    }
}

#[pyclass(unsendable, module = "fatigue._native")]
pub struct NativeReplay {
    engine: Engine,
    // boxed: growing the map moves pointers, not whole states
    states: IndexMap<String, Box<State>, ahash::RandomState>,
    zone_offsets: RefCell<ZoneOffsets>,
    bridge: PyObject,
    check_key: bool,
    events: u64,
    accepted: u64,
    rejections: IndexMap<String, u64>,
    /// decisions counted by reason, then [allow, block] x channel (looked up without allocating a key)
    decisions: IndexMap<String, [[u64; 3]; 2]>,
    violations: IndexMap<(&'static str, usize), u64>,
    newest_ms: Option<i64>,
}

/// A preference field as (present, value): Some(value) when present (value None: null, which clears).
fn present<T>((given, value): (bool, Option<T>)) -> Option<Option<T>> {
    if given {
        Some(value)
    } else {
        None
    }
}

pub(crate) fn channel_index(name: &str) -> PyResult<usize> {
    CHANNELS.iter().position(|known| *known == name).ok_or_else(|| PyValueError::new_err(format!("channel {name}")))
}

/// An event of a type the native engine decides, from the tuple fatigue.native's bridge `parse` returns for it
/// (kind 1: (1, type, event_id, customer_id, ts_ms, channel, category, sender, campaign, ref, duration_s, answered,
/// machine, prefs)).
pub(crate) fn event_from_parsed(parsed: &Bound<'_, PyTuple>) -> PyResult<Event> {
    let type_name: String = parsed.get_item(1)?.extract()?;
    let channel: Option<String> = parsed.get_item(5)?.extract()?;
    let category: String = parsed.get_item(6)?.extract()?;
    let kind = match type_name.as_str() {
        "contact" => EventType::Contact,
        "call_ended" => EventType::CallEnded,
        "email_opened" => EventType::EmailOpened,
        "unsubscribe" => EventType::Unsubscribe,
        "complaint" => EventType::Complaint,
        "sms_stop" => EventType::SmsStop,
        "preference" => EventType::Preference,
        other => return Err(PyValueError::new_err(format!("event type {other}"))),
    };
    let channel = channel.as_deref().map(channel_index).transpose()?;
    let prefs = if kind == EventType::Preference {
        let (opt_out, max_contacts, quiet_hours, timezone): PrefsTuple = parsed.get_item(13)?.extract()?;
        Some(Prefs {
            channel,
            opt_out: present(opt_out).flatten(),
            max_contacts: present(max_contacts),
            quiet_hours: present(quiet_hours),
            timezone: present(timezone),
        })
    } else {
        None
    };
    Ok(Event {
        kind,
        event_id: parsed.get_item(2)?.extract()?,
        customer_id: parsed.get_item(3)?.extract()?,
        ts_ms: parsed.get_item(4)?.extract()?,
        channel: channel.unwrap_or(0),
        category: CATEGORIES
            .iter()
            .position(|known| *known == category)
            .ok_or_else(|| PyValueError::new_err(format!("category {category}")))?,
        sender: parsed.get_item(7)?.extract()?,
        campaign: parsed.get_item(8)?.extract()?,
        reference: parsed.get_item(9)?.extract()?,
        duration_s: parsed.get_item(10)?.extract()?,
        answered: parsed.get_item(11)?.extract()?,
        machine: parsed.get_item(12)?.extract()?,
        prefs,
    })
}

impl NativeReplay {
    fn count_decision(&mut self, block: bool, reason: &str, channel: usize) {
        let counts = match self.decisions.get_mut(reason) {
            Some(counts) => counts,
            None => self.decisions.entry(reason.to_owned()).or_insert([[0; 3]; 2]),
        };
        counts[usize::from(block)][channel] += 1;
    }

    fn feed_one(&mut self, py: Python<'_>, raw: &[u8], key: Option<&[u8]>) -> PyResult<Outcome> {
        self.events += 1;
        let max_bytes = self.engine.policy.max_event_bytes;
        if let Some(event) = parse_fast(raw, key, self.check_key, max_bytes) {
            return Ok(self.apply(py, &event));
        }
        let bridge = self.bridge.bind(py);
        let parsed = bridge.call_method1("parse", (PyBytes::new(py, raw), key.map(|key| PyBytes::new(py, key))))?;
        let parsed = parsed.downcast::<PyTuple>()?;
        let kind: i64 = parsed.get_item(0)?.extract()?;
        match kind {
            0 => {
                let rejection: RejectionTuple = (
                    parsed.get_item(1)?.extract()?,
                    parsed.get_item(2)?.extract()?,
                    parsed.get_item(3)?.extract()?,
                    parsed.get_item(4)?.extract()?,
                );
                *self.rejections.entry(rejection.0.clone()).or_insert(0) += 1;
                Ok(Outcome { rejection: Some(rejection), ..Outcome::default() })
            }
            1 => {
                let event = event_from_parsed(parsed)?;
                Ok(self.apply(py, &event))
            }
            _ => {
                let customer_id: String = parsed.get_item(1)?.extract()?;
                let event = parsed.get_item(2)?;
                self.apply_in_python(py, &customer_id, &event)
            }
        }
    }

    /// Replay.feed after parsing, for an event the native engine decides.
    fn apply(&mut self, py: Python<'_>, event: &Event) -> Outcome {
        let bridge = self.bridge.bind(py);
        let clock = BridgeClock { bridge, offsets: &self.zone_offsets };
        let existing = self.states.get_mut(&event.customer_id).map(|state| &mut **state);
        let result = self.engine.process(existing, event, &clock);
        let (created, step) = match result {
            Err(rejected) => {
                *self.rejections.entry(rejected.reason.to_owned()).or_insert(0) += 1;
                return Outcome {
                    rejection: Some((
                        rejected.reason.to_owned(),
                        rejected.detail,
                        Some(event.event_id.clone()),
                        Some(event.customer_id.clone()),
                    )),
                    ..Outcome::default()
                };
            }
            Ok(done) => done,
        };
        if let Some(created) = created {
            self.states.insert(event.customer_id.clone(), Box::new(created));
        }
        self.accepted += 1;
        if self.newest_ms.is_none_or(|newest| event.ts_ms > newest) {
            self.newest_ms = Some(event.ts_ms);
        }
        let mut outcome = Outcome::default();
        for decision in step.decisions {
            self.count_decision(decision.block, &decision.reason, decision.channel);
            outcome.decisions.push(decision.json);
        }
        for violation in step.violations {
            *self.violations.entry((violation.kind, violation.channel)).or_insert(0) += 1;
            outcome.violations.push(violation.json);
        }
        outcome
    }

    /// Replay.feed after parsing, for an event the Python Guard decides, on the state serialised for it.
    fn apply_in_python(&mut self, py: Python<'_>, customer_id: &str, event: &Bound<'_, PyAny>) -> PyResult<Outcome> {
        let state_bytes = self.states.get(customer_id).map(|state| PyBytes::new(py, state.to_json().as_bytes()));
        let bridge = self.bridge.bind(py);
        let result = bridge.call_method1("process", (state_bytes, event))?;
        let result = result.downcast::<PyTuple>()?;
        // bytes as &[u8], never Vec<u8> (which pyo3 would read as a sequence of ints)
        let new_state: Option<Bound<'_, PyBytes>> = result.get_item(0)?.extract()?;
        let decisions: Vec<(Bound<'_, PyBytes>, bool, String, String)> = result.get_item(1)?.extract()?;
        let violations: Vec<(Bound<'_, PyBytes>, String, String)> = result.get_item(2)?.extract()?;
        let rejection: Option<RejectionTuple> = result.get_item(3)?.extract()?;
        let erased: bool = result.get_item(4)?.extract()?;
        let ts_ms: i64 = result.get_item(5)?.extract()?;
        if let Some(rejection) = rejection {
            *self.rejections.entry(rejection.0.clone()).or_insert(0) += 1;
            return Ok(Outcome { rejection: Some(rejection), ..Outcome::default() });
        }
        let loaded = match new_state {
            Some(raw) => Some(State::from_json(raw.as_bytes()).map_err(PyValueError::new_err)?),
            None => None,
        };
        match loaded {
            Some(state) => {
                // an existing key keeps its place, as a Python dict's does
                self.states.insert(customer_id.to_owned(), Box::new(state));
            }
            None => {
                self.states.shift_remove(customer_id);
            }
        }
        self.accepted += 1;
        if !erased && self.newest_ms.is_none_or(|newest| ts_ms > newest) {
            self.newest_ms = Some(ts_ms);
        }
        let mut outcome = Outcome::default();
        for (json, block, reason, channel) in decisions {
            self.count_decision(block, &reason, channel_index(&channel)?);
            outcome.decisions.push(utf8(&json)?);
        }
        for (json, kind, channel) in violations {
            let kind: &'static str = if kind == "blocked" { "blocked" } else { "quiet_hours" };
            *self.violations.entry((kind, channel_index(&channel)?)).or_insert(0) += 1;
            outcome.violations.push(utf8(&json)?);
        }
        Ok(outcome)
    }
}

pub(crate) fn utf8(bytes: &Bound<'_, PyBytes>) -> PyResult<String> {
    std::str::from_utf8(bytes.as_bytes()).map(str::to_owned).map_err(|error| PyValueError::new_err(error.to_string()))
}

fn bytes_list<'py>(py: Python<'py>, items: &[String]) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, items.iter().map(|item| PyBytes::new(py, item.as_bytes())))
}

#[pymethods]
impl NativeReplay {
    #[new]
    #[pyo3(signature = (policy_json, bridge, check_key = false))]
    fn new(policy_json: &[u8], bridge: PyObject, check_key: bool) -> PyResult<Self> {
        let policy = Policy::from_json(policy_json).map_err(PyValueError::new_err)?;
        Ok(NativeReplay {
            engine: Engine::new(policy),
            states: IndexMap::with_hasher(ahash::RandomState::new()),
            zone_offsets: RefCell::new(HashMap::default()),
            bridge,
            check_key,
            events: 0,
            accepted: 0,
            rejections: IndexMap::new(),
            decisions: IndexMap::new(),
            violations: IndexMap::new(),
            newest_ms: None,
        })
    }

    /// (decisions, violations, rejection): JSON bytes each, rejection as (reason, detail, event_id, customer_id).
    #[pyo3(signature = (raw, key = None))]
    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        raw: &[u8],
        key: Option<&[u8]>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>, Option<RejectionTuple>)> {
        let outcome = self.feed_one(py, raw, key)?;
        Ok((bytes_list(py, &outcome.decisions)?, bytes_list(py, &outcome.violations)?, outcome.rejection))
    }

    /// Feeds every line, keeping only the counts (the benchmark's loop, without a Python call per line).
    fn feed_all(&mut self, py: Python<'_>, lines: &Bound<'_, PyList>) -> PyResult<()> {
        for line in lines.iter() {
            let line = line.downcast::<PyBytes>()?;
            self.feed_one(py, line.as_bytes(), None)?;
        }
        Ok(())
    }

    /// Settles unread deadlines before `flush_at_ms` for every customer (first-seen order).
    #[pyo3(signature = (flush_at_ms))]
    fn finish<'py>(&mut self, py: Python<'py>, flush_at_ms: Option<i64>) -> PyResult<Bound<'py, PyList>> {
        let mut out: Vec<String> = Vec::new();
        if let Some(flush_at_ms) = flush_at_ms {
            let mut counted: Vec<(bool, String, usize)> = Vec::new();
            for state in self.states.values_mut() {
                if !state.pending.is_empty() {
                    for decision in self.engine.advance(state, flush_at_ms) {
                        counted.push((decision.block, decision.reason, decision.channel));
                        out.push(decision.json);
                    }
                }
            }
            for (block, reason, channel) in counted {
                self.count_decision(block, &reason, channel);
            }
        }
        bytes_list(py, &out)
    }

    fn state_bytes<'py>(&self, py: Python<'py>, customer_id: &str) -> Option<Bound<'py, PyBytes>> {
        self.states.get(customer_id).map(|state| PyBytes::new(py, state.to_json().as_bytes()))
    }

    fn customers(&self) -> Vec<String> {
        self.states.keys().cloned().collect()
    }

    #[getter]
    fn newest_ms(&self) -> Option<i64> {
        self.newest_ms
    }

    /// (events, accepted, [(reason, n)], [((action, reason, channel), n)], [((kind, channel), n)])
    #[allow(clippy::type_complexity)]
    fn counts(
        &self,
    ) -> (
        u64,
        u64,
        Vec<(String, u64)>,
        Vec<((&'static str, String, &'static str), u64)>,
        Vec<((&'static str, &'static str), u64)>,
    ) {
        (
            self.events,
            self.accepted,
            self.rejections.iter().map(|(reason, count)| (reason.clone(), *count)).collect(),
            self.decisions
                .iter()
                .flat_map(|(reason, counts)| {
                    (0..2).flat_map(move |block| {
                        (0..3).filter(move |&channel| counts[block][channel] > 0).map(move |channel| {
                            let action = if block == 1 { "block" } else { "allow" };
                            ((action, reason.clone(), CHANNELS[channel]), counts[block][channel])
                        })
                    })
                })
                .collect(),
            self.violations.iter().map(|((kind, channel), count)| ((*kind, CHANNELS[*channel]), *count)).collect(),
        )
    }
}
