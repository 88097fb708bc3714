//! fatigue/partition.py's PythonEngine on the native engine: one Kafka partition's customers, their states loaded on
//! demand from the pipeline's store (a Python callable), changed ones handed back for its changelog, clean ones
//! evicted. Parsing, the bridge to the Python core (lines the fast parser leaves alone, erasure) and the zone-offset
//! cache are replay.rs's; fatigue/native.py's NativeEngine wraps this class into a CustomerEngine.

use std::cell::RefCell;
use std::collections::HashMap;

use indexmap::{IndexMap, IndexSet};
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::engine::{EmittedDecision, Engine};
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
        let index = match kind {
            EventType::Contact => 0,
            EventType::CallEnded => 1,
            EventType::EmailOpened => 2,
            EventType::Unsubscribe => 3,
            EventType::Complaint => 4,
            EventType::SmsStop => 5,
            EventType::Preference => 6,
        };
        &self.types[index]
    }
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

    fn process_one<'py>(&mut self, py: Python<'py>, raw: &[u8], key: Option<&[u8]>) -> PyResult<Bound<'py, PyTuple>> {
        let max_bytes = self.engine.policy.max_event_bytes;
        if let Some(event) = parse_fast(raw, key, self.check_key, max_bytes) {
            return self.apply(py, &event);
        }
        let bridge = self.bridge.bind(py);
        let parsed =
            bridge.call_method1(intern!(py, "parse"), (PyBytes::new(py, raw), key.map(|key| PyBytes::new(py, key))))?;
        let parsed = parsed.downcast::<PyTuple>()?;
        let kind: i64 = parsed.get_item(0)?.extract()?;
        match kind {
            0 => {
                let (reason, detail, event_id, customer_id): (String, String, Option<String>, Option<String>) = (
                    parsed.get_item(1)?.extract()?,
                    parsed.get_item(2)?.extract()?,
                    parsed.get_item(3)?.extract()?,
                    parsed.get_item(4)?.extract()?,
                );
                rejected(py, &reason, &detail, event_id.as_deref(), customer_id.as_deref())
            }
            1 => {
                let event = event_from_parsed(parsed)?;
                self.apply(py, &event)
            }
            _ => {
                let customer_id: String = parsed.get_item(1)?.extract()?;
                let event = parsed.get_item(2)?;
                self.apply_in_python(py, &customer_id, &event)
            }
        }
    }

    /// PythonEngine.process after parsing, for an event the native engine decides.
    fn apply<'py>(&mut self, py: Python<'py>, event: &Event) -> PyResult<Bound<'py, PyTuple>> {
        let customer_id = event.customer_id.as_str();
        self.ensure(py, customer_id)?;
        let bridge = self.bridge.bind(py);
        let clock = BridgeClock { bridge, offsets: &self.zone_offsets };
        let slot = self.states.get_mut(customer_id).expect("ensured");
        let (created, step) = match self.engine.process(slot.as_deref_mut(), event, &clock) {
            Err(rejection) => {
                return rejected(py, rejection.reason, &rejection.detail, Some(&event.event_id), Some(customer_id));
            }
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
        let decisions = self.decision_list(py, customer_id, &step.decisions)?;
        let violations = PyList::empty(py);
        for violation in &step.violations {
            violations.append((
                PyBytes::new(py, violation.json.as_bytes()),
                PyString::intern(py, violation.kind),
                self.names.channels[violation.channel].clone_ref(py),
                event.sender.as_deref(),
            ))?;
        }
        let channel = match (&event.prefs, event.kind) {
            (Some(prefs), EventType::Preference) => prefs.channel,
            _ => Some(event.channel),
        };
        (
            py.None(),
            customer_id,
            self.names.event_type(event.kind).clone_ref(py),
            channel.map(|channel| self.names.channels[channel].clone_ref(py)),
            self.names.categories[event.category].clone_ref(py),
            decisions,
            violations,
            prefs,
            false,
            watermark_ms,
            next_deadline_ms,
        )
            .into_pyobject(py)
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
        self.ensure(py, customer_id)?;
        let engine = &self.engine;
        let Some(state) = self.states.get_mut(customer_id).expect("ensured").as_deref_mut() else {
            return Ok((PyList::empty(py), None)); // erased since it was scheduled
        };
        let decisions = engine.advance(state, now_ms);
        let next_deadline_ms = state.next_deadline_ms();
        self.mark_dirty(customer_id);
        Ok((self.decision_list(py, customer_id, &decisions)?, next_deadline_ms))
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
