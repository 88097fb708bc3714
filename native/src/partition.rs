//! fatigue/partition.py's PythonEngine on the native engine: one Kafka partition's customers, their states loaded on
//! demand from the pipeline's store (a Python callable), changed ones handed back for its changelog, clean ones
//! evicted. Parsing, the bridge to the Python core (lines the fast parser leaves alone, erasure) and the zone-offset
//! cache are replay.rs's; fatigue/native.py's NativeEngine wraps this class into a CustomerEngine. `handle_run` also
//! routes a run of the pipeline's input records (streams/task.py's per-record loop, held equal by
//! tests/unit/test_task.py).

use std::cell::RefCell;
use std::collections::HashMap;

use indexmap::{IndexMap, IndexSet};
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::engine::{EmittedDecision, EmittedViolation, Engine};
use crate::events::{parse_fast, Event, EventType, CATEGORIES, CHANNELS};
use crate::policy::Policy;
use crate::replay::{event_from_parsed, BridgeClock, ZoneOffsets};
use crate::state::State;

type Hasher = ahash::RandomState;

/// Python strings made once: the names an outcome repeats on every message.
struct Names {
    channels: [Py<PyString>; 3],
    categories: [Py<PyString>; 3],
    types: [Py<PyString>; 7],
    allow: Py<PyString>,
    block: Py<PyString>,
}

impl Names {
    fn new(py: Python<'_>) -> Names {
        let name = |text: &str| PyString::intern(py, text).unbind();
        Names {
            channels: CHANNELS.map(name),
            categories: CATEGORIES.map(name),
            // in event_type's order
            types: [
                EventType::Contact,
                EventType::CallEnded,
                EventType::EmailOpened,
                EventType::Unsubscribe,
                EventType::Complaint,
                EventType::SmsStop,
                EventType::Preference,
            ]
            .map(|kind| name(kind.name())),
            allow: name("allow"),
            block: name("block"),
        }
    }

    fn event_type(&self, kind: EventType) -> &Py<PyString> {
        &self.types[type_index(kind)]
    }
}

/// An event type's index in Names::types.
fn type_index(kind: EventType) -> usize {
    match kind {
        EventType::Contact => 0,
        EventType::CallEnded => 1,
        EventType::EmailOpened => 2,
        EventType::Unsubscribe => 3,
        EventType::Complaint => 4,
        EventType::SmsStop => 5,
        EventType::Preference => 6,
    }
}

/// A parsed input message (see NativePartition::parse).
enum Parsed<'py> {
    /// (reason, detail, event_id, customer_id)
    Rejected(String, String, Option<String>, Option<String>),
    Native(Event),
    /// an event the Python Guard applies (erasure): its customer and the Python core's parsed event
    Python(String, Bound<'py, PyAny>),
}

/// What an event the native engine decided did (see NativePartition::apply_native).
struct Applied<'py> {
    decisions: Vec<EmittedDecision>,
    violations: Vec<EmittedViolation>,
    watermark_ms: Option<i64>,
    next_deadline_ms: Option<i64>,
    /// the customer's preferences view, after the event types that change it
    prefs: Option<Bound<'py, PyAny>>,
    /// the event's channel (None: a preference for every channel)
    channel: Option<usize>,
}

/// Kafka's default partitioner, murmur2 (fatigue.clock.partition_for_key, which tests hold this equal to).
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ (key.len() as u32);
    let chunks = key.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    (h & 0x7fff_ffff) as usize % partitions.max(1)
}

/// The lists of a partition task's RecordCollector (`records`: (topic, partition) -> [(key, value, headers)]),
/// appended to here in the order the task would append to them.
struct Collected<'py> {
    records: Bound<'py, PyDict>,
    held: HashMap<(bool, usize), Bound<'py, PyList>>,
}

impl<'py> Collected<'py> {
    fn list(
        &mut self,
        topic: &Bound<'py, PyString>,
        violations: bool,
        partition: usize,
    ) -> PyResult<&Bound<'py, PyList>> {
        let records = &self.records;
        match self.held.entry((violations, partition)) {
            std::collections::hash_map::Entry::Occupied(held) => Ok(held.into_mut()),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                let key = (topic, partition).into_pyobject(records.py())?;
                let list = match records.get_item(&key)? {
                    Some(list) => list.downcast_into::<PyList>()?,
                    None => {
                        let list = PyList::empty(records.py());
                        records.set_item(key, &list)?;
                        list
                    }
                };
                Ok(vacant.insert(list))
            }
        }
    }
}

/// What a run of input records gave besides the records appended to the collector (see handle_run).
struct Run<'py> {
    rejections: Bound<'py, PyList>,
    reroutes: Bound<'py, PyList>,
    block_changes: Bound<'py, PyList>,
    decided_at: Bound<'py, PyList>,
    prefs: Bound<'py, PyList>,
    events: IndexMap<(usize, Option<usize>, usize), u64, Hasher>,
    decisions: IndexMap<(bool, String, usize), u64, Hasher>,
    violations: IndexMap<(&'static str, usize, Option<String>), u64, Hasher>,
}

/// Unsendable, as NativeReplay: used only by the thread that made it (the pipeline's event loop).
#[pyclass(unsendable, module = "fatigue._native")]
pub struct NativePartition {
    engine: Engine,
    /// None: the store has no state for the customer (never seen, or erased); first loaded or created first
    states: IndexMap<String, Option<Box<State>>, Hasher>,
    /// changed since the last take_dirty, in the order first changed
    dirty: IndexSet<String, Hasher>,
    zone_offsets: RefCell<ZoneOffsets>,
    bridge: PyObject,
    loader: PyObject,
    check_key: bool,
    names: Names,
}

/// The outcome tuple of a rejected message (see `process`).
fn rejected<'py>(
    py: Python<'py>,
    reason: &str,
    detail: &str,
    event_id: Option<&str>,
    customer_id: Option<&str>,
) -> PyResult<Bound<'py, PyTuple>> {
    let none = py.None();
    PyTuple::new(
        py,
        [
            (reason, detail, event_id, customer_id).into_pyobject(py)?.into_any().unbind(),
            none.clone_ref(py),
            none.clone_ref(py),
            none.clone_ref(py),
            none.clone_ref(py),
            PyList::empty(py).into_any().unbind(),
            PyList::empty(py).into_any().unbind(),
            none.clone_ref(py),
            false.into_pyobject(py)?.to_owned().into_any().unbind(),
            none.clone_ref(py),
            none,
        ],
    )
}

/// Whether an input record carries the header the pipeline adds when it forwards a record to its partition.
fn rerouted_before(record: &Bound<'_, PyAny>, header: &str) -> PyResult<bool> {
    let headers = record.getattr(intern!(record.py(), "headers"))?;
    if headers.is_none() {
        return Ok(false);
    }
    for item in headers.try_iter()? {
        if item?.get_item(0)?.extract::<&str>().is_ok_and(|name| name == header) {
            return Ok(true);
        }
    }
    Ok(false)
}

impl NativePartition {
    /// Makes sure the customer's state (or its known absence) is held, loading it from the store if not.
    fn ensure(&mut self, py: Python<'_>, customer_id: &str) -> PyResult<()> {
        if self.states.contains_key(customer_id) {
            return Ok(());
        }
        let stored = self.loader.bind(py).call1((customer_id,))?;
        let state = if stored.is_none() {
            None
        } else {
            // bytes, or any bytes-like object a store may hand out (made bytes first)
            let raw = match stored.downcast_into::<PyBytes>() {
                Ok(raw) => raw,
                Err(error) => py.get_type::<PyBytes>().call1((error.into_inner(),))?.downcast_into::<PyBytes>()?,
            };
            Some(Box::new(State::from_json(raw.as_bytes()).map_err(|error| {
                PyValueError::new_err(format!("the stored state of {customer_id:?} does not decode: {error}"))
            })?))
        };
        self.states.insert(customer_id.to_owned(), state);
        Ok(())
    }

    fn mark_dirty(&mut self, customer_id: &str) {
        if !self.dirty.contains(customer_id) {
            self.dirty.insert(customer_id.to_owned());
        }
    }

    /// A decision of `customer_id` as fatigue.partition's DecisionRecord.
    fn decision_record<'py>(
        &self,
        py: Python<'py>,
        customer_id: &str,
        decision: &EmittedDecision,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let channel = CHANNELS[decision.channel];
        let mut key = Vec::with_capacity(channel.len() + 1 + customer_id.len());
        key.extend_from_slice(channel.as_bytes());
        key.push(b':');
        key.extend_from_slice(customer_id.as_bytes());
        let action = if decision.block { &self.names.block } else { &self.names.allow };
        (
            PyBytes::new(py, &key),
            PyBytes::new(py, decision.json.as_bytes()),
            action.clone_ref(py),
            PyString::intern(py, &decision.reason),
            self.names.channels[decision.channel].clone_ref(py),
            decision.until_ms,
            decision.decided_at_ms,
        )
            .into_pyobject(py)
    }

    fn decision_list<'py>(
        &self,
        py: Python<'py>,
        customer_id: &str,
        decisions: &[EmittedDecision],
    ) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for decision in decisions {
            list.append(self.decision_record(py, customer_id, decision)?)?;
        }
        Ok(list)
    }

    /// Parses one input message: by the fast parser, else by the Python core (through the bridge).
    fn parse<'py>(&self, py: Python<'py>, raw: &[u8], key: Option<&[u8]>) -> PyResult<Parsed<'py>> {
        let max_bytes = self.engine.policy.max_event_bytes;
        if let Some(event) = parse_fast(raw, key, self.check_key, max_bytes) {
            return Ok(Parsed::Native(event));
        }
        let bridge = self.bridge.bind(py);
        let parsed =
            bridge.call_method1(intern!(py, "parse"), (PyBytes::new(py, raw), key.map(|key| PyBytes::new(py, key))))?;
        let parsed = parsed.downcast::<PyTuple>()?;
        let kind: i64 = parsed.get_item(0)?.extract()?;
        Ok(match kind {
            0 => Parsed::Rejected(
                parsed.get_item(1)?.extract()?,
                parsed.get_item(2)?.extract()?,
                parsed.get_item(3)?.extract()?,
                parsed.get_item(4)?.extract()?,
            ),
            1 => Parsed::Native(event_from_parsed(parsed)?),
            _ => Parsed::Python(parsed.get_item(1)?.extract()?, parsed.get_item(2)?),
        })
    }

    fn process_one<'py>(&mut self, py: Python<'py>, raw: &[u8], key: Option<&[u8]>) -> PyResult<Bound<'py, PyTuple>> {
        match self.parse(py, raw, key)? {
            Parsed::Rejected(reason, detail, event_id, customer_id) => {
                rejected(py, &reason, &detail, event_id.as_deref(), customer_id.as_deref())
            }
            Parsed::Native(event) => self.apply(py, &event),
            Parsed::Python(customer_id, event) => self.apply_in_python(py, &customer_id, &event),
        }
    }

    /// PythonEngine.process after parsing, for an event the native engine decides, as Rust values.
    fn apply_native<'py>(
        &mut self,
        py: Python<'py>,
        event: &Event,
    ) -> PyResult<Result<Applied<'py>, (&'static str, String)>> {
        let customer_id = event.customer_id.as_str();
        self.ensure(py, customer_id)?;
        let bridge = self.bridge.bind(py);
        let clock = BridgeClock { bridge, offsets: &self.zone_offsets };
        let slot = self.states.get_mut(customer_id).expect("ensured");
        let (created, step) = match self.engine.process(slot.as_deref_mut(), event, &clock) {
            Err(rejection) => return Ok(Err((rejection.reason, rejection.detail))),
            Ok(done) => done,
        };
        if let Some(created) = created {
            *slot = Some(Box::new(created));
        }
        let state: &State = slot.as_deref().expect("processed");
        let watermark_ms = state.watermark_ms;
        let next_deadline_ms = state.next_deadline_ms();
        let prefs = match event.kind {
            EventType::Preference | EventType::Unsubscribe | EventType::SmsStop => {
                let encoded = PyBytes::new(py, state.to_json().as_bytes());
                Some(bridge.call_method1(intern!(py, "prefs_view"), (encoded,))?)
            }
            _ => None,
        };
        self.mark_dirty(customer_id);
        let channel = match (&event.prefs, event.kind) {
            (Some(prefs), EventType::Preference) => prefs.channel,
            _ => Some(event.channel),
        };
        Ok(Ok(Applied {
            decisions: step.decisions,
            violations: step.violations,
            watermark_ms,
            next_deadline_ms,
            prefs,
            channel,
        }))
    }

    /// PythonEngine.process after parsing, for an event the native engine decides.
    fn apply<'py>(&mut self, py: Python<'py>, event: &Event) -> PyResult<Bound<'py, PyTuple>> {
        let customer_id = event.customer_id.as_str();
        let applied = match self.apply_native(py, event)? {
            Err((reason, detail)) => {
                return rejected(py, reason, &detail, Some(&event.event_id), Some(customer_id));
            }
            Ok(applied) => applied,
        };
        let decisions = self.decision_list(py, customer_id, &applied.decisions)?;
        let violations = PyList::empty(py);
        for violation in &applied.violations {
            violations.append((
                PyBytes::new(py, violation.json.as_bytes()),
                PyString::intern(py, violation.kind),
                self.names.channels[violation.channel].clone_ref(py),
                event.sender.as_deref(),
            ))?;
        }
        (
            py.None(),
            customer_id,
            self.names.event_type(event.kind).clone_ref(py),
            applied.channel.map(|channel| self.names.channels[channel].clone_ref(py)),
            self.names.categories[event.category].clone_ref(py),
            decisions,
            violations,
            applied.prefs,
            false,
            applied.watermark_ms,
            applied.next_deadline_ms,
        )
            .into_pyobject(py)
    }

    /// Guard.advance for one customer, as Rust values: None when it has no state (erased since it was scheduled).
    fn advance_native(
        &mut self,
        py: Python<'_>,
        customer_id: &str,
        now_ms: i64,
    ) -> PyResult<Option<(Vec<EmittedDecision>, Option<i64>)>> {
        self.ensure(py, customer_id)?;
        let engine = &self.engine;
        let Some(state) = self.states.get_mut(customer_id).expect("ensured").as_deref_mut() else {
            return Ok(None);
        };
        let decisions = engine.advance(state, now_ms);
        let next_deadline_ms = state.next_deadline_ms();
        self.mark_dirty(customer_id);
        Ok(Some((decisions, next_deadline_ms)))
    }

    /// PartitionTask._decisions for decisions of `customer_id`: each appended to the decisions list, counted, its
    /// block set or lifted in the task's index (by the caller, from `block_changes`), its time kept for the latency.
    fn route_decisions<'py>(
        &self,
        py: Python<'py>,
        run: &mut Run<'py>,
        decided: &Bound<'py, PyList>,
        customer_id: &str,
        decisions: Vec<EmittedDecision>,
    ) -> PyResult<()> {
        for decision in decisions {
            let channel = CHANNELS[decision.channel];
            let mut key = Vec::with_capacity(channel.len() + 1 + customer_id.len());
            key.extend_from_slice(channel.as_bytes());
            key.push(b':');
            key.extend_from_slice(customer_id.as_bytes());
            decided.append((PyBytes::new(py, &key), PyBytes::new(py, decision.json.as_bytes()), py.None()))?;
            run.block_changes.append((customer_id, decision.channel, decision.block, decision.until_ms))?;
            run.decided_at.append(decision.decided_at_ms)?;
            *run.decisions.entry((decision.block, decision.reason, decision.channel)).or_insert(0) += 1;
        }
        Ok(())
    }

    /// The outputs of an event the native engine applied, and the deadlines its event time settled for others
    /// (PartitionDriver.feed_fields and PartitionTask.handle, in their order).
    #[allow(clippy::too_many_arguments)]
    fn route<'py>(
        &mut self,
        py: Python<'py>,
        run: &mut Run<'py>,
        collected: &mut Collected<'py>,
        topics: (&Bound<'py, PyString>, &Bound<'py, PyString>, usize, usize),
        clock: &Bound<'py, PyAny>,
        key: &Bound<'py, PyBytes>,
        event: &Event,
        applied: Applied<'py>,
    ) -> PyResult<()> {
        let (decisions_topic, violations_topic, own, partitions) = topics;
        let customer_id = event.customer_id.as_str();
        *run.events.entry((type_index(event.kind), applied.channel, event.category)).or_insert(0) += 1;
        let decided = collected.list(decisions_topic, false, own)?.clone();
        self.route_decisions(py, run, &decided, customer_id, applied.decisions)?;
        let bound: Option<i64> = clock
            .call_method1(intern!(py, "observe_due"), (customer_id, applied.watermark_ms, applied.next_deadline_ms))?
            .extract()?;
        if let Some(bound) = bound {
            for due in clock.call_method1(intern!(py, "due"), (bound,))?.try_iter()? {
                let due: String = due?.extract()?;
                let (fired, next_deadline_ms) = self.advance_native(py, &due, bound)?.unwrap_or_default();
                self.route_decisions(py, run, &decided, &due, fired)?;
                clock.call_method1(intern!(py, "schedule_at"), (&due, next_deadline_ms))?;
            }
        }
        if !applied.violations.is_empty() {
            let list = collected.list(violations_topic, true, partition_for_key(key.as_bytes(), partitions))?;
            for violation in &applied.violations {
                list.append((key, PyBytes::new(py, violation.json.as_bytes()), py.None()))?;
                *run.violations.entry((violation.kind, violation.channel, event.sender.clone())).or_insert(0) += 1;
            }
        }
        if let Some(prefs) = applied.prefs {
            run.prefs.append((key, prefs))?;
        }
        Ok(())
    }

    /// PythonEngine.process after parsing, for an event the Python Guard decides (erasure), on the state serialised
    /// for it: the bridge returns (rejected, new state or None, the outcome tuple).
    fn apply_in_python<'py>(
        &mut self,
        py: Python<'py>,
        customer_id: &str,
        event: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        self.ensure(py, customer_id)?;
        let held = self.states.get(customer_id).expect("ensured");
        let state_bytes = held.as_ref().map(|state| PyBytes::new(py, state.to_json().as_bytes()));
        let bridge = self.bridge.bind(py);
        let result = bridge.call_method1(intern!(py, "process_records"), (state_bytes, event))?;
        let result = result.downcast::<PyTuple>()?;
        let was_rejected: bool = result.get_item(0)?.extract()?;
        let outcome = result.get_item(2)?.downcast_into::<PyTuple>()?;
        if was_rejected {
            return Ok(outcome);
        }
        let new_state: Option<Bound<'_, PyBytes>> = result.get_item(1)?.extract()?;
        let new_state = match new_state {
            Some(raw) => Some(Box::new(State::from_json(raw.as_bytes()).map_err(PyValueError::new_err)?)),
            None => None,
        };
        *self.states.get_mut(customer_id).expect("ensured") = new_state;
        self.mark_dirty(customer_id);
        Ok(outcome)
    }
}

#[pymethods]
impl NativePartition {
    #[new]
    #[pyo3(signature = (policy_json, bridge, loader, check_key = true))]
    fn new(py: Python<'_>, policy_json: &[u8], bridge: PyObject, loader: PyObject, check_key: bool) -> PyResult<Self> {
        let policy = Policy::from_json(policy_json).map_err(PyValueError::new_err)?;
        Ok(NativePartition {
            engine: Engine::new(policy),
            states: IndexMap::with_hasher(Hasher::new()),
            dirty: IndexSet::with_hasher(Hasher::new()),
            zone_offsets: RefCell::new(HashMap::default()),
            bridge,
            loader,
            check_key,
            names: Names::new(py),
        })
    }

    /// One input message: (rejection, customer_id, event_type, channel, category, decisions, violations, prefs,
    /// erased, watermark_ms, next_deadline_ms), the fields of fatigue.partition's Outcome and Processed; rejection
    /// as (reason, detail, event_id, customer_id), decisions and violations as DecisionRecord and ViolationRecord.
    #[pyo3(signature = (raw, key = None))]
    fn process<'py>(&mut self, py: Python<'py>, raw: &[u8], key: Option<&[u8]>) -> PyResult<Bound<'py, PyTuple>> {
        self.process_one(py, raw, key)
    }

    /// Guard.advance for one customer: (its decisions as DecisionRecords, its next deadline after).
    fn advance<'py>(
        &mut self,
        py: Python<'py>,
        customer_id: &str,
        now_ms: i64,
    ) -> PyResult<(Bound<'py, PyList>, Option<i64>)> {
        match self.advance_native(py, customer_id, now_ms)? {
            None => Ok((PyList::empty(py), None)), // erased since it was scheduled
            Some((decisions, next_deadline_ms)) => {
                Ok((self.decision_list(py, customer_id, &decisions)?, next_deadline_ms))
            }
        }
    }

    /// PartitionTask.handle's loop over `records[start..]` (aiokafka's ConsumerRecords of this partition, in
    /// offset order), routed here: decisions and violations appended to the task's collector (`collected`, its
    /// `records`), the partition clock (`clock`, a fatigue.clock.PartitionClock) kept. It stops before an erasure
    /// (the Python core applies it; the task routes it, then calls again after it). Returns (the index it stopped
    /// at, rejections as (index, (reason, detail, event_id, customer_id)), indexes of records to forward to their
    /// partition, counts of events as ((type, channel, category), n), of decisions as ((action, reason, channel),
    /// n), of violations as ((kind, channel, sender), n), block changes as (customer_id, channel index, block,
    /// until_ms), the decisions' decided_at_ms, preference views as (key, value)).
    #[pyo3(signature = (
        records, start, skip_below, clock, collected, decisions_topic, violations_topic, own, partitions,
        max_key_bytes, max_event_bytes, rerouted_header
    ))]
    #[allow(clippy::too_many_arguments)]
    fn handle_run<'py>(
        &mut self,
        py: Python<'py>,
        records: &Bound<'py, PyList>,
        start: usize,
        skip_below: i64,
        clock: &Bound<'py, PyAny>,
        collected: &Bound<'py, PyDict>,
        decisions_topic: &Bound<'py, PyString>,
        violations_topic: &Bound<'py, PyString>,
        own: usize,
        partitions: usize,
        max_key_bytes: usize,
        max_event_bytes: usize,
        rerouted_header: &str,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut run = Run {
            rejections: PyList::empty(py),
            reroutes: PyList::empty(py),
            block_changes: PyList::empty(py),
            decided_at: PyList::empty(py),
            prefs: PyList::empty(py),
            events: IndexMap::with_hasher(Hasher::new()),
            decisions: IndexMap::with_hasher(Hasher::new()),
            violations: IndexMap::with_hasher(Hasher::new()),
        };
        let mut collected = Collected { records: collected.clone(), held: HashMap::new() };
        let topics = (decisions_topic, violations_topic, own, partitions);
        let empty = PyBytes::new(py, b"");
        let mut stop = records.len();
        for index in start..records.len() {
            let record = records.get_item(index)?;
            let offset: i64 = record.getattr(intern!(py, "offset"))?.extract()?;
            if offset < skip_below {
                continue; // fetched before the partition was sought back to its committed offset
            }
            let key = record.getattr(intern!(py, "key"))?;
            let key = if key.is_none() { None } else { Some(key.downcast_into::<PyBytes>()?) };
            let value = record.getattr(intern!(py, "value"))?;
            let value = if value.is_none() { empty.clone() } else { value.downcast_into::<PyBytes>()? };
            if let Some(key) = &key {
                let key = key.as_bytes();
                if key.len() <= max_key_bytes
                    && value.as_bytes().len() <= max_event_bytes
                    && partition_for_key(key, partitions) != own
                    && !rerouted_before(&record, rerouted_header)?
                {
                    run.reroutes.append(index)?;
                    continue;
                }
            }
            match self.parse(py, value.as_bytes(), key.as_ref().map(|key| key.as_bytes()))? {
                Parsed::Rejected(reason, detail, event_id, customer_id) => {
                    run.rejections.append((index, (reason, detail, event_id, customer_id)))?;
                }
                Parsed::Python(..) => {
                    stop = index;
                    break;
                }
                Parsed::Native(event) => match self.apply_native(py, &event)? {
                    Err((reason, detail)) => {
                        let fields = (reason, detail, event.event_id.as_str(), event.customer_id.as_str());
                        run.rejections.append((index, fields))?;
                    }
                    Ok(applied) => {
                        let key = key.as_ref().expect("an accepted event's key is its customer id");
                        self.route(py, &mut run, &mut collected, topics, clock, key, &event, applied)?;
                    }
                },
            }
        }
        let names = &self.names;
        let events = PyList::empty(py);
        for ((kind, channel, category), count) in &run.events {
            let channel = match channel {
                Some(channel) => names.channels[*channel].clone_ref(py),
                None => PyString::intern(py, "all").unbind(),
            };
            events.append((
                (names.types[*kind].clone_ref(py), channel, names.categories[*category].clone_ref(py)),
                *count,
            ))?;
        }
        let decisions = PyList::empty(py);
        for ((block, reason, channel), count) in &run.decisions {
            let action = if *block { &names.block } else { &names.allow };
            let labels = (action.clone_ref(py), PyString::intern(py, reason), names.channels[*channel].clone_ref(py));
            decisions.append((labels, *count))?;
        }
        let violations = PyList::empty(py);
        for ((kind, channel, sender), count) in &run.violations {
            violations.append(((*kind, names.channels[*channel].clone_ref(py), sender.as_deref()), *count))?;
        }
        (
            stop,
            run.rejections,
            run.reroutes,
            events,
            decisions,
            violations,
            run.block_changes,
            run.decided_at,
            run.prefs,
        )
            .into_pyobject(py)
    }

    /// The states changed since the last call, as (customer_id, encoded state or None), in the order first changed.
    fn take_dirty<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let changed = PyList::empty(py);
        for customer_id in std::mem::take(&mut self.dirty) {
            let state = self.states.get(&customer_id).expect("a dirty state is held");
            let encoded = state.as_ref().map(|state| PyBytes::new(py, state.to_json().as_bytes()));
            changed.append((customer_id, encoded))?;
        }
        Ok(changed)
    }

    /// Forgets clean states (and known absences) beyond `keep`, first loaded or created first; how many.
    fn evict(&mut self, keep: usize) -> usize {
        let excess = self.states.len().saturating_sub(keep);
        if excess == 0 {
            return 0;
        }
        let dirty = &self.dirty;
        let mut left = excess;
        self.states.retain(|customer_id, _| {
            if left > 0 && !dirty.contains(customer_id) {
                left -= 1;
                false
            } else {
                true
            }
        });
        excess - left
    }

    fn resident(&self) -> usize {
        self.states.len()
    }

    /// The customer's state, encoded (held, or loaded from the store and then held).
    fn state_bytes<'py>(&mut self, py: Python<'py>, customer_id: &str) -> PyResult<Option<Bound<'py, PyBytes>>> {
        self.ensure(py, customer_id)?;
        let held = self.states.get(customer_id).expect("ensured");
        Ok(held.as_ref().map(|state| PyBytes::new(py, state.to_json().as_bytes())))
    }
}
