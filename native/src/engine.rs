//! fatigue/engine.py's Guard for every event type but erasure (which the driver leaves to the Python core)
//! and for time passing (unread deadlines). Every function mirrors the Python function of the same name; the
//! comments there explain the rules, the ones here only what is particular to the port.

use std::borrow::Cow;

use crate::events::{Event, EventType, CATEGORIES, CHANNELS};
use crate::json::{push_i64, push_key, push_opt_str, push_str};
use crate::policy::{Policy, WindowRule};
use crate::state::{
    Decision, Emitted, Fact, Lifted, OptOut, Pair, Pending, Settled, State, UnreadBlock, Zone, SCOPE_ALL,
};
use crate::timeutil::{format_duration, push_ms};

pub const EMAIL: usize = 0;
pub const SMS: usize = 1;
pub const CALL: usize = 2;
const ALL_CHANNELS: [usize; 3] = [EMAIL, SMS, CALL];
const MAX_EVIDENCE_TIMESTAMPS: usize = 10;
const MAX_KEPT_FOR_GRACE: usize = 16;
const CONVERSATION_SIGNAL: i64 = 3;
const TIMEZONE_FACT: i64 = 3;
const TRIM_PERIOD_MS: i64 = 3_600_000;
const INDEFINITE: i128 = 1 << 62;
const NEVER: i64 = 1 << 62;

/// The local minute of the day of an instant in a time zone (the driver asks Python's zoneinfo, so the zone
/// data is the Python core's).
pub trait LocalTime {
    fn local_minute(&self, ts_ms: i64, zone: &str) -> i64;
}

pub struct EmittedDecision {
    pub json: String,
    pub block: bool,
    pub reason: String,
    pub channel: usize,
    pub until_ms: Option<i64>,
    pub decided_at_ms: i64,
}

pub struct EmittedViolation {
    pub json: String,
    pub kind: &'static str,
    pub channel: usize,
}

pub struct Rejected {
    pub reason: &'static str,
    pub detail: String,
}

#[derive(Default)]
pub struct Step {
    pub decisions: Vec<EmittedDecision>,
    pub violations: Vec<EmittedViolation>,
}

/// The contacts a window's evidence lists: most evaluations emit nothing (the block in force is unchanged), so
/// a channel's are read from its log only when the evidence is rendered (the log does not change in between).
enum Newest {
    /// the newest min(limit, 10) of that channel's log
    Log(usize),
    /// already the ones to list (all channels together)
    Listed(Vec<i64>),
}

enum Data<'p> {
    Window {
        count: usize,
        limit: usize,
        window_text: Cow<'p, str>,
        start: i64,
        newest: Newest,
    },
    CustomerWindow {
        count: usize,
        limit: usize,
        window_text: String,
        start: i64,
        newest: Newest,
        set_at: i64,
    },
    Preference {
        set_at: i64,
    },
    OptOut {
        at: i64,
        source: String,
    },
    Complaint {
        at: i64,
        channel: usize,
    },
    Unread {
        since: i64,
        streak: i64,
        cause_event_id: String,
    },
    /// state.hangups[first..=last]
    Hangups {
        first: usize,
        last: usize,
        window_text: &'p str,
    },
    Conversation {
        at: i64,
    },
}

struct Candidate<'p> {
    key: i128,
    until: Option<i64>,
    reason: &'static str,
    rule_id: Cow<'p, str>,
    text: Cow<'p, str>,
    data: Data<'p>,
}

fn sort_key(until: Option<i64>, order: i128) -> i128 {
    -(until.map_or(INDEFINITE, i128::from)) * 16 + order
}

fn bisect_right(values: &[i64], x: i64) -> usize {
    values.partition_point(|&value| value <= x)
}

fn insort(values: &mut Vec<i64>, x: i64) {
    let at = bisect_right(values, x);
    values.insert(at, x);
}

/// A policy cap reached: blocked until `until` (rule order 6: all channels, 7: one channel).
fn window_candidate<'p>(
    rule: &'p WindowRule,
    reason: &'static str,
    order: i128,
    until: i64,
    count: usize,
    start: i64,
    newest: Newest,
) -> Candidate<'p> {
    Candidate {
        key: sort_key(Some(until), order),
        until: Some(until),
        reason,
        rule_id: Cow::Borrowed(&rule.rule_id),
        text: Cow::Borrowed(&rule.text),
        data: Data::Window { count, limit: rule.limit, window_text: Cow::Borrowed(&rule.window_text), start, newest },
    }
}

fn keep_last(mut values: Vec<i64>, n: usize) -> Vec<i64> {
    values.drain(..values.len().saturating_sub(n));
    values
}

fn trim_due_by(state: &mut State, at: i64) {
    if at < state.trim_due_ms {
        state.trim_due_ms = at;
    }
}

/// A fact whose latest version by event time wins (opt-outs, customer caps, quiet hours).
trait Versioned {
    fn at(&self) -> i64;
    fn same_value(&self, other: &Self) -> bool;
}

impl Versioned for OptOut {
    fn at(&self) -> i64 {
        self.at
    }

    fn same_value(&self, other: &Self) -> bool {
        self.opted_out == other.opted_out && self.source == other.source
    }
}

impl Versioned for Pair {
    fn at(&self) -> i64 {
        self.at
    }

    fn same_value(&self, other: &Self) -> bool {
        self.first == other.first && self.second == other.second
    }
}

/// _set_fact: the latest by event time wins (ties: the later arrival); true when the value changed.
fn set_fact<T: Versioned>(slot: &mut Option<T>, fact: T) -> bool {
    if let Some(current) = slot {
        if fact.at() < current.at() {
            return false;
        }
        if current.same_value(&fact) {
            if fact.at() > current.at() {
                *current = fact;
            }
            return false;
        }
    }
    *slot = Some(fact);
    true
}

fn opt_out_reason(source: &str) -> &'static str {
    match source {
        "unsubscribe" => "unsubscribe",
        "sms_stop" => "sms_stop",
        _ => "opt_out",
    }
}

fn opt_out_text(source: &str, channel: usize) -> String {
    match source {
        "unsubscribe" => format!("customer unsubscribed from {}", CHANNELS[channel]),
        "sms_stop" => "customer replied STOP to an SMS".to_owned(),
        _ => format!("customer opted out of {}", CHANNELS[channel]),
    }
}

fn push_ms_str(out: &mut String, ms: i64) {
    out.push('"');
    push_ms(out, ms);
    out.push('"');
}

fn push_opt_ms_str(out: &mut String, ms: Option<i64>) {
    match ms {
        Some(ms) => push_ms_str(out, ms),
        None => out.push_str("null"),
    }
}

fn push_ms_list(out: &mut String, values: &[i64]) {
    out.push('[');
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_ms_str(out, *value);
    }
    out.push(']');
}

fn merged_window(logs: &[Vec<i64>; 3], now: i64, window_ms: i64, limit: usize) -> Option<(usize, Vec<i64>)> {
    let kept = logs[0].len() + logs[1].len() + logs[2].len();
    if kept < limit {
        return None;
    }
    let start = now - window_ms;
    let firsts = [bisect_right(&logs[0], start), bisect_right(&logs[1], start), bisect_right(&logs[2], start)];
    let count = kept - firsts[0] - firsts[1] - firsts[2];
    if count < limit {
        return None;
    }
    let mut newest = Vec::with_capacity(limit * 3);
    for (log, first) in logs.iter().zip(firsts) {
        let from = first.max(log.len().saturating_sub(limit));
        newest.extend_from_slice(&log[from..]);
    }
    newest.sort_unstable();
    newest.drain(..newest.len() - limit);
    Some((count, newest))
}

fn window_at(logs: &[&Vec<i64>], at: i64, window_ms: i64) -> Vec<i64> {
    let start = at - window_ms;
    let mut inside = Vec::new();
    for log in logs {
        inside.extend_from_slice(&log[bisect_right(log, start)..bisect_right(log, at)]);
    }
    if logs.len() > 1 {
        inside.sort_unstable();
    }
    inside
}

fn fact_at(superseded: &[(i64, Fact, i64)], kind: i64, at: i64) -> Option<&Fact> {
    let mut found: Option<&Fact> = None;
    for (entry_kind, fact, _) in superseded {
        if *entry_kind == kind && fact.at() <= at && found.is_none_or(|known| fact.at() >= known.at()) {
            found = Some(fact);
        }
    }
    found
}

pub struct Engine {
    pub policy: Policy,
}

impl Engine {
    pub fn new(policy: Policy) -> Engine {
        Engine { policy }
    }

    // ------------------------------------------------------------------ entry points

    /// Guard.process for a contact, call_ended or email_opened. `state` None: a new customer, whose state is
    /// returned.
    pub fn process(
        &self,
        state: Option<&mut State>,
        event: &Event,
        clock: &dyn LocalTime,
    ) -> Result<(Option<State>, Step), Rejected> {
        let ts = event.ts_ms;
        let mut step = Step::default();
        let mut created: Option<State> = None;
        let state: &mut State = match state {
            None => {
                let mut fresh = State::new(&event.customer_id);
                fresh.watermark_ms = Some(ts);
                fresh.ids.push(event.event_id.clone(), ts);
                created.insert(fresh)
            }
            Some(existing) => {
                if existing.ids.contains(&event.event_id) {
                    return Err(Rejected { reason: "duplicate", detail: "event_id already processed".to_owned() });
                }
                let watermark = existing.watermark_ms;
                if let Some(watermark) = watermark {
                    if ts < watermark - self.policy.late_grace_ms {
                        return Err(Rejected {
                            reason: "late",
                            detail: format!(
                                "more than {} older than the customer's newest event",
                                self.policy.late_grace_text
                            ),
                        });
                    }
                }
                if watermark.is_none_or(|watermark| ts > watermark) {
                    if !existing.pending.is_empty() {
                        self.finalize_deadlines(existing, ts, &mut step.decisions);
                    }
                    existing.watermark_ms = Some(ts);
                    if watermark
                        .is_none_or(|watermark| ts.div_euclid(TRIM_PERIOD_MS) != watermark.div_euclid(TRIM_PERIOD_MS))
                    {
                        self.trim(existing, ts);
                    }
                }
                existing.ids.push(event.event_id.clone(), ts);
                if existing.ids.len() > self.policy.max_event_ids {
                    existing.ids.pop_oldest();
                    existing.trimmed += 1;
                }
                existing
            }
        };
        match event.kind {
            EventType::Contact => self.on_contact(state, event, &mut step, clock),
            EventType::CallEnded => self.on_call_ended(state, event, &mut step),
            EventType::EmailOpened => self.on_email_opened(state, event, &mut step),
            EventType::Unsubscribe => self.on_opt_out(state, event, event.channel, "unsubscribe", &mut step),
            EventType::SmsStop => self.on_opt_out(state, event, SMS, "sms_stop", &mut step),
            EventType::Complaint => self.on_complaint(state, event, &mut step),
            EventType::Preference => self.on_preference(state, event, &mut step),
        }
        Ok((created, step))
    }

    /// Guard.advance: fires unread deadlines before `now_ms`.
    pub fn advance(&self, state: &mut State, now_ms: i64) -> Vec<EmittedDecision> {
        let mut decisions = Vec::new();
        if !state.pending.is_empty() {
            self.finalize_deadlines(state, now_ms, &mut decisions);
        }
        decisions
    }

    // ------------------------------------------------------------------ event handlers

    fn on_contact(&self, state: &mut State, event: &Event, step: &mut Step, clock: &dyn LocalTime) {
        let policy = &self.policy;
        let channel = event.channel;
        if !policy.counted[event.category] {
            return;
        }
        let ts = event.ts_ms;
        let watermark = state.watermark_ms.expect("set by process");
        let late = ts < watermark;
        if late || state.emitted[channel].is_some() || state.quiet[channel].is_some() || policy.quiet_hours.is_some() {
            self.check_violations(state, event, channel, late, &mut step.violations, clock);
        }
        insort(&mut state.logs[channel], ts);
        if ts + policy.retention_ms < state.trim_due_ms {
            state.trim_due_ms = ts + policy.retention_ms;
        }
        if state.logs[channel].len() > policy.max_contacts {
            state.logs[channel].remove(0);
            state.trimmed += 1;
        }
        if let Some(unread) = &policy.unread {
            if channel == EMAIL && event.category == 0 {
                let deadline = ts + unread.deadline_ms;
                let mut opened = 0;
                if !state.early_opens.is_empty() {
                    let opened_at = state.early_opens.shift_remove(&event.event_id);
                    opened = i64::from(opened_at.is_some_and(|at| at <= deadline));
                }
                let entry = Pending { deadline, contact_event_id: event.event_id.clone(), opened };
                let at = state.pending.partition_point(|known| {
                    (known.deadline, known.contact_event_id.as_str(), known.opened)
                        <= (entry.deadline, entry.contact_event_id.as_str(), entry.opened)
                });
                state.pending.insert(at, entry);
                if state.pending.len() > policy.max_contacts {
                    state.pending.pop_front().expect("not empty");
                    state.trimmed += 1;
                }
            }
        }
        let logs = &state.logs;
        if state.emitted[channel].is_none()
            && logs[channel].len() < policy.min_channel_limit[channel]
            && logs[0].len() + logs[1].len() + logs[2].len() < policy.min_global_limit
            && state.customer_caps[channel].is_none()
            && state.customer_caps[SCOPE_ALL].is_none()
        {
            return;
        }
        let now = watermark;
        let shared = self.shared_candidates(state, now);
        let channels: &[usize] = if shared.is_empty() { &[channel] } else { &ALL_CHANNELS };
        self.evaluate(state, channels, now, &event.event_id, ts, &mut step.decisions, "lifted", Some(shared));
    }

    fn on_call_ended(&self, state: &mut State, event: &Event, step: &mut Step) {
        if !event.answered {
            return;
        }
        let policy = &self.policy;
        let ts = event.ts_ms;
        let mut changed = false;
        if !policy.hangup_rules.is_empty() && event.duration_s < policy.hangup_threshold_s {
            insort(&mut state.hangups, ts);
            trim_due_by(state, ts + policy.hangup_retention_ms);
            if state.hangups.len() > policy.max_signals {
                state.hangups.remove(0);
                state.trimmed += 1;
            }
            changed = true;
        }
        if let Some(conversation) = &policy.conversation {
            if event.duration_s >= conversation.min_duration_s {
                match state.conversation_ms {
                    Some(talked_at) if ts < talked_at => {
                        self.remember_superseded(state, CONVERSATION_SIGNAL, ts, talked_at);
                    }
                    Some(talked_at) if ts == talked_at => {}
                    talked_at => {
                        if let Some(talked_at) = talked_at {
                            self.remember_superseded(state, CONVERSATION_SIGNAL, talked_at, ts);
                        }
                        state.conversation_ms = Some(ts);
                        trim_due_by(state, ts + conversation.block_ms);
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.evaluate_event(state, &[CALL], event, step);
        }
    }

    fn on_email_opened(&self, state: &mut State, event: &Event, step: &mut Step) {
        if event.machine {
            return;
        }
        let reference = event.reference.as_deref().unwrap_or("");
        let ts = event.ts_ms;
        let mut matched = false;
        for entry in state.pending.iter_mut() {
            if entry.contact_event_id == reference {
                if ts <= entry.deadline {
                    entry.opened = 1;
                }
                matched = true;
                break;
            }
        }
        if !matched && !self.reopen_settled(state, event, step) && self.policy.unread.is_some() {
            self.remember_early_open(state, event);
        }
        while state.pending.front().is_some_and(|entry| entry.opened != 0) {
            let entry = state.pending.pop_front().expect("not empty");
            state.streak = 0;
            self.remember_settled(state, entry.deadline, entry.contact_event_id);
        }
    }

    /// _on_unsubscribe and _on_sms_stop
    fn on_opt_out(&self, state: &mut State, event: &Event, channel: usize, source: &str, step: &mut Step) {
        let fact = OptOut { at: event.ts_ms, opted_out: true, source: source.to_owned() };
        if set_fact(&mut state.opt_outs[channel], fact) {
            self.evaluate_event(state, &[channel], event, step);
        }
    }

    fn on_complaint(&self, state: &mut State, event: &Event, step: &mut Step) {
        if self.policy.complaint.is_none() {
            return;
        }
        let channel = event.channel;
        let ts = event.ts_ms;
        match state.complaints[channel] {
            Some(previous) if ts < previous => {
                self.remember_superseded(state, channel as i64, ts, previous);
            }
            Some(previous) if ts == previous => {}
            previous => {
                if let Some(previous) = previous {
                    self.remember_superseded(state, channel as i64, previous, ts);
                }
                state.complaints[channel] = Some(ts);
                trim_due_by(state, ts + self.policy.complaint_retention_ms);
                self.evaluate_event(state, &ALL_CHANNELS, event, step);
            }
        }
    }

    fn on_preference(&self, state: &mut State, event: &Event, step: &mut Step) {
        let Some(prefs) = &event.prefs else { return };
        let ts = event.ts_ms;
        let scope: &[usize] = match &prefs.channel {
            None => &ALL_CHANNELS,
            Some(channel) => std::slice::from_ref(channel),
        };
        let mut affected = [false; 3];
        if let Some(opted_out) = prefs.opt_out {
            for &channel in scope {
                let previous = state.opt_outs[channel].clone();
                let fact = OptOut { at: ts, opted_out, source: "opt_out".to_owned() };
                if set_fact(&mut state.opt_outs[channel], fact) {
                    affected[channel] = true;
                    if let Some(previous) = previous.filter(|previous| previous.opted_out && !opted_out) {
                        state.lifted_opt_outs.push(Lifted {
                            channel: channel as i64,
                            since: previous.at,
                            lifted_at: ts,
                            source: previous.source,
                        });
                        self.kept_for_late_grace(state, ts);
                        if state.lifted_opt_outs.len() > MAX_KEPT_FOR_GRACE {
                            state.lifted_opt_outs.remove(0);
                            state.trimmed += 1;
                        }
                    }
                }
            }
        }
        if let Some(cap) = prefs.max_contacts {
            let fact = Pair { at: ts, first: cap.map(|cap| cap.0), second: cap.map(|cap| cap.1) };
            let cap_scope = prefs.channel.unwrap_or(SCOPE_ALL);
            if set_fact(&mut state.customer_caps[cap_scope], fact) {
                state.trim_due_ms = 0; // a customer's cap window sets how long contacts are kept
                for &channel in scope {
                    affected[channel] = true;
                }
            }
        }
        if let Some(hours) = prefs.quiet_hours {
            for &channel in scope {
                let fact = Pair { at: ts, first: hours.map(|hours| hours.0), second: hours.map(|hours| hours.1) };
                let current = state.quiet[channel].clone().map(Fact::Quiet);
                self.keep_superseded_fact(state, channel as i64, current, Fact::Quiet(fact.clone()));
                set_fact(&mut state.quiet[channel], fact);
            }
        }
        if let Some(zone) = &prefs.timezone {
            let fact = Zone { at: ts, name: zone.clone() };
            let current = state.timezone.clone().map(Fact::Zone);
            self.keep_superseded_fact(state, TIMEZONE_FACT, current, Fact::Zone(fact.clone()));
            if state.timezone.as_ref().is_none_or(|known| ts >= known.at) {
                state.timezone = Some(fact);
            }
        }
        if affected.iter().any(|&changed| changed) {
            let lift_reason = if prefs.opt_out == Some(false) { "opt_in" } else { "customer_cap_changed" };
            let now = state.watermark_ms.expect("set by process");
            let channels: Vec<usize> = ALL_CHANNELS.into_iter().filter(|&channel| affected[channel]).collect();
            self.evaluate(state, &channels, now, &event.event_id, ts, &mut step.decisions, lift_reason, None);
        }
    }

    /// _keep_superseded_fact: the earlier of `current` and `fact` is kept for the late grace after the later one.
    fn keep_superseded_fact(&self, state: &mut State, kind: i64, current: Option<Fact>, fact: Fact) {
        let Some(current) = current else { return };
        if fact.at() == current.at() {
            return;
        }
        let (older, newer_at) = if fact.at() > current.at() { (current, fact.at()) } else { (fact, current.at()) };
        state.superseded_facts.push((kind, older, newer_at));
        self.kept_for_late_grace(state, newer_at);
        if state.superseded_facts.len() > MAX_KEPT_FOR_GRACE {
            state.superseded_facts.remove(0);
            state.trimmed += 1;
        }
    }

    fn remember_superseded(&self, state: &mut State, kind: i64, at: i64, superseded_at: i64) {
        state.superseded_signals.push([kind, at, superseded_at]);
        self.kept_for_late_grace(state, superseded_at);
        if state.superseded_signals.len() > MAX_KEPT_FOR_GRACE {
            state.superseded_signals.remove(0);
            state.trimmed += 1;
        }
    }

    fn kept_for_late_grace(&self, state: &mut State, ended_at: i64) {
        trim_due_by(state, ended_at + self.policy.late_grace_ms);
    }

    fn remember_early_open(&self, state: &mut State, event: &Event) {
        let reference = event.reference.clone().unwrap_or_default();
        let known = state.early_opens.get(&reference).copied();
        if known.is_none_or(|known| event.ts_ms < known) {
            state.early_opens.insert(reference, event.ts_ms);
        }
        if state.early_opens.len() > self.policy.max_event_ids {
            state.early_opens.shift_remove_index(0);
            state.trimmed += 1;
        }
    }

    fn reopen_settled(&self, state: &mut State, event: &Event, step: &mut Step) -> bool {
        let reference = event.reference.as_deref().unwrap_or("");
        let Some(index) = state.settled.iter().position(|entry| entry.contact_event_id == reference) else {
            return false;
        };
        let Some(unread) = &self.policy.unread else {
            return true;
        };
        let entry = &mut state.settled[index];
        if entry.streak == 0 || event.ts_ms > entry.deadline {
            return true;
        }
        entry.streak = 0;
        let mut streak = 0;
        for later in state.settled.range_mut(index + 1..) {
            if later.streak != 0 {
                streak += 1;
                later.streak = streak;
            } else {
                streak = 0;
            }
        }
        state.streak = streak;
        let mut block = state.unread_prior.clone();
        for entry in &state.settled {
            if entry.streak >= unread.streak {
                block = Some(UnreadBlock {
                    since: entry.deadline,
                    until: entry.deadline + unread.block_ms,
                    cause_event_id: entry.contact_event_id.clone(),
                    streak: entry.streak,
                });
            }
        }
        if block != state.unread_block {
            let until = block.as_ref().map(|block| block.until);
            state.unread_block = block;
            if let Some(until) = until {
                trim_due_by(state, until);
            }
            self.evaluate_event(state, &[EMAIL], event, step);
        }
        true
    }

    fn remember_settled(&self, state: &mut State, deadline: i64, contact_event_id: String) {
        let streak = state.streak;
        state.settled.push_back(Settled { deadline, contact_event_id, streak });
        trim_due_by(state, deadline + self.policy.late_grace_ms + 1);
        if state.settled.len() > self.policy.max_contacts {
            let entry = state.settled.pop_front().expect("not empty");
            self.forget_settled(state, &entry);
            state.trimmed += 1;
        }
    }

    fn forget_settled(&self, state: &mut State, entry: &Settled) {
        if let Some(unread) = &self.policy.unread {
            if entry.streak >= unread.streak {
                state.unread_prior = Some(UnreadBlock {
                    since: entry.deadline,
                    until: entry.deadline + unread.block_ms,
                    cause_event_id: entry.contact_event_id.clone(),
                    streak: entry.streak,
                });
                trim_due_by(state, entry.deadline + unread.block_ms);
            }
        }
    }

    // ------------------------------------------------------------------ evaluation

    fn evaluate_event(&self, state: &mut State, channels: &[usize], event: &Event, step: &mut Step) {
        let now = state.watermark_ms.expect("set by process");
        self.evaluate(state, channels, now, &event.event_id, event.ts_ms, &mut step.decisions, "lifted", None);
    }

    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        state: &mut State,
        channels: &[usize],
        now: i64,
        cause_event_id: &str,
        cause_ms: i64,
        decisions: &mut Vec<EmittedDecision>,
        lift_reason: &str,
        shared: Option<Vec<Candidate<'_>>>,
    ) {
        let shared = match shared {
            Some(shared) => shared,
            None => self.shared_candidates(state, now),
        };
        let mut shared_rendered: Vec<Option<String>> = vec![None; shared.len()];
        let late_grace_ms = self.policy.late_grace_ms;
        for &channel in channels {
            let own = self.candidates(state, channel, now);
            let previous_in_force = state.emitted[channel].as_ref().is_some_and(|record| {
                record.decision.block && record.decision.until_ms.is_none_or(|until| until > now)
            });
            if own.is_empty() && shared.is_empty() {
                if previous_in_force {
                    let record = state.emitted[channel].as_ref().expect("in force");
                    let (allow, evidence) = self.allow(&record.decision, lift_reason, cause_event_id, cause_ms);
                    decisions.push(EmittedDecision {
                        json: allow.to_json(&state.customer_id, channel, &evidence),
                        block: false,
                        reason: allow.reason.clone(),
                        channel,
                        until_ms: allow.until_ms,
                        decided_at_ms: allow.decided_at_ms,
                    });
                    state.emitted[channel] = Some(Box::new(Emitted { since: cause_ms, decision: allow }));
                    trim_due_by(state, cause_ms + late_grace_ms + 1);
                } else if let Some(record) = &state.emitted[channel] {
                    if record.decision.block
                        && record.decision.until_ms.is_some_and(|until| until + late_grace_ms <= now)
                    {
                        state.emitted[channel] = None;
                    }
                }
                continue;
            }
            // (index into own, or own.len() + index into shared), in the stable order of the sort by key
            let key_of = |index: usize| {
                if index < own.len() {
                    own[index].key
                } else {
                    shared[index - own.len()].key
                }
            };
            let total = own.len() + shared.len();
            let mut on_stack = [0usize; 16];
            let mut on_heap: Vec<usize> = Vec::new();
            let order: &mut [usize] = if total <= on_stack.len() {
                &mut on_stack[..total]
            } else {
                on_heap.resize(total, 0);
                &mut on_heap
            };
            for (position, slot) in order.iter_mut().enumerate() {
                *slot = position;
            }
            if total > 1 {
                order.sort_by_key(|&index| key_of(index)); // stable: equal keys keep the order found
            }
            let candidate_at = |index: usize| if index < own.len() { &own[index] } else { &shared[index - own.len()] };
            let winner = candidate_at(order[0]);
            if previous_in_force {
                let previous = &state.emitted[channel].as_ref().expect("in force").decision;
                if previous.until_ms == winner.until
                    && previous.rule_id == winner.rule_id.as_ref()
                    && previous.reason == winner.reason
                {
                    continue;
                }
            }
            let mut evidence = String::with_capacity(1024);
            evidence.push_str("{\"rules\":[");
            for (position, &index) in order.iter().enumerate() {
                if position > 0 {
                    evidence.push(',');
                }
                if index < own.len() {
                    render(&own[index], state, &mut evidence);
                } else {
                    let slot = &mut shared_rendered[index - own.len()];
                    if slot.is_none() {
                        let mut text = String::new();
                        render(&shared[index - own.len()], state, &mut text);
                        *slot = Some(text);
                    }
                    evidence.push_str(slot.as_deref().unwrap_or(""));
                }
            }
            evidence.push_str("]}");
            let suggest = if (winner.reason == "short_hangups" && self.policy.hangup_suggest)
                || (winner.reason == "unread" && self.policy.unread_suggest)
            {
                Some(self.suggest(state, channel, now).map(str::to_owned))
            } else {
                None
            };
            let decision = Decision {
                block: true,
                reason: winner.reason.to_owned(),
                rule: winner.text.clone().into_owned(),
                rule_id: winner.rule_id.clone().into_owned(),
                until_ms: winner.until,
                policy_version: self.policy.version.clone(),
                decided_at_ms: cause_ms,
                cause_event_id: cause_event_id.to_owned(),
                suggest,
            };
            let since = match (&state.emitted[channel], previous_in_force) {
                (Some(record), true) => record.since,
                _ => cause_ms,
            };
            if let Some(until) = winner.until {
                trim_due_by(state, until + late_grace_ms);
            }
            decisions.push(EmittedDecision {
                json: decision.to_json(&state.customer_id, channel, &evidence),
                block: true,
                reason: decision.reason.clone(),
                channel,
                until_ms: decision.until_ms,
                decided_at_ms: decision.decided_at_ms,
            });
            state.emitted[channel] = Some(Box::new(Emitted { since, decision }));
        }
    }

    fn candidates(&self, state: &State, channel: usize, now: i64) -> Vec<Candidate<'_>> {
        let policy = &self.policy;
        let mut found = Vec::new();
        if let Some(opt_out) = &state.opt_outs[channel] {
            if opt_out.opted_out {
                found.push(Candidate {
                    key: sort_key(None, 0),
                    until: None,
                    reason: opt_out_reason(&opt_out.source),
                    rule_id: Cow::Owned(format!("opt_out.{}", opt_out.source)),
                    text: Cow::Owned(opt_out_text(&opt_out.source, channel)),
                    data: Data::OptOut { at: opt_out.at, source: opt_out.source.clone() },
                });
            }
        }
        if let Some(complaint) = &policy.complaint {
            if state.complaints.iter().any(|at| at.is_some_and(|at| at != 0)) {
                for other in ALL_CHANNELS {
                    let Some(complained_at) = state.complaints[other] else { continue };
                    let same = other == channel;
                    let until = complained_at
                        + if same { complaint.channel_block_ms } else { complaint.other_channels_block_ms };
                    if until > now {
                        found.push(Candidate {
                            key: sort_key(Some(until), 1),
                            until: Some(until),
                            reason: "complaint",
                            rule_id: Cow::Owned(format!(
                                "{}.{}",
                                complaint.rule_id,
                                if same { "channel" } else { "other_channels" }
                            )),
                            text: Cow::Borrowed(&complaint.texts[other][channel]),
                            data: Data::Complaint { at: complained_at, channel: other },
                        });
                    }
                }
            }
        }
        if let Some(cap) = &state.customer_caps[channel] {
            if let (Some(limit), Some(window_ms)) = (cap.first, cap.second) {
                if let Some(candidate) = self.customer_cap(state, channel, cap.at, limit, window_ms, now) {
                    found.push(candidate);
                }
            }
        }
        if channel == CALL {
            if !state.hangups.is_empty() || state.conversation_ms.is_some() {
                self.call_candidates(state, now, &mut found);
            }
        } else if channel == EMAIL {
            if let Some(block) = &state.unread_block {
                if block.until > now {
                    let (rule_id, text) = match &policy.unread {
                        Some(unread) => (Cow::Borrowed(unread.rule_id.as_str()), Cow::Borrowed(unread.text.as_str())),
                        None => (Cow::Borrowed("unread"), Cow::Borrowed("email: unread in a row")),
                    };
                    found.push(Candidate {
                        key: sort_key(Some(block.until), 5),
                        until: Some(block.until),
                        reason: "unread",
                        rule_id,
                        text,
                        data: Data::Unread {
                            since: block.since,
                            streak: block.streak,
                            cause_event_id: block.cause_event_id.clone(),
                        },
                    });
                }
            }
        }
        let log = &state.logs[channel];
        let kept = log.len();
        for rule in &policy.channel_caps[channel] {
            if kept < rule.limit {
                continue;
            }
            let start = now - rule.window_ms;
            let count = kept - bisect_right(log, start);
            if count < rule.limit {
                continue;
            }
            let until = log[kept - rule.limit] + rule.window_ms;
            found.push(window_candidate(rule, "cap", 7, until, count, start, Newest::Log(channel)));
        }
        found
    }

    fn shared_candidates(&self, state: &State, now: i64) -> Vec<Candidate<'_>> {
        let mut found = Vec::new();
        for rule in &self.policy.global_caps {
            if let Some((count, newest)) = merged_window(&state.logs, now, rule.window_ms, rule.limit) {
                let until = newest[0] + rule.window_ms;
                let listed = Newest::Listed(keep_last(newest, rule.limit.min(MAX_EVIDENCE_TIMESTAMPS)));
                found.push(window_candidate(rule, "global_cap", 6, until, count, now - rule.window_ms, listed));
            }
        }
        if let Some(cap) = &state.customer_caps[SCOPE_ALL] {
            if let (Some(limit), Some(window_ms)) = (cap.first, cap.second) {
                if let Some(candidate) = self.customer_cap(state, SCOPE_ALL, cap.at, limit, window_ms, now) {
                    found.push(candidate);
                }
            }
        }
        found
    }

    fn call_candidates<'p>(&'p self, state: &State, now: i64, found: &mut Vec<Candidate<'p>>) {
        let hangups = &state.hangups;
        for rule in &self.policy.hangup_rules {
            for index in (0..hangups.len()).rev() {
                let at = hangups[index];
                let until = at + rule.block_ms;
                if until <= now {
                    break;
                }
                let first = bisect_right(&hangups[..=index], at - rule.window_ms);
                let count = index + 1 - first;
                if count >= rule.count {
                    found.push(Candidate {
                        key: sort_key(Some(until), 3),
                        until: Some(until),
                        reason: "short_hangups",
                        rule_id: Cow::Borrowed(&rule.rule_id),
                        text: Cow::Borrowed(&rule.text),
                        data: Data::Hangups { first, last: index, window_text: &rule.window_text },
                    });
                    break;
                }
            }
        }
        if let (Some(conversation), Some(talked_at)) = (&self.policy.conversation, state.conversation_ms) {
            let until = talked_at + conversation.block_ms;
            if until > now {
                found.push(Candidate {
                    key: sort_key(Some(until), 4),
                    until: Some(until),
                    reason: "conversation",
                    rule_id: Cow::Borrowed(&conversation.rule_id),
                    text: Cow::Borrowed(&conversation.text),
                    data: Data::Conversation { at: talked_at },
                });
            }
        }
    }

    fn customer_cap(
        &self,
        state: &State,
        scope: usize,
        set_at: i64,
        limit: i64,
        window_ms: i64,
        now: i64,
    ) -> Option<Candidate<'_>> {
        let name = if scope == SCOPE_ALL { "all channels" } else { CHANNELS[scope] };
        let window_text = format_duration(window_ms);
        let text = format!("customer: {name} <= {limit} per {window_text}");
        let rule_id = format!("customer_cap.{}", if scope == SCOPE_ALL { "all" } else { CHANNELS[scope] });
        if limit == 0 {
            return Some(Candidate {
                key: sort_key(None, 2),
                until: None,
                reason: "customer_cap",
                rule_id: Cow::Owned(rule_id),
                text: Cow::Owned(text),
                data: Data::Preference { set_at },
            });
        }
        let limit = usize::try_from(limit).ok()?;
        let (count, until, newest) = if scope == SCOPE_ALL {
            let (count, newest) = merged_window(&state.logs, now, window_ms, limit)?;
            let until = newest[0] + window_ms;
            (count, until, Newest::Listed(keep_last(newest, limit.min(MAX_EVIDENCE_TIMESTAMPS))))
        } else {
            let log = &state.logs[scope];
            if log.len() < limit {
                return None;
            }
            let count = log.len() - bisect_right(log, now - window_ms);
            if count < limit {
                return None;
            }
            (count, log[log.len() - limit] + window_ms, Newest::Log(scope))
        };
        Some(Candidate {
            key: sort_key(Some(until), 2),
            until: Some(until),
            reason: "customer_cap",
            rule_id: Cow::Owned(rule_id),
            text: Cow::Owned(text),
            data: Data::CustomerWindow { count, limit, window_text, start: now - window_ms, newest, set_at },
        })
    }

    // ------------------------------------------------------------------ unread deadlines

    fn finalize_deadlines(&self, state: &mut State, before_ms: i64, decisions: &mut Vec<EmittedDecision>) {
        while state.pending.front().is_some_and(|entry| entry.opened != 0 || entry.deadline < before_ms) {
            let Pending { deadline, contact_event_id, opened } = state.pending.pop_front().expect("not empty");
            state.streak = if opened != 0 { 0 } else { state.streak + 1 };
            self.remember_settled(state, deadline, contact_event_id.clone());
            if opened != 0 {
                continue;
            }
            if let Some(unread) = &self.policy.unread {
                if state.streak >= unread.streak {
                    state.unread_block = Some(UnreadBlock {
                        since: deadline,
                        until: deadline + unread.block_ms,
                        cause_event_id: contact_event_id.clone(),
                        streak: state.streak,
                    });
                    trim_due_by(state, deadline + unread.block_ms);
                    self.evaluate(state, &[EMAIL], deadline, &contact_event_id, deadline, decisions, "lifted", None);
                }
            }
        }
    }

    // ------------------------------------------------------------------ violations

    fn check_violations(
        &self,
        state: &State,
        event: &Event,
        channel: usize,
        late: bool,
        violations: &mut Vec<EmittedViolation>,
        clock: &dyn LocalTime,
    ) {
        let ts = event.ts_ms;
        if late {
            if let Some((reason, rule_id, until)) = self.block_at(state, channel, ts) {
                violations.push(self.violation(event, "blocked", reason, &rule_id, until));
            }
        } else if let Some(record) = &state.emitted[channel] {
            if record.since <= ts && record.decision.blocking(ts) {
                let decision = &record.decision;
                violations.push(self.violation(
                    event,
                    "blocked",
                    &decision.reason,
                    &decision.rule_id,
                    decision.until_ms,
                ));
            }
        }
        if let Some(rule_id) = self.quiet_rule_at(state, channel, ts, clock) {
            violations.push(self.violation(event, "quiet_hours", "quiet_hours", &rule_id, None));
        }
    }

    fn block_at(&self, state: &State, channel: usize, at: i64) -> Option<(&'static str, String, Option<i64>)> {
        let policy = &self.policy;
        let mut best: Option<(i128, &'static str, String, Option<i64>)> = None;
        let mut offer = |until: Option<i64>, order: i128, reason: &'static str, rule_id: &dyn Fn() -> String| {
            if until.is_some_and(|until| until <= at) {
                return;
            }
            let key = sort_key(until, order);
            if best.as_ref().is_none_or(|known| key < known.0) {
                best = Some((key, reason, rule_id(), until));
            }
        };
        if let Some(opt_out) = &state.opt_outs[channel] {
            if opt_out.opted_out && opt_out.at <= at {
                offer(None, 0, opt_out_reason(&opt_out.source), &|| format!("opt_out.{}", opt_out.source));
            }
        }
        for lifted in &state.lifted_opt_outs {
            if lifted.channel == channel as i64 && lifted.since <= at && at < lifted.lifted_at {
                offer(None, 0, opt_out_reason(&lifted.source), &|| format!("opt_out.{}", lifted.source));
            }
        }
        if let Some(complaint) = &policy.complaint {
            let mut complained: Vec<(usize, i64)> = state
                .complaints
                .iter()
                .enumerate()
                .filter_map(|(other, at_)| at_.filter(|&then| then <= at).map(|then| (other, then)))
                .collect();
            for signal in &state.superseded_signals {
                if signal[0] != CONVERSATION_SIGNAL && signal[1] <= at {
                    complained.push((signal[0] as usize, signal[1]));
                }
            }
            for (other, complained_at) in complained {
                let same = other == channel;
                let block_ms = if same { complaint.channel_block_ms } else { complaint.other_channels_block_ms };
                let kind = if same { "channel" } else { "other_channels" };
                offer(Some(complained_at + block_ms), 1, "complaint", &|| format!("{}.{kind}", complaint.rule_id));
            }
        }
        for scope in [channel, SCOPE_ALL] {
            let Some(cap) = &state.customer_caps[scope] else { continue };
            let Some(limit) = cap.first else { continue };
            if cap.at > at {
                continue;
            }
            let rule_id = || format!("customer_cap.{}", if scope == SCOPE_ALL { "all" } else { CHANNELS[scope] });
            if limit == 0 {
                offer(None, 2, "customer_cap", &rule_id);
                continue;
            }
            let window_ms = cap.second.unwrap_or(0);
            let newest = if scope == SCOPE_ALL {
                window_at(&[&state.logs[0], &state.logs[1], &state.logs[2]], at, window_ms)
            } else {
                window_at(&[&state.logs[scope]], at, window_ms)
            };
            let limit = limit as usize;
            if newest.len() >= limit {
                offer(Some(newest[newest.len() - limit] + window_ms), 2, "customer_cap", &rule_id);
            }
        }
        if channel == CALL {
            let hangups = &state.hangups[..bisect_right(&state.hangups, at)];
            for rule in &policy.hangup_rules {
                for (index, &hung_up_at) in hangups.iter().enumerate() {
                    if index + 1 - bisect_right(&hangups[..=index], hung_up_at - rule.window_ms) >= rule.count {
                        offer(Some(hung_up_at + rule.block_ms), 3, "short_hangups", &|| rule.rule_id.clone());
                    }
                }
            }
            if let Some(conversation) = &policy.conversation {
                let mut talks: Vec<i64> = state
                    .superseded_signals
                    .iter()
                    .filter(|signal| signal[0] == CONVERSATION_SIGNAL)
                    .map(|signal| signal[1])
                    .collect();
                if let Some(talked_at) = state.conversation_ms {
                    talks.push(talked_at);
                }
                for talked_at in talks {
                    if talked_at <= at {
                        offer(Some(talked_at + conversation.block_ms), 4, "conversation", &|| {
                            conversation.rule_id.clone()
                        });
                    }
                }
            }
        } else if channel == EMAIL {
            if let Some(unread) = &policy.unread {
                for block in [&state.unread_block, &state.unread_prior].into_iter().flatten() {
                    if block.since <= at {
                        offer(Some(block.until), 5, "unread", &|| unread.rule_id.clone());
                    }
                }
            }
        }
        let all_logs = [&state.logs[0], &state.logs[1], &state.logs[2]];
        for rule in &policy.global_caps {
            let newest = window_at(&all_logs, at, rule.window_ms);
            if newest.len() >= rule.limit {
                offer(Some(newest[newest.len() - rule.limit] + rule.window_ms), 6, "global_cap", &|| {
                    rule.rule_id.clone()
                });
            }
        }
        for rule in &policy.channel_caps[channel] {
            let newest = window_at(&[&state.logs[channel]], at, rule.window_ms);
            if newest.len() >= rule.limit {
                offer(Some(newest[newest.len() - rule.limit] + rule.window_ms), 7, "cap", &|| rule.rule_id.clone());
            }
        }
        best.map(|(_, reason, rule_id, until)| (reason, rule_id, until))
    }

    fn quiet_rule_at(&self, state: &State, channel: usize, ts: i64, clock: &dyn LocalTime) -> Option<String> {
        let policy = &self.policy;
        let mut own: Option<&Fact> = None;
        let mut own_pair = state.quiet[channel].as_ref();
        if own_pair.is_some_and(|pair| pair.at > ts) {
            own_pair = None;
            own = fact_at(&state.superseded_facts, channel as i64, ts);
        }
        let own_range = match (own_pair, own) {
            (Some(pair), _) => Some((pair.first, pair.second)),
            (None, Some(Fact::Quiet(pair))) => Some((pair.first, pair.second)),
            _ => None,
        };
        if own_range.is_none() && policy.quiet_hours.is_none() {
            return None;
        }
        let mut ranges: Vec<(i64, i64, &str)> = Vec::with_capacity(2);
        if let Some((Some(start), Some(end))) = own_range {
            ranges.push((start, end, "customer.quiet_hours"));
        }
        if let Some(rule) = &policy.quiet_hours {
            if rule.channels[channel] {
                ranges.push((rule.start_minute, rule.end_minute, &rule.rule_id));
            }
        }
        if ranges.is_empty() {
            return None;
        }
        let mut zone_name: Option<&str> = None;
        match &state.timezone {
            Some(zone) if zone.at > ts => {
                if let Some(Fact::Zone(zone)) = fact_at(&state.superseded_facts, TIMEZONE_FACT, ts) {
                    zone_name = zone.name.as_deref().filter(|name| !name.is_empty());
                }
            }
            Some(zone) => zone_name = zone.name.as_deref().filter(|name| !name.is_empty()),
            None => {}
        }
        let minute = clock.local_minute(ts, zone_name.unwrap_or(&policy.default_timezone));
        for (start, end, rule_id) in ranges {
            let inside = if start <= end { start <= minute && minute < end } else { minute >= start || minute < end };
            if inside {
                return Some(rule_id.to_owned());
            }
        }
        None
    }

    fn violation(
        &self,
        event: &Event,
        kind: &'static str,
        reason: &str,
        rule_id: &str,
        until: Option<i64>,
    ) -> EmittedViolation {
        let mut out = String::with_capacity(320);
        out.push('{');
        push_key(&mut out, "customer_id", true);
        push_str(&mut out, &event.customer_id);
        push_key(&mut out, "channel", false);
        push_str(&mut out, CHANNELS[event.channel]);
        push_key(&mut out, "kind", false);
        push_str(&mut out, kind);
        push_key(&mut out, "reason", false);
        push_str(&mut out, reason);
        push_key(&mut out, "rule_id", false);
        push_str(&mut out, rule_id);
        push_key(&mut out, "until", false);
        push_opt_ms_str(&mut out, until);
        push_key(&mut out, "sender", false);
        push_opt_str(&mut out, event.sender.as_deref());
        push_key(&mut out, "campaign", false);
        push_opt_str(&mut out, event.campaign.as_deref());
        push_key(&mut out, "category", false);
        push_str(&mut out, CATEGORIES[event.category]);
        push_key(&mut out, "event_id", false);
        push_str(&mut out, &event.event_id);
        push_key(&mut out, "ts", false);
        push_ms_str(&mut out, event.ts_ms);
        push_key(&mut out, "policy_version", false);
        push_str(&mut out, &self.policy.version);
        out.push('}');
        EmittedViolation { json: out, kind, channel: event.channel }
    }

    // ------------------------------------------------------------------ decisions

    /// The allow and its evidence (published with it, not kept).
    fn allow(&self, previous: &Decision, reason: &str, cause_event_id: &str, cause_ms: i64) -> (Decision, String) {
        let mut evidence = String::with_capacity(96);
        evidence.push('{');
        push_key(&mut evidence, "lifted_reason", true);
        push_str(&mut evidence, &previous.reason);
        push_key(&mut evidence, "lifted_until", false);
        push_opt_ms_str(&mut evidence, previous.until_ms);
        evidence.push('}');
        let allow = Decision {
            block: false,
            reason: reason.to_owned(),
            rule: format!("lifts: {}", previous.rule),
            rule_id: previous.rule_id.clone(),
            until_ms: None,
            policy_version: self.policy.version.clone(),
            decided_at_ms: cause_ms,
            cause_event_id: cause_event_id.to_owned(),
            suggest: None,
        };
        (allow, evidence)
    }

    fn suggest(&self, state: &State, blocked: usize, now: i64) -> Option<&'static str> {
        let mut best: Option<(f64, usize)> = None;
        for channel in ALL_CHANNELS {
            if channel == blocked {
                continue;
            }
            if state.emitted[channel].as_ref().is_some_and(|record| record.decision.blocking(now)) {
                continue;
            }
            let mut pressure = 0.0_f64;
            let log = &state.logs[channel];
            for rule in &self.policy.channel_caps[channel] {
                let count = log.len() - bisect_right(log, now - rule.window_ms);
                let ratio = count as f64 / rule.limit as f64;
                if ratio > pressure {
                    pressure = ratio;
                }
            }
            if best.is_none_or(|(known, _)| pressure < known) {
                best = Some((pressure, channel));
            }
        }
        best.map(|(_, channel)| CHANNELS[channel])
    }

    // ------------------------------------------------------------------ bookkeeping

    fn trim(&self, state: &mut State, now: i64) {
        let policy = &self.policy;
        let grace = policy.late_grace_ms;
        let id_cutoff = now - grace;
        state.ids.forget_before(id_cutoff);
        if !state.early_opens.is_empty() {
            state.early_opens.retain(|_, opened_at| *opened_at >= id_cutoff);
        }
        if now < state.trim_due_ms {
            return;
        }
        state.lifted_opt_outs.retain(|entry| entry.lifted_at > id_cutoff);
        state.superseded_signals.retain(|entry| entry[2] > id_cutoff);
        state.superseded_facts.retain(|entry| entry.2 > id_cutoff);
        let mut retention = policy.retention_ms;
        for cap in state.customer_caps.iter().flatten() {
            if let Some(window) = cap.second {
                if window > retention {
                    retention = window;
                }
            }
        }
        let cutoff = now - retention;
        for log in state.logs.iter_mut() {
            if log.first().is_some_and(|&first| first <= cutoff) {
                let end = bisect_right(log, cutoff);
                log.drain(..end);
            }
        }
        let hangup_cutoff = now - policy.hangup_retention_ms;
        if state.hangups.first().is_some_and(|&first| first <= hangup_cutoff) {
            let end = bisect_right(&state.hangups, hangup_cutoff);
            state.hangups.drain(..end);
        }
        for at in state.complaints.iter_mut() {
            if at.is_some_and(|then| then + policy.complaint_retention_ms <= now) {
                *at = None;
            }
        }
        if let Some(talked_at) = state.conversation_ms {
            if policy.conversation.as_ref().is_none_or(|conversation| talked_at + conversation.block_ms <= now) {
                state.conversation_ms = None;
            }
        }
        if state.unread_block.as_ref().is_some_and(|block| block.until <= now) {
            state.unread_block = None;
        }
        while state.settled.front().is_some_and(|entry| entry.deadline + grace < now) {
            let entry = state.settled.pop_front().expect("not empty");
            self.forget_settled(state, &entry);
        }
        if state.unread_prior.as_ref().is_some_and(|block| block.until <= now) {
            state.unread_prior = None;
        }
        let allow_cutoff = now - grace;
        for record in state.emitted.iter_mut() {
            let expired = record.as_ref().is_some_and(|record| {
                let decision = &record.decision;
                if decision.block {
                    decision.until_ms.is_some_and(|until| until <= allow_cutoff)
                } else {
                    decision.decided_at_ms < allow_cutoff
                }
            });
            if expired {
                *record = None;
            }
        }
        let mut due = NEVER;
        for log in &state.logs {
            if let Some(&first) = log.first() {
                due = due.min(first + retention);
            }
        }
        if let Some(&first) = state.hangups.first() {
            due = due.min(first + policy.hangup_retention_ms);
        }
        for at in state.complaints.iter().flatten() {
            due = due.min(at + policy.complaint_retention_ms);
        }
        if let (Some(talked_at), Some(conversation)) = (state.conversation_ms, &policy.conversation) {
            due = due.min(talked_at + conversation.block_ms);
        }
        if let Some(block) = &state.unread_block {
            due = due.min(block.until);
        }
        if let Some(entry) = state.settled.front() {
            due = due.min(entry.deadline + grace + 1);
        }
        if let Some(block) = &state.unread_prior {
            due = due.min(block.until);
        }
        for entry in &state.lifted_opt_outs {
            due = due.min(entry.lifted_at + grace);
        }
        for entry in &state.superseded_signals {
            due = due.min(entry[2] + grace);
        }
        for entry in &state.superseded_facts {
            due = due.min(entry.2 + grace);
        }
        for record in state.emitted.iter().flatten() {
            let decision = &record.decision;
            if !decision.block {
                due = due.min(decision.decided_at_ms + grace + 1);
            } else if let Some(until) = decision.until_ms {
                due = due.min(until + grace);
            }
        }
        state.trim_due_ms = due;
    }
}

// ---------------------------------------------------------------- evidence (fatigue.engine._render_*)

fn render(candidate: &Candidate<'_>, state: &State, out: &mut String) {
    out.push('{');
    push_key(out, "rule_id", true);
    push_str(out, &candidate.rule_id);
    push_key(out, "reason", false);
    push_str(out, candidate.reason);
    push_key(out, "rule", false);
    push_str(out, &candidate.text);
    push_key(out, "until", false);
    push_opt_ms_str(out, candidate.until);
    match &candidate.data {
        Data::Window { count, limit, window_text, start, newest } => {
            push_window(out, *count, *limit, window_text, *start, listed(newest, *limit, state));
        }
        Data::CustomerWindow { count, limit, window_text, start, newest, set_at } => {
            push_key(out, "preference_at", false);
            push_ms_str(out, *set_at);
            push_window(out, *count, *limit, window_text, *start, listed(newest, *limit, state));
        }
        Data::Preference { set_at } => {
            push_key(out, "preference_at", false);
            push_ms_str(out, *set_at);
        }
        Data::OptOut { at, source } => {
            push_key(out, "opted_out_at", false);
            push_ms_str(out, *at);
            push_key(out, "source", false);
            push_str(out, source);
        }
        Data::Complaint { at, channel } => {
            push_key(out, "complaint_at", false);
            push_ms_str(out, *at);
            push_key(out, "complaint_channel", false);
            push_str(out, CHANNELS[*channel]);
        }
        Data::Unread { since, streak, cause_event_id } => {
            push_key(out, "streak", false);
            push_i64(out, *streak);
            push_key(out, "last_deadline", false);
            push_ms_str(out, *since);
            push_key(out, "email_event_id", false);
            push_str(out, cause_event_id);
        }
        Data::Hangups { first, last, window_text } => {
            let window = &state.hangups[*first..=*last];
            push_key(out, "count", false);
            push_i64(out, window.len() as i64);
            push_key(out, "window", false);
            push_str(out, window_text);
            push_key(out, "hangups", false);
            push_ms_list(out, &window[window.len().saturating_sub(MAX_EVIDENCE_TIMESTAMPS)..]);
        }
        Data::Conversation { at } => {
            push_key(out, "conversation_at", false);
            push_ms_str(out, *at);
        }
    }
    out.push('}');
}

fn listed<'a>(newest: &'a Newest, limit: usize, state: &'a State) -> &'a [i64] {
    match newest {
        Newest::Log(channel) => {
            let log = &state.logs[*channel];
            &log[log.len().saturating_sub(limit.min(MAX_EVIDENCE_TIMESTAMPS))..]
        }
        Newest::Listed(values) => values,
    }
}

fn push_window(out: &mut String, count: usize, limit: usize, window_text: &str, start: i64, newest: &[i64]) {
    push_key(out, "count", false);
    push_i64(out, count as i64);
    push_key(out, "limit", false);
    push_i64(out, limit as i64);
    push_key(out, "window", false);
    push_str(out, window_text);
    push_key(out, "window_start", false);
    push_ms_str(out, start);
    push_key(out, "contacts", false);
    push_ms_list(out, newest);
}
