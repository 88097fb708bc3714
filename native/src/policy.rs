//! The policy as the engine needs it, built once from the JSON that fatigue/native.py derives from a validated
//! fatigue.policy.Policy: rule texts are rendered by Python, so they are the Python core's texts exactly.

use serde_json::Value;

use crate::json::{as_array, as_i64, as_string, item};

pub struct WindowRule {
    pub window_ms: i64,
    pub limit: usize,
    pub rule_id: String,
    pub text: String,
    pub window_text: String,
}

pub struct HangupRule {
    pub rule_id: String,
    pub count: usize,
    pub window_ms: i64,
    pub block_ms: i64,
    pub text: String,
    pub window_text: String,
}

pub struct UnreadRule {
    pub rule_id: String,
    pub deadline_ms: i64,
    pub streak: i64,
    pub block_ms: i64,
    pub text: String,
}

pub struct ComplaintRule {
    pub rule_id: String,
    pub channel_block_ms: i64,
    pub other_channels_block_ms: i64,
    /// texts[complained channel][blocked channel]
    pub texts: Vec<Vec<String>>,
}

pub struct ConversationRule {
    pub rule_id: String,
    pub min_duration_s: f64,
    pub block_ms: i64,
    pub text: String,
}

pub struct QuietHoursRule {
    pub rule_id: String,
    pub start_minute: i64,
    pub end_minute: i64,
    pub channels: [bool; 3],
}

pub struct Policy {
    pub version: String,
    pub counted: [bool; 3],
    pub late_grace_ms: i64,
    pub late_grace_text: String,
    pub max_event_bytes: usize,
    pub max_contacts: usize,
    pub max_event_ids: usize,
    pub max_signals: usize,
    pub default_timezone: String,
    pub channel_caps: [Vec<WindowRule>; 3],
    pub global_caps: Vec<WindowRule>,
    pub hangup_threshold_s: f64,
    pub hangup_rules: Vec<HangupRule>,
    pub hangup_suggest: bool,
    pub unread: Option<UnreadRule>,
    pub unread_suggest: bool,
    pub complaint: Option<ComplaintRule>,
    pub conversation: Option<ConversationRule>,
    pub quiet_hours: Option<QuietHoursRule>,
    pub retention_ms: i64,
    pub hangup_retention_ms: i64,
    pub complaint_retention_ms: i64,
    pub min_channel_limit: [usize; 3],
    pub min_global_limit: usize,
}

fn field<'a>(data: &'a Value, name: &str) -> Result<&'a Value, String> {
    data.get(name).ok_or_else(|| format!("policy: missing {name}"))
}

fn int(data: &Value, name: &str) -> Result<i64, String> {
    as_i64(field(data, name)?)
}

fn float(data: &Value, name: &str) -> Result<f64, String> {
    field(data, name)?.as_f64().ok_or_else(|| format!("policy: {name} is not a number"))
}

fn boolean(data: &Value, name: &str) -> Result<bool, String> {
    field(data, name)?.as_bool().ok_or_else(|| format!("policy: {name} is not a bool"))
}

fn window_rule(value: &Value) -> Result<WindowRule, String> {
    let items = as_array(value)?;
    Ok(WindowRule {
        window_ms: as_i64(item(items, 0)?)?,
        limit: as_i64(item(items, 1)?)? as usize,
        rule_id: as_string(item(items, 2)?)?,
        text: as_string(item(items, 3)?)?,
        window_text: as_string(item(items, 4)?)?,
    })
}

impl Policy {
    pub fn from_json(raw: &[u8]) -> Result<Policy, String> {
        let data: Value = serde_json::from_slice(raw).map_err(|error| format!("policy: {error}"))?;
        let counted_items = as_array(field(&data, "counted")?)?;
        let mut counted = [false; 3];
        for (index, slot) in counted.iter_mut().enumerate() {
            *slot = item(counted_items, index)?.as_bool().unwrap_or(false);
        }
        let channel_items = as_array(field(&data, "channel_caps")?)?;
        let mut channel_caps: [Vec<WindowRule>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for (index, caps) in channel_caps.iter_mut().enumerate() {
            for rule in as_array(item(channel_items, index)?)? {
                caps.push(window_rule(rule)?);
            }
        }
        let global_caps =
            as_array(field(&data, "global_caps")?)?.iter().map(window_rule).collect::<Result<Vec<_>, _>>()?;
        let mut hangup_rules = Vec::new();
        for rule in as_array(field(&data, "hangup_rules")?)? {
            let items = as_array(rule)?;
            hangup_rules.push(HangupRule {
                rule_id: as_string(item(items, 0)?)?,
                count: as_i64(item(items, 1)?)? as usize,
                window_ms: as_i64(item(items, 2)?)?,
                block_ms: as_i64(item(items, 3)?)?,
                text: as_string(item(items, 4)?)?,
                window_text: as_string(item(items, 5)?)?,
            });
        }
        let unread = match field(&data, "unread")? {
            Value::Null => None,
            value => {
                let items = as_array(value)?;
                Some(UnreadRule {
                    rule_id: as_string(item(items, 0)?)?,
                    deadline_ms: as_i64(item(items, 1)?)?,
                    streak: as_i64(item(items, 2)?)?,
                    block_ms: as_i64(item(items, 3)?)?,
                    text: as_string(item(items, 4)?)?,
                })
            }
        };
        let complaint = match field(&data, "complaint")? {
            Value::Null => None,
            value => {
                let items = as_array(value)?;
                let mut texts = Vec::new();
                for row in as_array(item(items, 3)?)? {
                    texts.push(as_array(row)?.iter().map(as_string).collect::<Result<Vec<_>, _>>()?);
                }
                Some(ComplaintRule {
                    rule_id: as_string(item(items, 0)?)?,
                    channel_block_ms: as_i64(item(items, 1)?)?,
                    other_channels_block_ms: as_i64(item(items, 2)?)?,
                    texts,
                })
            }
        };
        let conversation = match field(&data, "conversation")? {
            Value::Null => None,
            value => {
                let items = as_array(value)?;
                Some(ConversationRule {
                    rule_id: as_string(item(items, 0)?)?,
                    min_duration_s: item(items, 1)?.as_f64().ok_or("policy: conversation duration")?,
                    block_ms: as_i64(item(items, 2)?)?,
                    text: as_string(item(items, 3)?)?,
                })
            }
        };
        let quiet_hours = match field(&data, "quiet_hours")? {
            Value::Null => None,
            value => {
                let items = as_array(value)?;
                let mask = as_array(item(items, 3)?)?;
                Some(QuietHoursRule {
                    rule_id: as_string(item(items, 0)?)?,
                    start_minute: as_i64(item(items, 1)?)?,
                    end_minute: as_i64(item(items, 2)?)?,
                    channels: [
                        item(mask, 0)?.as_bool().unwrap_or(false),
                        item(mask, 1)?.as_bool().unwrap_or(false),
                        item(mask, 2)?.as_bool().unwrap_or(false),
                    ],
                })
            }
        };
        let unbounded = usize::MAX;
        let min_channel_limit = [0, 1, 2]
            .map(|channel: usize| channel_caps[channel].iter().map(|rule| rule.limit).min().unwrap_or(unbounded));
        let min_global_limit = global_caps.iter().map(|rule| rule.limit).min().unwrap_or(unbounded);
        let complaint_retention_ms =
            complaint.as_ref().map_or(0, |rule| rule.channel_block_ms.max(rule.other_channels_block_ms));
        Ok(Policy {
            version: as_string(field(&data, "version")?)?,
            counted,
            late_grace_ms: int(&data, "late_grace_ms")?,
            late_grace_text: as_string(field(&data, "late_grace_text")?)?,
            max_event_bytes: int(&data, "max_event_bytes")? as usize,
            max_contacts: int(&data, "max_contacts")? as usize,
            max_event_ids: int(&data, "max_event_ids")? as usize,
            max_signals: int(&data, "max_signals")? as usize,
            default_timezone: as_string(field(&data, "default_timezone")?)?,
            channel_caps,
            global_caps,
            hangup_threshold_s: float(&data, "hangup_threshold_s")?,
            hangup_rules,
            hangup_suggest: boolean(&data, "hangup_suggest")?,
            unread,
            unread_suggest: boolean(&data, "unread_suggest")?,
            complaint,
            conversation,
            quiet_hours,
            retention_ms: int(&data, "retention_ms")?,
            hangup_retention_ms: int(&data, "hangup_retention_ms")?,
            complaint_retention_ms,
            min_channel_limit,
            min_global_limit,
        })
    }
}
