//! Per-customer state, laid out as fatigue/state.py's CustomerState and serialised to the same bytes as
//! `CustomerState.to_bytes()` (read back from them too: events the native core leaves to the Python engine run on
//! the state it serialised).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use indexmap::IndexMap;
use serde_json::Value;

use crate::events::CHANNELS;
use crate::json::{
    as_array, as_i64, as_opt_i64, as_opt_string, as_string, item, push_i64, push_key, push_opt_i64, push_opt_str,
    push_str,
};
use crate::timeutil::push_ms;

pub const SCOPE_ALL: usize = 3;

#[derive(Clone, Debug, PartialEq)]
pub struct OptOut {
    pub at: i64,
    pub opted_out: bool,
    pub source: String,
}

/// A customer cap or quiet hours fact: [ts, a | null, b | null].
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub at: i64,
    pub first: Option<i64>,
    pub second: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Zone {
    pub at: i64,
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Fact {
    Quiet(Pair),
    Zone(Zone),
}

impl Fact {
    pub fn at(&self) -> i64 {
        match self {
            Fact::Quiet(pair) => pair.at,
            Fact::Zone(zone) => zone.at,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Lifted {
    pub channel: i64,
    pub since: i64,
    pub lifted_at: i64,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub deadline: i64,
    pub contact_event_id: String,
    pub opened: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UnreadBlock {
    pub since: i64,
    pub until: i64,
    pub cause_event_id: String,
    pub streak: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settled {
    pub deadline: i64,
    pub contact_event_id: String,
    pub streak: i64,
}

/// A decision as the state keeps it: without its evidence, which is published with it (`to_json`) and never read
/// again (fatigue.state.remembered).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub block: bool,
    pub reason: String,
    pub rule: String,
    pub rule_id: String,
    pub until_ms: Option<i64>,
    pub policy_version: String,
    pub decided_at_ms: i64,
    pub cause_event_id: String,
    /// present (a channel or null) only on blocks after a negative reaction
    pub suggest: Option<Option<String>>,
}

impl Decision {
    pub fn action(&self) -> &'static str {
        if self.block {
            "block"
        } else {
            "allow"
        }
    }

    /// A block still in force at `at`.
    pub fn blocking(&self, at: i64) -> bool {
        self.block && self.until_ms.is_none_or(|until| until > at)
    }

    /// The decision as the engine emits it, with its `evidence` (a JSON object), in the key order of
    /// fatigue/engine.py's decisions.
    pub fn to_json(&self, customer_id: &str, channel: usize, evidence: &str) -> String {
        let mut out = String::with_capacity(256 + evidence.len());
        out.push('{');
        push_key(&mut out, "customer_id", true);
        push_str(&mut out, customer_id);
        push_key(&mut out, "channel", false);
        push_str(&mut out, CHANNELS[channel]);
        push_key(&mut out, "action", false);
        push_str(&mut out, self.action());
        push_key(&mut out, "reason", false);
        push_str(&mut out, &self.reason);
        push_key(&mut out, "rule", false);
        push_str(&mut out, &self.rule);
        push_key(&mut out, "rule_id", false);
        push_str(&mut out, &self.rule_id);
        push_key(&mut out, "until", false);
        match self.until_ms {
            Some(until) => {
                out.push('"');
                push_ms(&mut out, until);
                out.push('"');
            }
            None => out.push_str("null"),
        }
        push_key(&mut out, "until_ms", false);
        push_opt_i64(&mut out, self.until_ms);
        push_key(&mut out, "evidence", false);
        out.push_str(evidence);
        push_key(&mut out, "policy_version", false);
        push_str(&mut out, &self.policy_version);
        push_key(&mut out, "decided_at", false);
        out.push('"');
        push_ms(&mut out, self.decided_at_ms);
        out.push('"');
        push_key(&mut out, "decided_at_ms", false);
        push_i64(&mut out, self.decided_at_ms);
        push_key(&mut out, "cause_event_id", false);
        push_str(&mut out, &self.cause_event_id);
        if let Some(suggest) = &self.suggest {
            push_key(&mut out, "suggest", false);
            push_opt_str(&mut out, suggest.as_deref());
        }
        out.push('}');
        out
    }

    /// fatigue.state._pack_decision (null in the slot where earlier versions stored the evidence)
    fn pack(&self, out: &mut String) {
        out.push('[');
        push_str(out, self.action());
        out.push(',');
        push_str(out, &self.reason);
        out.push(',');
        push_str(out, &self.rule);
        out.push(',');
        push_str(out, &self.rule_id);
        out.push(',');
        push_opt_i64(out, self.until_ms);
        out.push_str(",null,");
        push_str(out, &self.policy_version);
        out.push(',');
        push_i64(out, self.decided_at_ms);
        out.push(',');
        push_str(out, &self.cause_event_id);
        if let Some(suggest) = &self.suggest {
            out.push(',');
            push_opt_str(out, suggest.as_deref());
        }
        out.push(']');
    }

    /// fatigue.state._unpack_decision: the evidence an earlier version stored (slot 5, or a whole decision's
    /// key) is left out.
    fn unpack(value: &Value) -> Result<Decision, String> {
        if value.is_object() {
            return Decision::from_whole(value);
        }
        let items = as_array(value)?;
        if items.len() < 9 {
            return Err("a stored decision of fewer than 9 items".to_owned());
        }
        Ok(Decision {
            block: as_string(&items[0])? == "block",
            reason: as_string(&items[1])?,
            rule: as_string(&items[2])?,
            rule_id: as_string(&items[3])?,
            until_ms: as_opt_i64(&items[4])?,
            policy_version: as_string(&items[6])?,
            decided_at_ms: as_i64(&items[7])?,
            cause_event_id: as_string(&items[8])?,
            suggest: if items.len() > 9 { Some(as_opt_string(&items[9])?) } else { None },
        })
    }

    /// A decision stored whole, as an earlier version did.
    fn from_whole(value: &Value) -> Result<Decision, String> {
        let field = |key: &str| value.get(key).ok_or_else(|| format!("a stored decision without {key}"));
        Ok(Decision {
            block: as_string(field("action")?)? == "block",
            reason: as_string(field("reason")?)?,
            rule: as_string(field("rule")?)?,
            rule_id: as_string(field("rule_id")?)?,
            until_ms: as_opt_i64(field("until_ms")?)?,
            policy_version: as_string(field("policy_version")?)?,
            decided_at_ms: as_i64(field("decided_at_ms")?)?,
            cause_event_id: as_string(field("cause_event_id")?)?,
            suggest: match value.get("suggest") {
                Some(suggest) => Some(as_opt_string(suggest)?),
                None => None,
            },
        })
    }
}

/// The event ids remembered for de-duplication, in arrival order (CustomerState.ids, a dict there). Ids leave
/// from the front (the bound, the late grace), which an IndexMap makes O(n); here a queue, plus, once a customer
/// has many, a count of the kept ids per hash: a hash not counted is an id not seen, without comparing strings.
/// Most customers have a few ids, which a scan checks faster than any hashing.
#[derive(Clone, Debug, Default)]
pub struct EventIds {
    order: VecDeque<(String, i64)>,
    hashes: Option<HashMap<u64, u32, BuildHasherDefault<HashIsKey>>>,
}

/// Up to this many ids, `contains` scans them; beyond, it looks the hash up first.
const SCANNED_IDS: usize = 24;

/// The keys of `EventIds::hashes` are hashes already: hashing them again would only cost time.
#[derive(Default)]
struct HashIsKey(u64);

impl Hasher for HashIsKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

fn id_hash(id: &str) -> u64 {
    // keyed once per process (ids are untrusted input), fast for short strings
    static KEYS: OnceLock<ahash::RandomState> = OnceLock::new();
    KEYS.get_or_init(ahash::RandomState::new).hash_one(id)
}

impl EventIds {
    pub fn contains(&self, id: &str) -> bool {
        if let Some(hashes) = &self.hashes {
            if !hashes.contains_key(&id_hash(id)) {
                return false;
            }
        }
        self.order.iter().any(|(known, _)| known == id)
    }

    /// Remembers an id not remembered yet (the caller checked).
    pub fn push(&mut self, id: String, seen_at: i64) {
        match &mut self.hashes {
            Some(hashes) => *hashes.entry(id_hash(&id)).or_insert(0) += 1,
            None if self.order.len() >= SCANNED_IDS => {
                let mut hashes = HashMap::default();
                for (known, _) in self.order.iter().chain(std::iter::once(&(id.clone(), seen_at))) {
                    *hashes.entry(id_hash(known)).or_insert(0) += 1;
                }
                self.hashes = Some(hashes);
            }
            None => {}
        }
        self.order.push_back((id, seen_at));
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn pop_oldest(&mut self) {
        if let Some((id, _)) = self.order.pop_front() {
            if let Some(hashes) = &mut self.hashes {
                let hash = id_hash(&id);
                if let Some(count) = hashes.get_mut(&hash) {
                    *count -= 1;
                    if *count == 0 {
                        hashes.remove(&hash);
                    }
                }
            }
        }
    }

    /// Forgets ids from the oldest up to the first one seen at or after `cutoff` (CustomerState order).
    pub fn forget_before(&mut self, cutoff: i64) {
        while self.order.front().is_some_and(|(_, seen_at)| *seen_at < cutoff) {
            self.pop_oldest();
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &i64)> {
        self.order.iter().map(|(id, seen_at)| (id, seen_at))
    }
}

#[derive(Clone, Debug)]
pub struct Emitted {
    pub since: i64,
    pub decision: Decision,
}

#[derive(Clone, Debug)]
pub struct State {
    pub customer_id: String,
    pub watermark_ms: Option<i64>,
    pub logs: [Vec<i64>; 3],
    pub ids: EventIds,
    pub hangups: Vec<i64>,
    pub conversation_ms: Option<i64>,
    pub complaints: [Option<i64>; 3],
    pub opt_outs: [Option<OptOut>; 3],
    pub lifted_opt_outs: Vec<Lifted>,
    pub superseded_signals: Vec<[i64; 3]>,
    pub superseded_facts: Vec<(i64, Fact, i64)>,
    pub customer_caps: [Option<Pair>; 4],
    pub quiet: [Option<Pair>; 3],
    pub timezone: Option<Zone>,
    pub pending: VecDeque<Pending>,
    pub early_opens: IndexMap<String, i64>,
    pub streak: i64,
    pub unread_block: Option<UnreadBlock>,
    pub settled: VecDeque<Settled>,
    pub unread_prior: Option<UnreadBlock>,
    /// boxed: a decision is large and most customers have none (the state stays compact in memory)
    pub emitted: [Option<Box<Emitted>>; 3],
    pub trimmed: i64,
    /// not serialised: before this instant the time-based trim has nothing to drop (0: unknown)
    pub trim_due_ms: i64,
}

/// `[a,b,...]`, each item written by `each`.
fn push_seq<'a, T: 'a>(
    out: &mut String,
    items: impl IntoIterator<Item = &'a T>,
    mut each: impl FnMut(&mut String, &'a T),
) {
    out.push('[');
    for (index, item) in items.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        each(out, item);
    }
    out.push(']');
}

/// A pending or settled email: [deadline_ms, contact_event_id, opened | streak].
fn push_mail(out: &mut String, deadline: i64, contact_event_id: &str, value: i64) {
    out.push('[');
    push_i64(out, deadline);
    out.push(',');
    push_str(out, contact_event_id);
    out.push(',');
    push_i64(out, value);
    out.push(']');
}

fn push_int_list(out: &mut String, values: &[i64]) {
    out.push('[');
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_i64(out, *value);
    }
    out.push(']');
}

fn push_pair(out: &mut String, pair: &Option<Pair>) {
    match pair {
        None => out.push_str("null"),
        Some(pair) => {
            out.push('[');
            push_i64(out, pair.at);
            out.push(',');
            push_opt_i64(out, pair.first);
            out.push(',');
            push_opt_i64(out, pair.second);
            out.push(']');
        }
    }
}

fn push_zone(out: &mut String, zone: &Zone) {
    out.push('[');
    push_i64(out, zone.at);
    out.push(',');
    push_opt_str(out, zone.name.as_deref());
    out.push(']');
}

fn push_unread_block(out: &mut String, block: &UnreadBlock) {
    out.push('[');
    push_i64(out, block.since);
    out.push(',');
    push_i64(out, block.until);
    out.push(',');
    push_str(out, &block.cause_event_id);
    out.push(',');
    push_i64(out, block.streak);
    out.push(']');
}

fn push_flat_pairs<'a>(out: &mut String, pairs: impl Iterator<Item = (&'a String, &'a i64)>) {
    out.push('[');
    for (index, (key, value)) in pairs.enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_str(out, key);
        out.push(',');
        push_i64(out, *value);
    }
    out.push(']');
}

fn pair_from(value: &Value) -> Result<Option<Pair>, String> {
    if value.is_null() {
        return Ok(None);
    }
    let items = as_array(value)?;
    Ok(Some(Pair {
        at: as_i64(item(items, 0)?)?,
        first: as_opt_i64(item(items, 1)?)?,
        second: as_opt_i64(item(items, 2)?)?,
    }))
}

fn zone_from(value: &Value) -> Result<Zone, String> {
    let items = as_array(value)?;
    Ok(Zone { at: as_i64(item(items, 0)?)?, name: as_opt_string(item(items, 1)?)? })
}

fn unread_block_from(value: &Value) -> Result<Option<UnreadBlock>, String> {
    if value.is_null() {
        return Ok(None);
    }
    let items = as_array(value)?;
    Ok(Some(UnreadBlock {
        since: as_i64(item(items, 0)?)?,
        until: as_i64(item(items, 1)?)?,
        cause_event_id: as_string(item(items, 2)?)?,
        streak: as_i64(item(items, 3)?)?,
    }))
}

fn flat_map_from(value: Option<&Value>) -> Result<IndexMap<String, i64>, String> {
    let mut map = IndexMap::new();
    if let Some(value) = value {
        let items = as_array(value)?;
        for pair in items.chunks(2) {
            map.insert(as_string(&pair[0])?, as_i64(item(pair, 1)?)?);
        }
    }
    Ok(map)
}

impl State {
    pub fn new(customer_id: &str) -> State {
        State {
            customer_id: customer_id.to_owned(),
            watermark_ms: None,
            logs: [Vec::new(), Vec::new(), Vec::new()],
            ids: EventIds::default(),
            hangups: Vec::new(),
            conversation_ms: None,
            complaints: [None; 3],
            opt_outs: [None, None, None],
            lifted_opt_outs: Vec::new(),
            superseded_signals: Vec::new(),
            superseded_facts: Vec::new(),
            customer_caps: [None, None, None, None],
            quiet: [None, None, None],
            timezone: None,
            pending: VecDeque::new(),
            early_opens: IndexMap::new(),
            streak: 0,
            unread_block: None,
            settled: VecDeque::new(),
            unread_prior: None,
            emitted: [None, None, None],
            trimmed: 0,
            trim_due_ms: 0,
        }
    }

    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.pending.front().map(|entry| entry.deadline)
    }

    /// == CustomerState.to_bytes(): empty parts left out, the same keys in the same order.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(512);
        out.push('{');
        push_key(&mut out, "c", true);
        push_str(&mut out, &self.customer_id);
        push_key(&mut out, "w", false);
        push_opt_i64(&mut out, self.watermark_ms);
        if self.logs.iter().any(|log| !log.is_empty()) {
            push_key(&mut out, "l", false);
            push_seq(&mut out, &self.logs, |out, log| push_int_list(out, log));
        }
        if !self.ids.is_empty() {
            push_key(&mut out, "i", false);
            push_flat_pairs(&mut out, self.ids.iter());
        }
        if !self.hangups.is_empty() {
            push_key(&mut out, "h", false);
            push_int_list(&mut out, &self.hangups);
        }
        if let Some(at) = self.conversation_ms {
            push_key(&mut out, "cv", false);
            push_i64(&mut out, at);
        }
        if self.complaints.iter().any(Option::is_some) {
            push_key(&mut out, "cp", false);
            push_seq(&mut out, &self.complaints, |out, at| push_opt_i64(out, *at));
        }
        if self.opt_outs.iter().any(Option::is_some) {
            push_key(&mut out, "o", false);
            push_seq(&mut out, &self.opt_outs, |out, fact| match fact {
                None => out.push_str("null"),
                Some(fact) => {
                    out.push('[');
                    push_i64(out, fact.at);
                    out.push_str(if fact.opted_out { ",true," } else { ",false," });
                    push_str(out, &fact.source);
                    out.push(']');
                }
            });
        }
        if !self.lifted_opt_outs.is_empty() {
            push_key(&mut out, "lo", false);
            push_seq(&mut out, &self.lifted_opt_outs, |out, entry| {
                out.push('[');
                for value in [entry.channel, entry.since, entry.lifted_at] {
                    push_i64(out, value);
                    out.push(',');
                }
                push_str(out, &entry.source);
                out.push(']');
            });
        }
        if !self.superseded_signals.is_empty() {
            push_key(&mut out, "ss", false);
            push_seq(&mut out, &self.superseded_signals, |out, entry| push_int_list(out, entry));
        }
        if !self.superseded_facts.is_empty() {
            push_key(&mut out, "sf", false);
            push_seq(&mut out, &self.superseded_facts, |out, (kind, fact, superseded_at)| {
                out.push('[');
                push_i64(out, *kind);
                out.push(',');
                match fact {
                    Fact::Quiet(pair) => push_pair(out, &Some(pair.clone())),
                    Fact::Zone(zone) => push_zone(out, zone),
                }
                out.push(',');
                push_i64(out, *superseded_at);
                out.push(']');
            });
        }
        if self.customer_caps.iter().any(Option::is_some) {
            push_key(&mut out, "cc", false);
            push_seq(&mut out, &self.customer_caps, push_pair);
        }
        if self.quiet.iter().any(Option::is_some) {
            push_key(&mut out, "q", false);
            push_seq(&mut out, &self.quiet, push_pair);
        }
        if let Some(zone) = &self.timezone {
            push_key(&mut out, "tz", false);
            push_zone(&mut out, zone);
        }
        if !self.pending.is_empty() {
            push_key(&mut out, "p", false);
            push_seq(&mut out, &self.pending, |out, entry| {
                push_mail(out, entry.deadline, &entry.contact_event_id, entry.opened);
            });
        }
        if !self.early_opens.is_empty() {
            push_key(&mut out, "eo", false);
            push_flat_pairs(&mut out, self.early_opens.iter());
        }
        if self.streak != 0 {
            push_key(&mut out, "s", false);
            push_i64(&mut out, self.streak);
        }
        if let Some(block) = &self.unread_block {
            push_key(&mut out, "ub", false);
            push_unread_block(&mut out, block);
        }
        if !self.settled.is_empty() {
            push_key(&mut out, "sd", false);
            push_seq(&mut out, &self.settled, |out, entry| {
                push_mail(out, entry.deadline, &entry.contact_event_id, entry.streak);
            });
        }
        if let Some(block) = &self.unread_prior {
            push_key(&mut out, "up", false);
            push_unread_block(&mut out, block);
        }
        if self.emitted.iter().any(Option::is_some) {
            push_key(&mut out, "e", false);
            push_seq(&mut out, &self.emitted, |out, record| match record {
                None => out.push_str("null"),
                Some(record) => {
                    out.push('[');
                    push_i64(out, record.since);
                    out.push(',');
                    record.decision.pack(out);
                    out.push(']');
                }
            });
        }
        if self.trimmed != 0 {
            push_key(&mut out, "t", false);
            push_i64(&mut out, self.trimmed);
        }
        out.push('}');
        out
    }

    /// == CustomerState.from_bytes() (trim_due_ms starts at 0, as there).
    pub fn from_json(raw: &[u8]) -> Result<State, String> {
        let data: Value = serde_json::from_slice(raw).map_err(|error| error.to_string())?;
        let get = |key: &str| data.get(key).filter(|value| !value.is_null());
        let mut state = State::new(&as_string(data.get("c").ok_or("state without c")?)?);
        state.watermark_ms = match get("w") {
            Some(value) => Some(as_i64(value)?),
            None => None,
        };
        if let Some(logs) = get("l") {
            let logs = as_array(logs)?;
            for channel in 0..3 {
                state.logs[channel] = as_array(item(logs, channel)?)?.iter().map(as_i64).collect::<Result<_, _>>()?;
            }
        }
        for (id, seen_at) in flat_map_from(get("i"))? {
            state.ids.push(id, seen_at);
        }
        if let Some(hangups) = get("h") {
            state.hangups = as_array(hangups)?.iter().map(as_i64).collect::<Result<_, _>>()?;
        }
        state.conversation_ms = match get("cv") {
            Some(value) => Some(as_i64(value)?),
            None => None,
        };
        if let Some(complaints) = get("cp") {
            let items = as_array(complaints)?;
            for channel in 0..3 {
                state.complaints[channel] = as_opt_i64(item(items, channel)?)?;
            }
        }
        if let Some(opt_outs) = get("o") {
            let items = as_array(opt_outs)?;
            for channel in 0..3 {
                let fact = item(items, channel)?;
                if !fact.is_null() {
                    let parts = as_array(fact)?;
                    state.opt_outs[channel] = Some(OptOut {
                        at: as_i64(item(parts, 0)?)?,
                        opted_out: item(parts, 1)?.as_bool().ok_or("opt-out flag")?,
                        source: as_string(item(parts, 2)?)?,
                    });
                }
            }
        }
        if let Some(lifted) = get("lo") {
            for entry in as_array(lifted)? {
                let parts = as_array(entry)?;
                state.lifted_opt_outs.push(Lifted {
                    channel: as_i64(item(parts, 0)?)?,
                    since: as_i64(item(parts, 1)?)?,
                    lifted_at: as_i64(item(parts, 2)?)?,
                    source: as_string(item(parts, 3)?)?,
                });
            }
        }
        if let Some(signals) = get("ss") {
            for entry in as_array(signals)? {
                let parts = as_array(entry)?;
                state.superseded_signals.push([
                    as_i64(item(parts, 0)?)?,
                    as_i64(item(parts, 1)?)?,
                    as_i64(item(parts, 2)?)?,
                ]);
            }
        }
        if let Some(facts) = get("sf") {
            for entry in as_array(facts)? {
                let parts = as_array(entry)?;
                let kind = as_i64(item(parts, 0)?)?;
                let fact = if kind == 3 {
                    Fact::Zone(zone_from(item(parts, 1)?)?)
                } else {
                    Fact::Quiet(pair_from(item(parts, 1)?)?.ok_or("a null superseded fact")?)
                };
                state.superseded_facts.push((kind, fact, as_i64(item(parts, 2)?)?));
            }
        }
        if let Some(caps) = get("cc") {
            let items = as_array(caps)?;
            for scope in 0..4 {
                state.customer_caps[scope] = pair_from(item(items, scope)?)?;
            }
        }
        if let Some(quiet) = get("q") {
            let items = as_array(quiet)?;
            for channel in 0..3 {
                state.quiet[channel] = pair_from(item(items, channel)?)?;
            }
        }
        if let Some(zone) = get("tz") {
            state.timezone = Some(zone_from(zone)?);
        }
        if let Some(pending) = get("p") {
            for entry in as_array(pending)? {
                let parts = as_array(entry)?;
                state.pending.push_back(Pending {
                    deadline: as_i64(item(parts, 0)?)?,
                    contact_event_id: as_string(item(parts, 1)?)?,
                    opened: as_i64(item(parts, 2)?)?,
                });
            }
        }
        state.early_opens = flat_map_from(get("eo"))?;
        if let Some(streak) = get("s") {
            state.streak = as_i64(streak)?;
        }
        state.unread_block = match get("ub") {
            Some(value) => unread_block_from(value)?,
            None => None,
        };
        if let Some(settled) = get("sd") {
            for entry in as_array(settled)? {
                let parts = as_array(entry)?;
                state.settled.push_back(Settled {
                    deadline: as_i64(item(parts, 0)?)?,
                    contact_event_id: as_string(item(parts, 1)?)?,
                    streak: as_i64(item(parts, 2)?)?,
                });
            }
        }
        state.unread_prior = match get("up") {
            Some(value) => unread_block_from(value)?,
            None => None,
        };
        if let Some(emitted) = get("e") {
            let items = as_array(emitted)?;
            for channel in 0..3 {
                let record = item(items, channel)?;
                if !record.is_null() {
                    let parts = as_array(record)?;
                    state.emitted[channel] = Some(Box::new(Emitted {
                        since: as_i64(item(parts, 0)?)?,
                        decision: Decision::unpack(item(parts, 1)?)?,
                    }));
                }
            }
        }
        if let Some(trimmed) = get("t") {
            state.trimmed = as_i64(trimmed)?;
        }
        Ok(state)
    }
}
